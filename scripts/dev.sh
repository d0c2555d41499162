#!/usr/bin/env bash
# `make dev`: the mock upstream (demo providers alpha/beta/gamma on 127.0.0.1:9100) and
# `wrangler dev` on 127.0.0.1:8787 with local SQLite state in .wrangler/state. Ctrl-C stops both.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

if [ ! -f .dev.vars ]; then
    token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    printf 'ADMIN_TOKEN=%s\n' "$token" > .dev.vars
    echo "==> wrote .dev.vars with a new ADMIN_TOKEN (git-ignored)"
fi

echo "==> building the mock upstream"
cargo build --release -q -p mock-upstream
./target/release/mock-upstream --port 9100 &
MOCK=$!
trap 'kill $MOCK 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:9100/health >/dev/null && break; sleep 0.1; done
# Three providers that differ: alpha fast, beta slow (150 ms), gamma fails one call in ten.
curl -sf -X PUT http://127.0.0.1:9100/__control/beta -d '{"latency_ms":150}' >/dev/null
curl -sf -X PUT http://127.0.0.1:9100/__control/gamma -d '{"failure_rate":0.1,"status":503,"latency_ms":40}' >/dev/null
echo "==> mock providers on http://127.0.0.1:9100: alpha (fast), beta (150 ms), gamma (10% errors)"

echo "==> gateway on http://127.0.0.1:8787 (admin token in .dev.vars); Ctrl-C stops"
EG_PREBUILT=1 npx wrangler dev --ip 127.0.0.1 --port 8787 --persist-to .wrangler/state
