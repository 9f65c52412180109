# One Makefile for everything: the targets are the verbs people use.
# Every target sets itself up on a fresh machine (venv + pinned packages + pinned CDK CLI).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# jsii prints an end-of-life banner on Node 20; the value must name the major version.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help install torch soak run test test-fast lint fmt typecheck synth deploy destroy schema bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(STAMP) $(NODE_STAMP)  ## create .venv and node_modules from the pinned requirements

run: install  ## the main job: a real training job end to end on the embedded local cloud (prints the dashboard address; RUN_ARGS=--keep-open)
	$(PY) -m shardq.demo $(RUN_ARGS)

test: install torch dashboard rulepacks optuna mlflow  ## lint, type-check and the whole test suite, PyTorch and browser tests included (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
# Four workers on 2 cores: one worker's waits (leases, real worker processes) overlap the others' CPU (BENCHMARKS.md §11).
# The suite writes bytecode (the Makefile's export above stops it elsewhere): without it each xdist worker
# re-rewrote every test module's asserts at collection (≈ 5 s of CPU each) and every subprocess
# (workers, Lambda runners, benchmarks) recompiled shardq (BENCHMARKS.md §11, round 4).
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -n 4 --dist loadfile

test-fast: install  ## the tests without lint, for the edit loop
	$(BIN)/pytest -x -q

lint: install  ## ruff lint + format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

fmt: install  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

typecheck: install  ## mypy on shardq and lambdas
	$(BIN)/mypy

synth: install  ## cdk synth with the pinned CLI (offline), cdk-nag included
	PATH=$(abspath $(BIN)):$$PATH npx --no-install cdk synth --quiet

deploy: install  ## cdk deploy to the AWS account in your environment
	PATH=$(abspath $(BIN)):$$PATH npx --no-install cdk deploy

destroy: install  ## cdk destroy
	PATH=$(abspath $(BIN)):$$PATH npx --no-install cdk destroy

schema: install  ## regenerate schemas/training-request.schema.json from the model
	$(PY) -m shardq.core.schema > schemas/training-request.schema.json

torch: install  ## optional: PyTorch for examples/torch_mlp.py (the default install stays light)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-torch.txt

.PHONY: dashboard dashboard-vendor
CHARTJS_VERSION := 4.6.1
CHARTJS := shardq/dashboard/static/vendor/chart.umd.min.js

dashboard: install  ## optional: shardq dashboard, result --plot; Chromium for the browser test
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dashboard.txt
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver for the dashboard's browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "no chromium here: the browser test skips; install chromium + chromium-driver (apt) to run it"; fi
	@echo "dashboard ready: $(BIN)/shardq dashboard --open (make run prints its address too)"

dashboard-vendor:  ## re-vendor the pinned Chart.js from its npm tarball (committed; no CDN at run time)
	rm -rf .vendor-tmp && mkdir .vendor-tmp
	cd .vendor-tmp && npm pack --silent chart.js@$(CHARTJS_VERSION) && tar xzf chart.js-$(CHARTJS_VERSION).tgz
	cp .vendor-tmp/package/dist/chart.umd.min.js $(CHARTJS)
	cp .vendor-tmp/package/LICENSE.md $(dir $(CHARTJS))chart.js.LICENSE.md
	rm -rf .vendor-tmp

.PHONY: rulepacks
RULEPACKS_VENV := $(VENV)/rulepacks
RULEPACKS_STAMP := $(RULEPACKS_VENV)/.installed

$(RULEPACKS_STAMP): requirements-rulepacks.txt
	test -x $(RULEPACKS_VENV)/bin/python || $(PYTHON) -m venv $(RULEPACKS_VENV)
	$(RULEPACKS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-rulepacks.txt
	touch $@

rulepacks: $(RULEPACKS_STAMP)  ## checkov in its own venv (.venv/rulepacks: its boto3 pins clash with ours) for tests/infra

.PHONY: mlflow
MLFLOW_VENV := $(VENV)/mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed

$(MLFLOW_STAMP): requirements-mlflow-server.txt
	test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-mlflow-server.txt
	touch $@

mlflow: install $(MLFLOW_STAMP)  ## optional: the MLflow client for `shardq track` / `watch --mlflow` (into .venv); an MLflow server for the tests in .venv/mlflow
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-mlflow.txt

.PHONY: flower bench-flower
FLOWER_VENV := $(VENV)/flower

flower: torch  ## optional: Flower (flwr + Ray) in its own venv, .venv/flower, for make bench-flower
	test -x $(FLOWER_VENV)/bin/python || $(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-flower.txt

bench-flower: flower  ## FedAvg on MNIST: shardq vs Flower vs centralized; table to BENCHMARKS.md (BENCH_ARGS=--arch cnn)
	$(PY) -m benchmarks.flower_compare --write $(BENCH_ARGS)

.PHONY: optuna bench-rounds bench-optuna
optuna: install  ## optional: Optuna's samplers (search.method "optuna") for workers, the tests and the benchmarks
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-optuna.txt

bench-rounds: optuna  ## rounds and sweeps: one straggler vs quorum, halving vs full budget vs Optuna's pruner (BENCH_ARGS=...)
	$(PY) -m benchmarks.rounds $(BENCH_ARGS)

bench-optuna: optuna torch  ## TPE vs random vs grid on the MNIST CNN, through shardq and in-process; plot to docs/img/optuna_tpe.png
	$(PY) -m benchmarks.optuna_tpe --plot docs/img/optuna_tpe.png $(BENCH_ARGS)

.PHONY: raytune bench-async bench-async-sweep bench-async-fl
RAYTUNE_VENV := $(VENV)/raytune
RAYTUNE_STAMP := $(RAYTUNE_VENV)/.installed

$(RAYTUNE_STAMP): requirements-raytune.txt
	test -x $(RAYTUNE_VENV)/bin/python || $(PYTHON) -m venv $(RAYTUNE_VENV)
	$(RAYTUNE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-raytune.txt
	touch $@

raytune: $(RAYTUNE_STAMP)  ## optional: Ray Tune (ray[tune]) in its own venv, .venv/raytune, the ASHAScheduler peer of make bench-async

bench-async: flower bench-async-sweep bench-async-fl  ## issue 27's unequal-worker benchmarks: both below (make torch brings matplotlib for the plots)

# Every system of the sweep benchmark this many times (same seeds): a row's median and range (~2.5 min a repeat).
ASYNC_SWEEP_REPEAT ?= 3
bench-async-sweep: optuna raytune  ## ASHA vs synchronous halving vs Optuna's SHA pruner vs Ray Tune's ASHA, 4 unequal workers, ASYNC_SWEEP_REPEAT runs each; BENCHMARKS.md + docs/img/async_sweep.png
	$(PY) -m benchmarks.async_sweep --write --repeat $(ASYNC_SWEEP_REPEAT) $(BENCH_ARGS)

FL_RESULTS := benchmarks/results/async_fl
bench-async-fl: flower  ## FedBuff (+ CA2FL) vs synchronous FedAvg vs Flower's FedAvg, MNIST CNN, one 10x slower client, equal client-update budgets: IID in one run, non-IID in five (Flower and the 4x-updates EMA row in the second, the 4x cosine + EMA row in the third, the polynomial average 5 times at 1x in the fourth and at 4x in the fifth, at the first's epoch); BENCHMARKS.md + docs/img/async_fl.png
	$(PY) -m benchmarks.async_fl --partitions iid --rounds-iid 24 --fedbuff iid:3:1:1 --fedbuff iid:3:1:1:cached --out $(FL_RESULTS)-iid.json $(BENCH_ARGS)
	$(PY) -m benchmarks.async_fl --partitions noniid --rounds-noniid 36 --systems fedbuff sync --fedbuff noniid:3:1:1 --fedbuff noniid:3:1:1:cached --fedbuff noniid:3:1:1:cached:ema --fedbuff noniid:3:1:1:cached:cosine:ema --out $(FL_RESULTS)-noniid.json $(BENCH_ARGS)
	$(PY) -m benchmarks.async_fl --partitions noniid --rounds-noniid 36 --systems fedbuff flower --epoch-s $$($(PY) -c "import json; print(json.load(open('$(FL_RESULTS)-noniid.json'))['config']['epoch_s'])") --fedbuff noniid:3:1:4:cached:ema --out $(FL_RESULTS)-noniid-long.json $(BENCH_ARGS)
	$(PY) -m benchmarks.async_fl --partitions noniid --rounds-noniid 36 --systems fedbuff --epoch-s $$($(PY) -c "import json; print(json.load(open('$(FL_RESULTS)-noniid.json'))['config']['epoch_s'])") --fedbuff noniid:3:1:4:cached:cosine:ema --out $(FL_RESULTS)-noniid-long-cosine.json $(BENCH_ARGS)
	$(PY) -m benchmarks.async_fl --partitions noniid --rounds-noniid 36 --systems fedbuff --epoch-s $$($(PY) -c "import json; print(json.load(open('$(FL_RESULTS)-noniid.json'))['config']['epoch_s'])") $(foreach i,1 2 3 4 5,--fedbuff noniid:3:1:1:cached:poly) --out $(FL_RESULTS)-noniid-poly.json $(BENCH_ARGS)
	$(PY) -m benchmarks.async_fl --partitions noniid --rounds-noniid 36 --systems fedbuff --epoch-s $$($(PY) -c "import json; print(json.load(open('$(FL_RESULTS)-noniid.json'))['config']['epoch_s'])") --fedbuff noniid:3:1:4:cached:poly --out $(FL_RESULTS)-noniid-long-poly.json $(BENCH_ARGS)
	$(PY) -m benchmarks.async_fl --merge $(FL_RESULTS)-iid.json $(FL_RESULTS)-noniid.json $(FL_RESULTS)-noniid-long.json $(FL_RESULTS)-noniid-long-cosine.json $(FL_RESULTS)-noniid-poly.json $(FL_RESULTS)-noniid-long-poly.json --write

soak: install  ## the chaos soak runs: many jobs with random worker kills (a SOAK {...} line), and the long model-based run (a MODEL {...} line; MODEL_EXAMPLES, MODEL_STEPS)
	$(BIN)/pytest tests/chaos/test_soak.py tests/chaos/test_model.py -m soak -s -q

bench: install  ## run the benchmarks (figures go to BENCHMARKS.md by hand)
	$(PY) -m benchmarks.run_all

.PHONY: bench-preempt
bench-preempt: install  ## a Spot storm (SIGTERM and SIGKILL) with checkpoints, without, and calm, side by side; plot to docs/img/preempt.png (BENCH_ARGS=...)
	$(PY) -m benchmarks.preempt --plot docs/img/preempt.png $(BENCH_ARGS)

.PHONY: bench-scale
SCALE_SHARDS ?= 100000
bench-scale: install  ## one job of SCALE_SHARDS (100,000) no-op shards on the deployed local stack, then its manifest
	$(PY) -m benchmarks.scale --shards $(SCALE_SHARDS) $(BENCH_ARGS)
	$(PY) -m benchmarks.scale_manifest --shards $(SCALE_SHARDS)

clean:  ## remove build outputs (keeps .venv and node_modules)
	rm -rf cdk.out .pytest_cache .mypy_cache .ruff_cache .hypothesis
