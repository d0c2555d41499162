#!/usr/bin/env bash
# Builds the worker (release wasm + JS shim) into build/. Used by `make build` and by
# wrangler.toml's [build] command, so `npx wrangler dev|deploy` build the same way.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
if [ ! -x "$ROOT/.tools/bin/worker-build" ] || [ ! -x "$WASM_BINDGEN_BIN" ] || [ ! -x "$WASM_OPT_BIN" ]; then
    bash "$ROOT/scripts/setup.sh"
fi
# The e2e harness and `make dev` build once and set EG_PREBUILT so every runtime start is fast.
if [ "${EG_PREBUILT:-}" = "1" ] && [ -f build/index.js ] && [ -f build/index_bg.wasm ]; then
    exit 0
fi
echo "==> worker-build --release"
worker-build --release
# The wasm's "name" section (function names, ~18 % of the raw module and ~80 KiB gzip) only
# serves symbolised stack traces; panics still log their message (console_error_panic_hook).
# No optimisation passes here (worker-build already ran wasm-opt -Oz): parse, drop, write.
"$WASM_OPT_BIN" build/index_bg.wasm --all-features --strip-debug --strip-producers -o build/index_bg.wasm
