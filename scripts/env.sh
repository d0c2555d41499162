# Sourced by every script: the project-local tool paths and the worker-build overrides.
# worker-build would otherwise download wasm-bindgen, wasm-opt and esbuild from GitHub,
# which this machine (and many CI machines) cannot reach.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT
export PATH="$ROOT/node_modules/.bin:$ROOT/.tools/bin:$ROOT/.tools/wasm-bindgen/bin:$HOME/.cargo/bin:$PATH"
export WASM_BINDGEN_BIN="$ROOT/.tools/wasm-bindgen/bin/wasm-bindgen"
export WASM_OPT_BIN="$ROOT/node_modules/.bin/wasm-opt"
export ESBUILD_BIN="$ROOT/node_modules/.bin/esbuild"
export WRANGLER_SEND_METRICS=false
export CI_DISABLE_UPDATE_CHECK=1
# wasm-bindgen must match the wasm-bindgen crate in Cargo.lock exactly.
wasm_bindgen_version() {
    awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock"
}
