#!/usr/bin/env python3
"""Serves the dashboard and its JSON APIs from fixture files, on 127.0.0.1 only.

    python3 tests/dashboard/serve_fixtures.py [--port 0] [--scenario full|empty] [--fail PATH[,PATH...]]

Routes (as the worker has them):
    GET /dashboard               src/dashboard/index.html, with the worker's headers (CSP included)
    GET /metrics?period=P        fixtures/<scenario>-metrics.json ("period" rewritten to P)
    GET /v1/metrics/series?period=P
                                 fixtures/<scenario>-series-P.json, else fixtures/<scenario>-series.json
    GET /v1/experiments          fixtures/<scenario>-experiments.json
    GET /v1/alerts               fixtures/<scenario>-alerts.json
--fail answers 404 (a JSON problem body) on the given paths, to test the page's error handling.
Prints "listening on http://127.0.0.1:PORT" once ready. Standard library only.
"""
import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = os.path.join(HERE, "..", "..", "src", "dashboard", "index.html")
FIXTURES = os.path.join(HERE, "fixtures")
# The headers the worker sends with the page (src/routes/events.rs, dashboard()).
PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:",
}
PERIODS = ("1h", "24h", "7d")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--scenario", default="full")
    ap.add_argument("--fail", default="", help="comma-separated paths that answer 404")
    args = ap.parse_args()
    failing = {p for p in args.fail.split(",") if p}

    def fixture(name):
        with open(os.path.join(FIXTURES, f"{args.scenario}-{name}.json"), encoding="utf-8") as f:
            return json.load(f)

    class Handler(BaseHTTPRequestHandler):
        def send(self, status, body, headers):
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def json(self, status, value):
            # The fixture APIs also answer cross-origin, for pages opened with ?base=.
            self.send(status, json.dumps(value).encode(), {
                "Content-Type": "application/json", "Cache-Control": "no-store",
                "Access-Control-Allow-Origin": "*"})

        def do_GET(self):
            u = urlsplit(self.path)
            q = parse_qs(u.query)
            period = q.get("period", ["1h"])[0]
            if u.path in failing:
                return self.json(404, {"type": "about:blank", "title": "Not Found", "status": 404})
            try:
                if u.path == "/dashboard":
                    with open(PAGE, "rb") as f:
                        return self.send(200, f.read(), PAGE_HEADERS)
                if period not in PERIODS:
                    return self.json(400, {"title": "bad period", "status": 400})
                if u.path == "/metrics":
                    m = fixture("metrics")
                    m["period"] = period
                    return self.json(200, m)
                if u.path == "/v1/metrics/series":
                    try:
                        return self.json(200, fixture(f"series-{period}"))
                    except FileNotFoundError:
                        s = fixture("series")
                        s["period"] = period
                        return self.json(200, s)
                if u.path == "/v1/experiments":
                    return self.json(200, fixture("experiments"))
                if u.path == "/v1/alerts":
                    return self.json(200, fixture("alerts"))
            except FileNotFoundError as e:
                return self.json(500, {"title": f"missing fixture: {e.filename}", "status": 500})
            return self.json(404, {"title": "Not Found", "status": 404})

        do_HEAD = do_GET

        def log_message(self, fmt, *a):
            sys.stderr.write("serve_fixtures: " + (fmt % a) + "\n")

    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on http://127.0.0.1:{srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
