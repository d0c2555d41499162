#!/usr/bin/env bash
# `make dev`: the mock upstream (demo providers alpha/beta/gamma and the AI providers on
# 127.0.0.1:9100) and `wrangler dev` on 127.0.0.1:8787 with local SQLite state in
# .wrangler/state; prints two demo virtual keys once the gateway answers. Ctrl-C stops both.
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

# The AI providers stream when a request asks for `"stream": true`.
for p in openai-a openai-b azure-eu; do
    curl -sf -X PUT "http://127.0.0.1:9100/__control/$p" -d '{"stream":true,"stream_chunks":8,"stream_delay_ms":60}' >/dev/null
done
echo "==> mock AI providers: openai-a, openai-b (group openai), azure-eu (group azure)"

echo "==> gateway on http://127.0.0.1:8787 (admin token in .dev.vars); Ctrl-C stops"
EG_PREBUILT=1 npx wrangler dev --ip 127.0.0.1 --port 8787 --persist-to .wrangler/state &
GATEWAY=$!
trap 'kill $GATEWAY $MOCK 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 300); do curl -sf http://127.0.0.1:8787/health >/dev/null && break; sleep 0.2; done

# Two demo virtual keys, issued once per local state (kept in .wrangler/demo-keys.txt).
KEYS=.wrangler/demo-keys.txt
if [ ! -s "$KEYS" ]; then
    token="$(sed -n 's/^ADMIN_TOKEN=//p' .dev.vars)"
    issue() {
        curl -sf -X POST http://127.0.0.1:8787/v1/keys -H "Authorization: Bearer $token" \
            -H 'Content-Type: application/json' -d "$1" \
            | sed -n 's/.*"key":"\(sk-eg-[0-9a-f]*\)".*/\1/p'
    }
    team="$(issue '{"name":"demo-team","metadata":{"team":"search"},"tokens_per_minute":20000,"budget_day_micro_usd":5000000,"policy":{"capacity":60,"refill":60,"period_ms":60000}}')"
    small="$(issue '{"name":"demo-small-budget","metadata":{"team":"intern"},"budget_day_micro_usd":60,"models":["gpt-4o-mini"]}')"
    if [ -n "$team" ] && [ -n "$small" ]; then
        printf 'DEMO_KEY=%s\nSMALL_BUDGET_KEY=%s\n' "$team" "$small" > "$KEYS"
    else
        echo "==> could not issue the demo keys (see the wrangler output)" >&2
    fi
fi
if [ -s "$KEYS" ]; then
    echo "==> demo virtual keys (also in $KEYS):"
    sed 's/^/      /' "$KEYS"
    echo "    try: curl -s http://127.0.0.1:8787/v1/chat/completions -H \"Authorization: Bearer \$DEMO_KEY\" \\"
    echo "           -d '{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"
fi
wait $GATEWAY
