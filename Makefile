# Edge Gateway. The two commands a new machine needs: `make dev` and `make test`.
# Every target installs what is missing first (scripts/setup.sh) and skips what is present.
SHELL := /bin/bash
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/.tools/bin:$(HOME)/.cargo/bin:$(PATH)
ENV := source scripts/env.sh &&

.PHONY: help setup setup-test build dev test fmt fmt-check lint test-native test-e2e deploy-dry-run deploy bench clean

help:
	@echo "make dev     run the gateway on 127.0.0.1:8787 with demo upstreams (Ctrl-C stops)"
	@echo "make test    fmt check, clippy (host + wasm32), native tests, build, end-to-end tests, deploy dry run"
	@echo "make build   build the worker into build/"
	@echo "make bench   native criterion benches + workerd load test, written to docs/BENCHMARKS.md"
	@echo "make deploy  wrangler deploy (needs Cloudflare credentials)"

setup:
	@bash scripts/setup.sh

build: setup
	@bash scripts/build.sh

dev: build
	@bash scripts/dev.sh

test: setup-test fmt-check lint test-native build test-e2e deploy-dry-run
	@echo "==> all tests passed"

# The end-to-end tests also need promtool (exposition-format check), Chromium (dashboard) and
# the openai Python package (the SDK test).
setup-test:
	@bash scripts/setup.sh promtool chromium openai

fmt:
	cargo fmt --all

fmt-check:
	@echo "==> cargo fmt --check"
	@cargo fmt --all -- --check

lint:
	@echo "==> gateway-core has no worker dependency"
	@! cargo tree -p gateway-core -e normal --prefix none | grep -E '^(worker|wasm-bindgen|js-sys) '
	@echo "==> clippy (host, all targets)"
	@cargo clippy --workspace --all-targets --locked -- -D warnings
	@echo "==> clippy (wasm32-unknown-unknown: the worker and the core)"
	@cargo clippy -p edge-gateway -p gateway-core --target wasm32-unknown-unknown --locked -- -D warnings

test-native:
	@echo "==> native tests (gateway-core, mock-upstream)"
	@cargo test -p gateway-core -p mock-upstream --locked

test-e2e:
	@echo "==> end-to-end tests against wrangler dev (workerd + local SQLite Durable Objects)"
	@$(ENV) EG_PREBUILT=1 cargo test -p gateway-e2e --locked -- --test-threads=8

deploy-dry-run: build
	@echo "==> wrangler deploy --dry-run"
	@$(ENV) EG_PREBUILT=1 wrangler deploy --dry-run --outdir target/deploy-dry-run 2>&1 | tee target/deploy-dry-run.log | grep -E "Total Upload|error" 
	@grep -q "Total Upload" target/deploy-dry-run.log

deploy: build
	@$(ENV) wrangler deploy

bench: build deploy-dry-run
	@bash scripts/setup.sh bench
	@bash scripts/bench.sh

clean:
	cargo clean
	rm -rf build target/deploy-dry-run
