#!/usr/bin/env bash
# Builds the worker (release wasm + JS shim) into build/. Used by `make build` and by
# wrangler.toml's [build] command, so `npx wrangler dev|deploy` build the same way.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
if [ ! -x "$ROOT/.tools/bin/worker-build" ] || [ ! -x "$WASM_BINDGEN_BIN" ] || [ ! -x "$WASM_OPT_BIN" ]; then
    bash "$ROOT/scripts/setup.sh"
fi
echo "==> worker-build --release"
worker-build --release
