"""Writes the workerd config used by `make bench` (argv: out path, port, storage dir).

Bindings mirror wrangler.toml: the five Durable Object namespaces (SQLite-backed) and the vars."""
import json
import os
import re
import sys

out, port, state = sys.argv[1], sys.argv[2], sys.argv[3]
mock_port = sys.argv[4] if len(sys.argv) > 4 else "9100"
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
toml = open(os.path.join(root, "wrangler.toml")).read()

vars_section = toml.split("[vars]", 1)[1]
variables = {}
for line in vars_section.splitlines():
    m = re.match(r'^([A-Z_]+)\s*=\s*(["\'])(.*)\2\s*$', line.strip())
    if m:
        variables[m.group(1)] = m.group(3)
policies = json.loads(variables["RATE_LIMIT_POLICIES"])
policies["bench"] = {"capacity": 1000000000, "refill": 1000000000, "period_ms": 1000}
variables["RATE_LIMIT_POLICIES"] = json.dumps(policies)
variables["ADMIN_TOKEN"] = "bench-admin-token-0123456789"
variables["PROVIDERS"] = variables["PROVIDERS"].replace("127.0.0.1:9100", "127.0.0.1:" + mock_port)
variables["RATE_LIMIT_POLICIES"] = json.dumps({**policies, "default": policies["bench"]})

classes = [("RATE_LIMITER", "RateLimiterDO"), ("CACHE_SHARD", "CacheShardDO"),
           ("PROVIDER_HEALTH", "ProviderHealthDO"), ("EXPERIMENT", "ExperimentDO"),
           ("AGGREGATOR", "AggregatorDO")]
build = os.path.relpath(os.path.join(root, "build"), os.path.dirname(os.path.abspath(out)))
bindings = [f'(name = "{b}", durableObjectNamespace = "{c}")' for b, c in classes]
bindings += [f'(name = "{k}", text = {json.dumps(v)})' for k, v in variables.items()]
namespaces = [f'(className = "{c}", uniqueKey = "edge-gateway-{c}", enableSql = true)' for _, c in classes]

sep = ",\n    "
bindings_text = sep.join(bindings)
namespaces_text = sep.join(namespaces)
config = f'''using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "main", worker = .gateway),
    (name = "do-storage", disk = (path = "{state}", writable = true)),
    (name = "loopback", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (), service = "main")],
);
const gateway :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed "{build}/index.js"),
    (name = "index_bg.wasm", wasm = embed "{build}/index_bg.wasm"),
  ],
  compatibilityDate = "2026-11-01",
  bindings = [
    {bindings_text}
  ],
  durableObjectNamespaces = [
    {namespaces_text}
  ],
  durableObjectStorage = (localDisk = "do-storage"),
  globalOutbound = "loopback",
);
'''
open(out, "w").write(config)
