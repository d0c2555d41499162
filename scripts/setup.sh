#!/usr/bin/env bash
# Installs what is missing, and nothing else; a second run takes seconds.
#   - Rust target wasm32-unknown-unknown (rustup)
#   - worker-build and wasm-bindgen-cli into .tools/ (git-ignored), versions pinned / read from Cargo.lock
#   - npm packages from package-lock.json (wrangler, Node 22 for wrangler, binaryen's wasm-opt)
# Optional extras: `setup.sh bench` also installs wrk (Debian) for `make bench`,
# `setup.sh promtool` installs Prometheus' promtool (Debian) for the exposition-format check,
# `setup.sh chromium` headless Chromium (Debian) for the dashboard test, `setup.sh openai` the
# official `openai` Python package (PyPI, in a venv under .tools/py) for the SDK test; `make test`
# asks for all three.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

WORKER_BUILD_VERSION=0.8.7

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    step "adding Rust target wasm32-unknown-unknown"
    rustup target add wasm32-unknown-unknown
fi

if [ ! -f Cargo.lock ]; then
    step "resolving Cargo.lock"
    cargo generate-lockfile
fi

if ! "$ROOT/.tools/bin/worker-build" --version 2>/dev/null | grep -q "$WORKER_BUILD_VERSION"; then
    step "installing worker-build $WORKER_BUILD_VERSION into .tools (about 5 minutes on 2 cores)"
    cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked --root "$ROOT/.tools"
fi

WB_VERSION="$(wasm_bindgen_version)"
if [ -z "$WB_VERSION" ]; then
    echo "could not read the wasm-bindgen version from Cargo.lock" >&2
    exit 1
fi
if ! "$WASM_BINDGEN_BIN" --version 2>/dev/null | grep -q " $WB_VERSION\$"; then
    step "installing wasm-bindgen-cli $WB_VERSION (matches Cargo.lock) into .tools (about 4 minutes)"
    # --locked fails for some versions (a locked dependency is missing from crates.io).
    cargo install wasm-bindgen-cli --version "$WB_VERSION" --root "$ROOT/.tools/wasm-bindgen" --force
fi

if [ ! -x node_modules/.bin/wrangler ] || [ ! -x node_modules/.bin/wasm-opt ] || [ ! -x node_modules/.bin/node ] \
    || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    step "installing npm packages from package-lock.json (wrangler, node@22, binaryen)"
    # `npm ci` refuses this lock file on registries that lack workerd's other-platform builds
    # (optional dependencies, as on this machine's mirror); then install from the same lock
    # without rewriting it. Versions are exact either way (package.json pins, lock file resolves).
    npm ci --no-audit --no-fund --loglevel=error 2>/dev/null \
        || npm install --no-audit --no-fund --no-save --loglevel=error
fi

# Debian packages: as root, or through sudo when it is available. The package index is refreshed
# only when a first attempt fails (a fresh image often has none).
apt_install() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "installing $* needs root or sudo" >&2; exit 1; }
        sudo="sudo"
    fi
    ($sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1) \
        || ($sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@")
}

for extra in "$@"; do
    case "$extra" in
        bench)
            if ! command -v wrk >/dev/null; then
                step "installing wrk (Debian) for the benchmarks"
                apt_install wrk
            fi ;;
        promtool)
            if ! command -v promtool >/dev/null; then
                step "installing promtool (Debian package prometheus) for the exposition-format check"
                apt_install prometheus
            fi ;;
        openai)
            if ! "$ROOT/.tools/py/bin/python" -c "import openai" 2>/dev/null; then
                step "installing the openai Python package (PyPI, in .tools/py) for the SDK test"
                python3 -m venv "$ROOT/.tools/py" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$ROOT/.tools/py"; }
                "$ROOT/.tools/py/bin/pip" install -q "openai==3.63.0"
            fi ;;
        chromium)
            if ! command -v chromium >/dev/null; then
                step "installing headless Chromium (Debian) for the dashboard test"
                apt_install chromium
            fi ;;
    esac
done
step "tools ready"
