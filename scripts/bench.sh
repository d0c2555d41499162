#!/usr/bin/env bash
# `make bench`: end-to-end load on the release build under `workerd serve` directly (no wrangler
# proxy), Durable Object storage on tmpfs, workerd pinned to CPU 0 and wrk (-t1) to CPU 1.
# Every route is measured in the same run as the `/health` baseline (no Durable Object hop),
# interleaved over several rounds; results are ratios to that baseline (docs/BENCHMARKS.md).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"

ROUNDS="${BENCH_ROUNDS:-3}"
DURATION="${BENCH_DURATION:-5s}"
CONNS="${BENCH_CONNECTIONS:-16}"
PORT="${BENCH_PORT:-8799}"
OUT=.bench
STATE=/dev/shm/edge-gateway-bench-$$
mkdir -p "$OUT" "$STATE"
rm -f "$OUT"/*.txt

echo "==> native: criterion, gateway-core against peer crates in the same run"
cargo bench -q -p gateway-core --bench '*' -- --output-format bencher 2>/dev/null | grep -E '^(test|hit_ratio) ' > "$OUT/native.txt" || true

command -v wrk >/dev/null || { echo "wrk is missing: run scripts/setup.sh bench" >&2; exit 1; }
[ -f build/index.js ] || bash scripts/build.sh

# The mock upstream (release build) as the demo providers, on its own port.
cargo build --release -q -p mock-upstream
MOCK_PORT="${BENCH_MOCK_PORT:-8798}"
taskset -c 1 ./target/release/mock-upstream --port "$MOCK_PORT" > "$OUT/mock.log" 2>&1 &
MPID=$!

# Configuration for the bench: a policy that never denies, so every take is a consuming write.
python3 scripts/bench_config.py "$OUT/workerd.capnp" "$PORT" "$STATE" "$MOCK_PORT"

WORKERD="$ROOT/node_modules/.bin/workerd"
taskset -c 0 "$WORKERD" serve "$OUT/workerd.capnp" --experimental > "$OUT/workerd.log" 2>&1 &
WPID=$!
trap 'kill $WPID $MPID 2>/dev/null || true; rm -rf "$STATE"' EXIT
B="http://127.0.0.1:$PORT"
for _ in $(seq 1 100); do curl -sf "$B/health" >/dev/null && break; sleep 0.1; done
curl -sf "$B/health" >/dev/null || { cat "$OUT/workerd.log"; exit 1; }

# Warm-up state: a cache entry to hit, a provider group, an experiment unit.
curl -sf -X PUT -H 'Cache-Control: max-age=3600' --data 'hot value' "$B/v1/cache/bench/hot" >/dev/null
curl -sf -X POST "$B/v1/providers/demo/pick" >/dev/null
curl -sf -X POST -d '{"unit":"bench-unit"}' "$B/v1/experiments/title-search-ttl/assign" >/dev/null
for hot in /v1/proxy/demo/hot /v1/proxy/demo/title/hot; do
    curl -sf "$B$hot" >/dev/null
    for _ in $(seq 1 50); do
        [ "$(curl -s -o /dev/null -D - "$B$hot" | tr -d '\r' | sed -n 's/^x-cache: //Ip')" = "HIT" ] && break
        sleep 0.1
    done
done

mkdir -p "$OUT/lua"
post() { # name body
    printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' "$2" > "$OUT/lua/$1.lua"
}
post ratelimit '""'
post providers '""'
post experiment "'{\"unit\":\"bench-unit\"}'"
post aggregator "'{\"events\":[{\"status\":200,\"latency_ms\":12,\"cache\":\"hit\"}]}'"
printf 'wrk.method = "GET"\n' > "$OUT/lua/get.lua"
# A fresh path per request: always a cache miss, always a provider call.
printf 'counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format("GET", wrk.path .. "/" .. counter .. "-" .. math.random(1000000000))\nend\n' > "$OUT/lua/unique.lua"

declare -A PATHS=(
    [health]="/health get"
    [ratelimit]="/v1/ratelimit/bench/one-key ratelimit"
    [cache_hit]="/v1/cache/bench/hot get"
    [providers]="/v1/providers/demo/pick providers"
    [experiment]="/v1/experiments/title-search-ttl/assign experiment"
    [aggregator]="/v1/events aggregator"
    [proxy_hit]="/v1/proxy/demo/hot get"
    [proxy_exp_hit]="/v1/proxy/demo/title/hot get"
    [proxy_miss]="/v1/proxy/demo/miss unique"
    [upstream_direct]="MOCK/alpha/miss unique"
)
ORDER=(health ratelimit cache_hit providers experiment aggregator proxy_hit proxy_exp_hit proxy_miss upstream_direct)
for round in $(seq 1 "$ROUNDS"); do
    for name in "${ORDER[@]}"; do
        read -r path script <<< "${PATHS[$name]}"
        echo "==> round $round: $name ($path)"
        target="$B$path"
        [ "${path#MOCK}" != "$path" ] && target="http://127.0.0.1:$MOCK_PORT${path#MOCK}"
        taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$OUT/lua/$script.lua" "$target" \
            > "$OUT/$name.$round.txt" 2>&1
    done
done

echo "==> streamed proxy route: time to first byte, gateway against the mock upstream"
python3 scripts/bench_stream.py "$B" "http://127.0.0.1:$MOCK_PORT" "$OUT/stream.json" "$ROUNDS" 20

python3 scripts/bench_report.py "$OUT" "$ROUNDS" "$CONNS" "$DURATION"
