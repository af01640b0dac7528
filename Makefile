# Two commands set everything up from a fresh clone: `make demo` and `make test`.
# Both install from the committed lock (lock/requirements-*.txt: every package, transitive
# ones included, at an exact version with its hashes), so a fresh clone gets exactly what
# CI passed with. pyproject.toml keeps ranges for people who install fedwarden as a library;
# `make lock` re-resolves the lock to the newest versions those ranges allow.
PYTHON ?= python3
VENV ?= .venv
BENCH_VENV ?= .venv-bench
BIN := $(VENV)/bin
# uv installs and resolves the lock; it lives in a folder of its own so that syncing the
# project's environment to the lock never removes the tool doing it.
UV_HOME := .uv
UV := $(UV_HOME)/bin/uv
# The CPU build of PyTorch lies in this folder on these machines (PyPI's torch is the CUDA
# build); the lock names the folder, so syncing finds the wheel whose hash it records.
WHEELS ?= /opt/wheels
LOCK_FLAGS := --python-version 3.11 --generate-hashes --find-links $(WHEELS) --emit-find-links \
	--constraint lock/constraints.txt --quiet

.PHONY: demo test lint docs bench install install-test lock proto clean

$(UV):
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install --quiet --require-hashes -r lock/requirements-uv.txt

$(BIN)/python: | $(UV)
	$(UV) venv --quiet --python $(PYTHON) $(VENV)

# The demo needs the torch extra (DP-SGD with Opacus), the he extra (TenSEAL) and the serve
# extra (the dashboard and prediction service whose commands it prints at the end).
# Syncing removes whatever the lock does not name, fedwarden's own editable install too,
# so fedwarden is installed again (without dependencies) after each sync.
$(VENV)/.installed-demo: lock/requirements-demo.txt pyproject.toml | $(BIN)/python
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes $<
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	rm -f $(VENV)/.installed-test
	touch $@

$(VENV)/.installed-test: lock/requirements-test.txt pyproject.toml | $(BIN)/python
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes $<
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	rm -f $(VENV)/.installed-demo
	touch $@

# The test set holds the demo's packages at the same versions, so an environment synced for
# the tests runs the demo as it is.
install:
	@if [ ! -f $(VENV)/.installed-test ]; then $(MAKE) $(VENV)/.installed-demo; fi

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/fedwarden run examples/quickstart.toml

lint: install-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

# The documentation site, built as CI builds it: any warning (a broken link, a page missing
# from the navigation, a docstring the API reference cannot read) fails the build.
docs: install-test
	$(BIN)/mkdocs build --strict --site-dir site

test: lint docs
	$(BIN)/pytest -q

# Flower and pfl-research pin other versions than the test set (rich, for one), so the peers
# are measured in an environment of their own, synced from lock/requirements-bench.txt.
$(BENCH_VENV)/.installed: lock/requirements-bench.txt pyproject.toml | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(BENCH_VENV)
	$(UV) pip sync --quiet --python $(BENCH_VENV)/bin/python --require-hashes $<
	$(UV) pip install --quiet --python $(BENCH_VENV)/bin/python --no-deps -e .
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m benchmarks.throughput
	$(BENCH_VENV)/bin/python -m benchmarks.aggregation

# Re-resolve every set to the newest versions pyproject.toml allows; then `make test` says
# whether the upgrade can be taken. The demo's set is resolved inside the test set's pins.
lock: | $(UV)
	echo "uv" | $(UV) pip compile - $(LOCK_FLAGS) -o lock/requirements-uv.txt
	$(UV) pip compile pyproject.toml --extra test $(LOCK_FLAGS) -o lock/requirements-test.txt
	$(UV) pip compile pyproject.toml --extra torch --extra he --extra serve $(LOCK_FLAGS) \
		--constraint lock/requirements-test.txt -o lock/requirements-demo.txt
	$(UV) pip compile pyproject.toml --extra bench $(LOCK_FLAGS) -o lock/requirements-bench.txt

# Regenerate the protocols' Python code after editing a .proto file. protoc 25 (grpcio-tools
# 1.62) writes code that runs on protobuf 4.25 to 6.x, the range both we and Flower accept;
# --no-deps keeps grpcio-tools from changing the locked protobuf. `make test` afterwards
# syncs the environment back to the lock.
proto: install-test
	$(UV) pip install --quiet --python $(BIN)/python --no-deps "grpcio-tools==1.62.3"
	$(BIN)/python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src \
		src/fedwarden/runtime/grpc/federation.proto src/fedwarden/runtime/grpc/keyholder.proto \
		src/fedwarden/secure/secagg.proto \
		src/fedwarden/vertical/vertical.proto
	rm -f $(VENV)/.installed-test

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(UV_HOME) runs site .pytest_cache .mypy_cache .ruff_cache
