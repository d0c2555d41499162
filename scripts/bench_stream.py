#!/usr/bin/env python3
"""Streamed proxy route: time to first byte through the gateway as a ratio to the mock
upstream's own first byte, interleaved in the same run.

Usage: bench_stream.py GATEWAY_BASE MOCK_BASE OUT_JSON [ROUNDS] [REQUESTS]

Each round sends REQUESTS streamed chat completions (`"stream": true`; the demo providers stream
10 chunks 20 ms apart) one after another through `POST /v1/proxy/demo/v1/chat/completions`, then
the same number straight to the mock provider, and records the time to the first body byte and
to the end of each. Bodies are unique, so nothing is served from cache.
"""
import http.client
import json
import statistics
import sys
import time
import urllib.parse
import uuid

gateway, mock, out = sys.argv[1], sys.argv[2], sys.argv[3]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
requests = int(sys.argv[5]) if len(sys.argv) > 5 else 20
CHUNKS, DELAY_MS = 10, 20


def control(provider, body):
    u = urllib.parse.urlsplit(mock)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request("PUT", f"/__control/{provider}", json.dumps(body))
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status


def one(base, path):
    """(first byte s, total s) of one streamed request on a fresh connection."""
    u = urllib.parse.urlsplit(base)
    body = json.dumps({"model": "m", "stream": True,
                       "messages": [{"role": "user", "content": uuid.uuid4().hex}]})
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    t0 = time.perf_counter()
    c.request("POST", path, body, {"Content-Type": "application/json"})
    r = c.getresponse()
    first = None
    data = b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        if first is None:
            first = time.perf_counter() - t0
        data += chunk
    total = time.perf_counter() - t0
    c.close()
    assert r.status == 200 and data.endswith(b"data: [DONE]\n\n"), (r.status, data[-80:])
    return first, total


for p in ("alpha", "beta", "gamma"):
    control(p, {"stream": True, "stream_chunks": CHUNKS, "stream_delay_ms": DELAY_MS, "latency_ms": 0})
one(gateway, "/v1/proxy/demo/v1/chat/completions")  # warm-up

results = []
for rnd in range(rounds):
    g = [one(gateway, "/v1/proxy/demo/v1/chat/completions") for _ in range(requests)]
    m = [one(mock, "/alpha/v1/chat/completions") for _ in range(requests)]
    gf, mf = statistics.median(x[0] for x in g), statistics.median(x[0] for x in m)
    gt, mt = statistics.median(x[1] for x in g), statistics.median(x[1] for x in m)
    results.append({"gateway_first_ms": gf * 1e3, "mock_first_ms": mf * 1e3,
                    "gateway_total_ms": gt * 1e3, "mock_total_ms": mt * 1e3,
                    "first_ratio": gf / mf, "first_of_total": gf / gt})
    print(f"round {rnd + 1}: first byte gateway {gf*1e3:.2f} ms, mock {mf*1e3:.2f} ms "
          f"(x{gf/mf:.2f}); total gateway {gt*1e3:.1f} ms, mock {mt*1e3:.1f} ms")

for p in ("alpha", "beta", "gamma"):
    control(p, {"stream": False})
summary = {k: statistics.median(r[k] for r in results) for k in results[0]}
summary.update({"rounds": rounds, "requests": requests, "chunks": CHUNKS, "delay_ms": DELAY_MS})
json.dump(summary, open(out, "w"), indent=1)
print(json.dumps(summary))
