# The two commands of a fresh machine:  `make serve`  and  `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two install stamps, for the sets of pyproject.toml (its comment says which is which):
# - serve: the service's runtime set (project.dependencies) + the stub generators (`stubs`).
#          No torch. `make serve` needs only this one.
# - dev:   on top of serve: torch, training and export (`train`), linters and tests (`dev`).
#          A superset, built after the serve stamp (order-only), so one venv serves both and the
#          two pip runs never overlap, even under `make -j`.
SERVE_STAMP := $(VENV)/.installed-serve
DEV_STAMP := $(VENV)/.installed-dev

CHECKPOINT := checkpoints/default
BUNDLE := models/default

.PHONY: serve test model bundle bundle-present lint typecheck unit bench bench-peers bench-reliability sz clean \
	help proto \
	deploy-check image

help:
	@echo "make serve    install what the service needs (no torch), serve $(BUNDLE)"
	@echo "make test     linters, type checks and the test suite"
	@echo "make model    rebuild the default model from scratch: train, then export"
	@echo "make bundle   re-export $(BUNDLE) from the shipped $(CHECKPOINT) (about a minute)"
	@echo "make bench    benchmarks on the shipped bundle (print tables; never pass/fail)"

$(SERVE_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# --no-build-isolation builds with the venv's setuptools: a fresh venv's 65.x has no bdist_wheel.
	$(PY) -m pip install --quiet --upgrade pip 'setuptools>=70.1'
	$(PY) -m pip install --quiet --no-build-isolation -e '.[stubs]'
	touch $@

$(DEV_STAMP): pyproject.toml | $(SERVE_STAMP)
	# torch first, pinned: the CPU wheel of exactly this version is on the machine.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-build-isolation -e '.[train,stubs,dev]'
	touch $@

# The default model ships with the repository: the checkpoint ($(CHECKPOINT): model.safetensors,
# config.json, tokenizer.model, metrics.json) and the fp32 bundle exported from it ($(BUNDLE)).
# Serving never trains.
bundle-present:
	@test -f $(BUNDLE)/manifest.json || { echo "$(BUNDLE) is missing: it ships with the repository \
	(git checkout $(BUNDLE)) or rebuild it with make model" >&2; exit 1; }

serve: bundle-present $(SERVE_STAMP) proto
	TRANSLATOR_BUNDLE_PATH=$(BUNDLE) $(PY) -m service

# From scratch: train on the built-in corpus (the preset fixes the step count; about 20 minutes on
# 2 CPU cores), evaluate on its test split, export the fp32 bundle behind the parity gate. The
# optimizer state (trainer_state.pt, for resuming) and the step log (train_log.jsonl) are not shipped.
model: $(DEV_STAMP)
	rm -rf $(CHECKPOINT)
	$(PY) -m model.train --corpus builtin --preset small --out $(CHECKPOINT)
	$(PY) -m export --checkpoint $(CHECKPOINT) --out $(BUNDLE) --precision fp32
	rm -f $(CHECKPOINT)/trainer_state.pt $(CHECKPOINT)/train_log.jsonl

# Re-export only, from the shipped checkpoint: what a change of the bundle format needs.
bundle: $(DEV_STAMP)
	$(PY) -m export --checkpoint $(CHECKPOINT) --out $(BUNDLE) --precision fp32

# gRPC stubs, generated at build time into service/pb/ (gitignored), typed for mypy. The generators
# are the `stubs` extra, which both stamps install.
PROTO_SRC := protos/translator/v1/translator.proto protos/inference/grpc_predict_v2.proto
PROTO_OUT := service/pb/translator/v1/translator_pb2.py

$(PROTO_OUT): $(PROTO_SRC) | $(SERVE_STAMP)
	rm -rf service/pb && mkdir -p service/pb/translator/v1 service/pb/inference
	$(PY) -m grpc_tools.protoc -Iservice/pb=protos --python_out=. --pyi_out=. \
		--grpc_python_out=. --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		--mypy_grpc_out=. $(PROTO_SRC)
	touch service/pb/__init__.py service/pb/translator/__init__.py \
		service/pb/translator/v1/__init__.py service/pb/inference/__init__.py

proto: $(PROTO_OUT)

lint: $(DEV_STAMP) proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(DEV_STAMP) proto
	$(VENV)/bin/mypy

unit: $(DEV_STAMP) proto
	$(VENV)/bin/pytest

test: lint typecheck unit

# The deploy/ checks alone (also part of `make test`): kustomize, schemas, yamllint, hadolint,
# promtool, and the end-to-end Prometheus test. Tools are fetched into .cache/ on first use.
deploy-check: $(DEV_STAMP) proto
	$(VENV)/bin/pytest tests/deploy

# The container image (needs a container engine; it packages the shipped bundle $(BUNDLE)).
IMAGE ?= translator:dev
image: bundle-present
	docker build -t $(IMAGE) .

# Closed-loop gRPC load test on the shipped default bundle: the server as configured, then with
# TRANSLATOR_MAX_ACTIVE_ROWS=1 (no batching). Prints a table; never pass/fail.
BENCH_CLIENTS ?= 32
BENCH_SECONDS ?= 20
bench: bundle-present $(DEV_STAMP) proto
	$(PY) -m bench.decoder_step --bundle $(BUNDLE) --checkpoint $(CHECKPOINT)
	$(PY) -m bench.engine_load --bundle $(BUNDLE) --clients $(BENCH_CLIENTS)
	$(PY) -m bench.service_load --bundle $(BUNDLE) --clients $(BENCH_CLIENTS) --seconds $(BENCH_SECONDS)

# This project's engine against CTranslate2 on the same weights (about 15 minutes; installs the
# bench extra: ctranslate2, matplotlib). Prints the table, draws bench/results/vs_ctranslate2.png.
bench-peers: bundle-present $(DEV_STAMP) proto
	$(PY) -m pip install --quiet --no-build-isolation -e '.[train,stubs,dev,bench]'
	$(PY) -m bench.vs_ctranslate2 --checkpoint $(CHECKPOINT) --bundle $(BUNDLE)
	$(PY) -m bench.vs_ctranslate2 --checkpoint $(CHECKPOINT) --model base

# Reliability runs on the shipped bundle (about 10 minutes): 50,000 requests of random length (RSS,
# open files, threads), twice the measured capacity for 60 s, idle/silent/stopped connections,
# and 200,000 atheris runs on validation and tokenization. Print figures; never pass/fail.
bench-reliability: bundle-present $(DEV_STAMP) proto
	$(PY) -m bench.reliability --bundle $(BUNDLE) soak --requests 50000
	$(PY) -m bench.reliability --bundle $(BUNDLE) overload --seconds 60
	$(PY) -m bench.reliability --bundle $(BUNDLE) connections
	$(PY) -m bench.fuzz_atheris --bundle $(BUNDLE) -runs=200000

sz:
	@find model export service bench -name '*.py' -not -path '*/pb/*' | xargs wc -l | sort -n

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
