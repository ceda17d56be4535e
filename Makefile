# Every target that runs code depends on `install`, so each works as the first command on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')
# google/api/annotations.proto and http.proto (HTTP rules on methods) ship with googleapis-common-protos.
GOOGLEAPIS = $(shell $(BIN)/python -c "import google.api.http_pb2 as m, pathlib; print(pathlib.Path(m.__file__).parents[2])")

.PHONY: install proto proto-check run test lint bench web clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

proto: install
	rm -rf generated/shop
	$(BIN)/python -m grpc_tools.protoc -Iprotos -I$(GOOGLEAPIS) \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--python_out=generated --mypy_out=generated \
		--grpc_python_out=generated --mypy_grpc_out=generated \
		--include_imports --include_source_info --descriptor_set_out=generated/shop/descriptor_set.binpb $(PROTOS)
	find generated/shop -type d -exec touch {}/__init__.py \;
	touch generated/shop/py.typed

# Fails when the committed generated code is not what `make proto` makes from protos/.
proto-check: proto
	git diff --exit-code --stat -- generated
	test -z "$$(git status --porcelain -- generated)"

# CONFIG=path runs the gateway with another config, e.g. `make run CONFIG=examples/tenants.toml`.
run: install
	$(BIN)/python -m runtime.devstack $(if $(CONFIG),--config $(CONFIG))

test: install
	$(BIN)/python -m pytest
	# The gateway's behaviour once more on its other engine, grpc.aio (the config's engine = "aio"),
	# but for the tests marked engine_neutral (tests/conftest.py).
	$(BIN)/python -m pytest tests/gateway --gateway-engine aio

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	# The import contract: layers, engines apart, cygrpc in the core engine only, no cycles (pyproject.toml).
	$(BIN)/lint-imports --no-cache

# The gateway against a direct call and the reference yardstick (README, "Performance"); under 5 minutes.
# Options go in BENCH_ARGS, e.g. `make bench BENCH_ARGS=--quick` for a smoke run of a few seconds.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# Rebuilds examples/web/dist/shop.js (committed) from examples/web/src with esbuild, after `make proto`
# or a change of the npm packages in examples/web/package.json; needs node and npm.
web:
	cd examples/web && npm ci --no-audit --no-fund && npm run build

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
