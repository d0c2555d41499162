"""Summarises `make bench` runs (argv: dir, rounds, connections, duration) into
docs/BENCHMARKS.md: per route the median throughput and p50/p99 latency, and the median over
rounds of each round's ratio to the /health baseline measured in the same round."""
import datetime
import json
import os
import re
import statistics
import sys

d, rounds, conns, duration = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
order = ["health", "ratelimit", "cache_hit", "providers", "experiment", "aggregator",
         "proxy_hit", "proxy_exp_hit", "proxy_miss", "upstream_direct"]
label = {
    "health": "`GET /health` (baseline, no DO hop)",
    "ratelimit": "`POST /v1/ratelimit/bench/one-key` (RateLimiterDO, one SQLite write)",
    "cache_hit": "`GET /v1/cache/bench/hot` (CacheShardDO hit, no write)",
    "providers": "`POST /v1/providers/demo/pick` (ProviderHealthDO)",
    "experiment": "`POST /v1/experiments/title-search-ttl/assign` (ExperimentDO, sticky read)",
    "aggregator": "`POST /v1/events` (AggregatorDO ingest, one SQLite write)",
    "proxy_hit": "`GET /v1/proxy/demo/hot` (proxy, cache hit: rate limit + cache hops)",
    "proxy_exp_hit": "`GET /v1/proxy/demo/title/hot` (proxy, cache hit in the title-search-ttl experiment: + cohort hop, outcome after the response)",
    "proxy_miss": "`GET /v1/proxy/demo/miss/<unique>` (proxy, miss: + pick, upstream, report, fill)",
    "upstream_direct": "mock upstream called directly (baseline for the proxy miss)",
}


def unit_ms(v, u):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]


def parse(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = {}
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        lat[p] = unit_ms(*m.groups()) if m else float("nan")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return rps, lat["50"], lat["99"], int(non2xx.group(1)) if non2xx else 0


runs = {n: [parse(os.path.join(d, f"{n}.{r}.txt")) for r in range(1, rounds + 1)] for n in order}
rows = []
for n in order:
    rps = [x[0] for x in runs[n]]
    p50 = [x[1] for x in runs[n]]
    p99 = [x[2] for x in runs[n]]
    ratio_rps = [runs[n][i][0] / runs["health"][i][0] for i in range(rounds)]
    ratio_p50 = [runs[n][i][1] / runs["health"][i][1] for i in range(rounds)]
    ratio_p99 = [runs[n][i][2] / runs["health"][i][2] for i in range(rounds)]
    errors = sum(x[3] for x in runs[n])
    rows.append(f"| {label[n]} | {statistics.median(rps):,.0f} | {statistics.median(ratio_rps):.2f} | "
                f"{statistics.median(p50):.2f} | {statistics.median(ratio_p50):.2f} | "
                f"{statistics.median(p99):.2f} | {statistics.median(ratio_p99):.2f} | {errors} |")

native_rows = []
native = os.path.join(d, "native.txt")
if os.path.exists(native):
    results = {}
    for line in open(native):
        m = re.match(r"test (\S+)/(\S+) \.\.\. bench:\s+([\d,]+) ns/iter \(\+/- ([\d,]+)\)", line)
        if m:
            results.setdefault(m.group(1), {})[m.group(2)] = (int(m.group(3).replace(",", "")), int(m.group(4).replace(",", "")))
    for group, impls in results.items():
        ours = impls.get("gateway_core")
        for peer, (ns, dev) in impls.items():
            if peer == "gateway_core" or not ours:
                continue
            native_rows.append(f"| {group} | {ours[0]} ± {ours[1]} | {peer} {ns} ± {dev} | {ours[0] / ns:.2f} |")
hit_lines = []
if os.path.exists(native):
    for line in open(native):
        if line.startswith("hit_ratio "):
            f = dict(kv.split("=") for kv in line.split()[2:])
            hit_lines.append(f"| Zipf(1.0) over {int(f['universe']):,} keys, {int(f['requests']):,} requests, capacity {int(f['capacity']):,} | {float(f['gateway_core']):.4f} | {float(f['lru']):.4f} |")
hit_table = ("\n\n| hit ratio (miss then fill) | gateway-core | lru |\n|---|---:|---:|\n" + "\n".join(hit_lines)) if hit_lines else ""
native_table = ("\n\n| native bench | gateway-core ns/op | peer ns/op | ratio (lower is better) |\n|---|---:|---:|---:|\n"
                + "\n".join(native_rows)) + hit_table if native_rows else ""

overhead = ""
if all(runs.get(n) for n in ("proxy_miss", "upstream_direct")):
    r_rps = statistics.median([runs["proxy_miss"][i][0] / runs["upstream_direct"][i][0] for i in range(rounds)])
    r_p50 = statistics.median([runs["proxy_miss"][i][1] / runs["upstream_direct"][i][1] for i in range(rounds)])
    overhead = (f"\n\nGateway overhead on a cache miss (proxy miss against calling the mock upstream directly, "
                f"same run): throughput × {r_rps:.2f}, p50 latency × {r_p50:.2f}.")

stream = ""
if os.path.exists(os.path.join(d, "stream.json")):
    st = json.load(open(os.path.join(d, "stream.json")))
    stream = (f"\n\nStreamed proxy route (`POST /v1/proxy/demo/v1/chat/completions`, `\"stream\": true`, "
              f"{st['chunks']} SSE chunks {st['delay_ms']} ms apart, {st['requests']} sequential requests per round, "
              f"medians of {st['rounds']} interleaved rounds): time to first byte through the gateway "
              f"{st['gateway_first_ms']:.2f} ms against the mock upstream's own {st['mock_first_ms']:.2f} ms, "
              f"**× {st['first_ratio']:.2f}**; the first byte arrives at {st['first_of_total'] * 100:.0f} % of "
              f"the stream's total time ({st['gateway_total_ms']:.0f} ms through the gateway, "
              f"{st['mock_total_ms']:.0f} ms direct): bytes pass through as they arrive.")

size = "not measured (run `make test` first)"
log = "target/deploy-dry-run.log"
if os.path.exists(log):
    m = re.search(r"Total Upload:\s*([\d.]+ KiB)\s*/\s*gzip:\s*([\d.]+ KiB)", open(log).read())
    if m:
        size = f"{m.group(1)} total, **{m.group(2)} gzip**"
wasm = os.path.getsize("build/index_bg.wasm") / 1024 if os.path.exists("build/index_bg.wasm") else 0

section = f"""<!-- bench:start -->
## Latest `make bench` ({datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M')} UTC)

Release build under `workerd serve` (no wrangler proxy), Durable Object SQLite on tmpfs, workerd on
CPU 0, `wrk -t1 -c{conns} -d{duration}` on CPU 1, {rounds} interleaved rounds. Ratios are the median
over rounds of (route / `/health` in the same round); absolute numbers on this shared 2-core VM are
noise, the ratios are the result.

| route | req/s | × health | p50 ms | × health | p99 ms | × health | non-2xx |
|---|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Bundle (`wrangler deploy --dry-run`): {size}; `index_bg.wasm` {wasm:.0f} KiB.{overhead}{stream}{native_table}
<!-- bench:end -->"""

doc = "docs/BENCHMARKS.md"
text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n"
if "<!-- bench:start -->" in text:
    text = re.sub(r"<!-- bench:start -->.*<!-- bench:end -->", lambda _: section, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n" + section + "\n"
open(doc, "w").write(text)
print(section)
