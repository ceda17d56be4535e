# Every target that runs code depends on `install`, so each works as the first command on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NATIVE_STAMP := $(VENV)/.native
NATIVE_SOURCES := native/Cargo.toml native/Cargo.lock native/pyproject.toml $(shell find native/src -name '*.rs')
# uv installs exactly what the lock (requirements.txt) holds; uv itself comes by hash
# (uv-requirements.txt), into a folder of its own.
UV_HOME := .uv
UV := $(UV_HOME)/bin/uv
export UV_PYTHON_DOWNLOADS := never
PROTOS := $(shell find protos -name '*.proto')
# google/api/annotations.proto and http.proto (HTTP rules on methods) ship with googleapis-common-protos.
GOOGLEAPIS = $(shell $(BIN)/python -c "import google.api.http_pb2 as m, pathlib; print(pathlib.Path(m.__file__).parents[2])")

.PHONY: install lock upgrade proto proto-check run test lint docs schema bench web clean

install: $(STAMP) $(NATIVE_STAMP)

$(UV): uv-requirements.txt
	test -x $(UV_HOME)/bin/python || $(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install --quiet --require-hashes --no-deps -r uv-requirements.txt
	touch $(UV)

# Exactly the lock (a package it lacks is removed), then this project itself, editable.
$(STAMP): pyproject.toml requirements.txt $(UV)
	test -x $(BIN)/python || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes requirements.txt
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The native data plane (Rust), in release mode, with the crates of native/Cargo.lock.
$(NATIVE_STAMP): $(STAMP) $(NATIVE_SOURCES)
	command -v cargo >/dev/null || { echo "make install: cargo (Rust >= 1.85) is needed to build native/; see the README" >&2; exit 1; }
	rm -rf $(VENV)/wheels
	$(BIN)/maturin build --quiet --release --locked -m native/Cargo.toml -i $(BIN)/python --out $(VENV)/wheels
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --reinstall $(VENV)/wheels/gateway_native-*.whl
	touch $(NATIVE_STAMP)

# After a change of pyproject.toml's dependencies: the lock again, moving as little as it can.
lock: $(UV)
	$(UV) pip compile --quiet pyproject.toml --group dev --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make lock" -o requirements.txt

# Every package to the newest release pyproject.toml's bounds allow; the lock's diff shows what moved.
upgrade: $(UV)
	$(UV) pip compile --quiet pyproject.toml --group dev --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make upgrade" -o requirements.txt --upgrade
	cd native && cargo update

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
	$(BIN)/python -m runtime.devstack --config $(or $(CONFIG),gateway/config/reference.toml)

# cargo test, every test (on the default engine, native), then the gateway's tests again on the aio engine
# (but for those marked engine_neutral, tests/conftest.py). Every run goes to the end whatever the others give;
# what was skipped, and why, is printed last.
test: install
	rm -f $(VENV)/skipped.txt
	status=0; \
	(cd native && cargo test --locked --quiet) || status=$$?; \
	GATEWAY_TEST_SKIPS=$(VENV)/skipped.txt $(BIN)/python -m pytest || status=$$?; \
	GATEWAY_TEST_SKIPS=$(VENV)/skipped.txt $(BIN)/python -m pytest tests/gateway --gateway-engine aio || status=$$?; \
	$(BIN)/python -m tests.support.skips $(VENV)/skipped.txt; \
	exit $$status

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	# The import contract: layers, engines apart, none of grpcio's private modules, no cycles (pyproject.toml).
	$(BIN)/lint-imports --no-cache
	# The native data plane: formatted, and clippy-clean with every warning an error.
	cd native && cargo fmt --check
	cd native && cargo clippy --locked --all-targets -- -D warnings

# The documentation site (docs/, mkdocs.yml) into site/, git-ignored. --strict: a broken link, a missing
# page or anchor fails it. docs/hooks/ fill in the configuration reference, from gateway/config/schema.py,
# and the latest bench results committed in bench/results/. (NO_MKDOCS_2_WARNING: no banner about the
# theme's successor on every build.)
# The hooks (docs/hooks/) read bench/, which is not installed: the project's folder is on the path.
docs: install
	NO_MKDOCS_2_WARNING=1 PYTHONPATH=$(CURDIR) $(BIN)/mkdocs build --strict

# The config's JSON Schema, for editors (docs/configuration.md), written from the pydantic models after
# a change of gateway/config/schema.py; tests/docs fails while the committed file is not current.
schema: install
	$(BIN)/python -c "from gateway.config.schema import JSON_SCHEMA_FILE as f, json_schema_text; f.write_text(json_schema_text())"

# The gateway against a direct call and the reference yardstick (docs/performance.md); under 5 minutes.
# Options go in BENCH_ARGS, e.g. `make bench BENCH_ARGS=--quick` for a smoke run of a few seconds.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# Rebuilds examples/web/dist/shop.js (committed) from examples/web/src with esbuild, after `make proto`
# or a change of the npm packages in examples/web/package.json; needs node and npm.
web:
	cd examples/web && npm ci --no-audit --no-fund && npm run build

clean:
	rm -rf $(VENV) $(UV_HOME) .mypy_cache .pytest_cache .ruff_cache
