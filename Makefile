# Two commands set everything up from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch first: the torch extra's range then installs nothing more.
# The demo needs the torch extra (DP-SGD with Opacus), the he extra (TenSEAL) and the serve
# extra (the dashboard and prediction service whose commands it prints at the end).
TORCH := torch==2.13.0

.PHONY: demo test lint bench install install-test proto clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[torch,he,serve]"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/fedwarden run examples/quickstart.toml

lint: install-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

bench: install
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/aggregation.py

# Regenerate the protocols' Python code after editing a .proto file. protoc 25 (grpcio-tools
# 1.62) writes code that runs on protobuf 4.25 to 6.x, the range both we and Flower accept;
# --no-deps keeps grpcio-tools from downgrading the installed protobuf.
proto: install-test
	$(BIN)/pip install --quiet --no-deps "grpcio-tools==1.62.3"
	$(BIN)/python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src \
		src/fedwarden/runtime/grpc/federation.proto src/fedwarden/secure/secagg.proto \
		src/fedwarden/vertical/vertical.proto

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
