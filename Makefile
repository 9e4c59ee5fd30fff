# The two commands: `make run` (full dev stack) and `make test` (everything CI runs).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
CLIENT := clients/python
TS := clients/typescript
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install chromium run test test-faults lint typecheck gen gen-check proto-lint proto-breaking unit integration e2e bench-providers bench-backfill bench-query bench-query-ab bench-sync bench-index bench-budget bench-remote bench-managed bench-paths bench-watch clean

# Installs the server, the client package (with the `embedd` command) and the dev tools into
# .venv, both editable; redone when either pyproject.toml changes.
$(VENV)/.installed: pyproject.toml $(CLIENT)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '$(CLIENT)[cli]' -e '.[dev]'
	touch $@

# The OpenAPI tooling (tools/openapi.py, `make gen`, the tests): grpc-gateway's protoc-gen-swagger
# unpacked from Debian's package (not installed), swagger2openapi and Redoc from npm (Redoc's
# bundle is what /docs loads), Debian's chromium for the /docs browser test.
SWAGGER_DEB := golang-grpc-gateway=1.6.4-2+b23
PROTOC_GEN_SWAGGER := $(VENV)/grpc-gateway/usr/bin/protoc-gen-swagger
NPM_TOOLS := tools/npm/node_modules/.installed

$(PROTOC_GEN_SWAGGER):
	rm -rf $(VENV)/grpc-gateway && mkdir -p $(VENV)/grpc-gateway
	cd $(VENV)/grpc-gateway && { apt-get download -qq $(SWAGGER_DEB) 2>/dev/null \
		|| { apt-get update -qq && apt-get download -qq $(SWAGGER_DEB); }; }
	dpkg -x $(VENV)/grpc-gateway/golang-grpc-gateway_*.deb $(VENV)/grpc-gateway

$(NPM_TOOLS): tools/npm/package-lock.json
	cd tools/npm && npm ci --no-audit --no-fund --loglevel=error
	touch $@

envoy/redoc.standalone.js: $(NPM_TOOLS)
	cp tools/npm/node_modules/redoc/bundles/redoc.standalone.js $@

chromium:
	@command -v chromium >/dev/null || { apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# The TypeScript client's toolchain (protoc-gen-es, tsc) and runtime, exactly as locked.
$(TS)/node_modules/.installed: $(TS)/package-lock.json
	npm ci --prefix $(TS) --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed $(TS)/node_modules/.installed
install: $(PROTOC_GEN_SWAGGER) envoy/redoc.standalone.js chromium

## Starts PostgreSQL, the gRPC server, Envoy, demo data and a dev API key; Ctrl-C stops all.
## `make run REPLICAS=3`: three servers on the one control plane, behind the one Envoy.
REPLICAS ?= 1
run: install
	EMBEDD_DEV_REPLICAS=$(REPLICAS) $(PY) -m embedd_server.devtools.devstack

## Everything: contract checks, lint, types, then the whole test suite.
test: install proto-lint proto-breaking lint typecheck
	$(PY) -m pytest -q

## Regenerates the committed Python stubs, the Envoy descriptor and envoy/openapi.json from protos/.
gen: install
	$(PY) tools/gen.py

gen-check: install
	$(PY) tools/gen.py --check

proto-lint: install
	$(BIN)/buf lint

# Compares protos/ with the last published contract (contract/embedd-v1.binpb). Update that
# image only on purpose, in a commit that says the change is meant to break clients.
proto-breaking: install
	$(BIN)/buf breaking --against contract/embedd-v1.binpb

lint: install
	$(BIN)/ruff check server clients/python/embedd_client tests bench tools

typecheck: install
	$(BIN)/mypy server/embedd_server clients/python/embedd_client tools

unit: install
	$(PY) -m pytest -q tests/unit

## The fault suite alone (tests/faults, ~1.5 min; `make test` runs it too): servers killed
## and paused, PostgreSQL and Envoy restarted, the provider down, replicas behind one Envoy.
test-faults: install
	$(PY) -m pytest -q tests/faults

## Benchmarks (minutes each; not part of `make test`). Each ends with one JSON line.
bench-providers: install
	$(PY) -m bench.bench_providers

bench-backfill: install
	$(PY) -m bench.bench_backfill

bench-query: install
	$(PY) -m bench.bench_query

# The query path of this tree against OTHER's (a git worktree of an earlier commit).
bench-query-ab: install
	$(PY) -m bench.bench_query_ab --other $(OTHER)

bench-sync: install
	$(PY) -m bench.bench_sync

# ANN index kinds (vector, halfvec, binary + re-rank) x dimensions: build time and recall.
bench-index: install
	$(PY) -m bench.bench_index

# A backfill at a 60,000 tokens/min budget against its lower bound (docs/providers.md).
bench-budget: install
	$(PY) -m bench.bench_budget

# 100k x 1,536 through the fake OpenAI at 0 and 150 ms: to synced, to index ready, recall,
# and the budget case (docs/indexes.md).
bench-remote: install
	$(PY) -m bench.bench_remote

# Managed mode: backfill into embedded Qdrant vs a raw qdrant-client load; query p50 and filtered recall.
bench-managed: install
	$(PY) -m bench.bench_managed

# Provider requests and tokens of a fill by the normal API, the Batch API and an import,
# on the demo data (docs/batch.md).
bench-paths: install
	$(PY) -m bench.bench_paths

# 1,000 watch streams (a share through Envoy) during a backfill and sync cycles: event delay,
# control-plane query rate with 10 and 1,000 watchers, server memory (docs/watch.md).
bench-watch: install
	$(PY) -m bench.bench_watch

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tools/npm/node_modules envoy/redoc.standalone.js
