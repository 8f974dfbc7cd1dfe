# The two commands of a fresh machine:  `make serve`  and  `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

CHECKPOINT := checkpoints/default
BUNDLE := models/default

.PHONY: serve test model lint typecheck unit bench sz clean help proto deploy-check image

help:
	@echo "make serve   build the default model if it is missing, then run the service"
	@echo "make test    linters, type checks and the test suite"
	@echo "make model   train the default checkpoint and export the default bundle"
	@echo "make bench   benchmarks (print tables; never pass/fail)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel of exactly this version is on the machine.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-build-isolation -e '.[dev]'
	touch $@

# The default model: trained on the built-in corpus (about 10 minutes on 2 CPU cores), evaluated
# on its test split, then exported to an fp32 bundle behind the parity gate.
$(CHECKPOINT)/metrics.json: | $(STAMP)
	$(PY) -m model.train --corpus builtin --preset small --out $(CHECKPOINT)

$(BUNDLE)/manifest.json: $(CHECKPOINT)/metrics.json
	$(PY) -m export --checkpoint $(CHECKPOINT) --out $(BUNDLE) --precision fp32

model: $(BUNDLE)/manifest.json

serve: proto model
	TRANSLATOR_BUNDLE_PATH=$(BUNDLE) $(PY) -m service

# gRPC stubs, generated at build time into service/pb/ (gitignored), typed for mypy.
PROTO_SRC := protos/translator/v1/translator.proto
PROTO_OUT := service/pb/translator/v1/translator_pb2.py

$(PROTO_OUT): $(PROTO_SRC) | $(STAMP)
	rm -rf service/pb && mkdir -p service/pb/translator/v1
	$(PY) -m grpc_tools.protoc -Iservice/pb=protos --python_out=. --pyi_out=. \
		--grpc_python_out=. --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		--mypy_grpc_out=. $(PROTO_SRC)
	touch service/pb/__init__.py service/pb/translator/__init__.py service/pb/translator/v1/__init__.py

proto: $(PROTO_OUT)

lint: $(STAMP) proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP) proto
	$(VENV)/bin/mypy

unit: $(STAMP) proto
	$(VENV)/bin/pytest

test: lint typecheck unit

# The deploy/ checks alone (also part of `make test`): kustomize, schemas, yamllint, hadolint,
# promtool, and the end-to-end Prometheus test. Tools are fetched into .cache/ on first use.
deploy-check: $(STAMP) proto
	$(VENV)/bin/pytest tests/deploy

# The container image (needs a container engine, and the bundle in $(BUNDLE): `make model`).
IMAGE ?= translator:dev
image:
	test -f $(BUNDLE)/manifest.json || { echo "no bundle in $(BUNDLE): run make model" >&2; exit 1; }
	docker build -t $(IMAGE) .

# Closed-loop gRPC load test on the default bundle: the server as configured, then with
# TRANSLATOR_MAX_ACTIVE_ROWS=1 (no batching). Prints a table; never pass/fail.
BENCH_CLIENTS ?= 32
BENCH_SECONDS ?= 20
bench: proto model
	$(PY) -m bench.decoder_step --bundle $(BUNDLE) --checkpoint $(CHECKPOINT)
	$(PY) -m bench.engine_load --bundle $(BUNDLE) --clients $(BENCH_CLIENTS)
	$(PY) -m bench.service_load --bundle $(BUNDLE) --clients $(BENCH_CLIENTS) --seconds $(BENCH_SECONDS)

sz:
	@find model export service bench -name '*.py' -not -path '*/pb/*' | xargs wc -l | sort -n

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
