# hw3lib: `make report` (the main job) and `make test`. Both create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HW3 := $(VENV)/bin/hw3
DEMO := build/demo
DATA ?= $(DEMO)/hw3_data
ASSETS ?= $(DEMO)/models/assets.json
DEMO_SIZE ?= full
PYTEST_ARGS ?=
TEST_WORKERS ?= 2  # pytest-xdist processes (this machine has 2 cores); 0 runs in one process

# Paths a user gives (DATA, ASSETS) are data, never shell or make code: kept out of the recipes'
# environment (make would expand them there) and passed as the text typed, single-quoted.
unexport DATA ASSETS
# Python keeps compiled modules (__pycache__) here even where the shell says not to: with
# PYTHONDONTWRITEBYTECODE set, every process (each test's `hw3`, each notebook kernel, each training
# worker) compiles torch, transformers and scipy from source again, seconds of CPU per start.
unexport PYTHONDONTWRITEBYTECODE
raw = $(if $(filter command environment override,$(firstword $(origin $(1)))),$(value $(1)),$($(1)))
shq = '$(subst ','\'',$(call raw,$(1)))'

.PHONY: all venv report demo lab test test-fast lint bench gpu-smoke browser screenshot clean

all: report

# The venv is rebuilt when pyproject.toml changes. uv installs the project into it from the indexes pip
# is configured with (tools/venv_install.py; pip where uv cannot be had); torch/torchvision are pinned in
# pyproject.toml. The Jupyter kernel is registered inside the venv for papermill.
$(VENV)/.installed: pyproject.toml tools/venv_install.py
	@test -x $(PY) || { echo "creating $(VENV) (first time: a minute or two, ~6 GB)"; $(PYTHON) -m venv $(VENV); }
	$(PY) tools/venv_install.py 2>&1 | grep --line-buffered -v '^Requirement already satisfied'; \
		test $${PIPESTATUS[0]} -eq 0 || { echo "error: installing into $(VENV) failed (see above); if the venv itself is broken: rm -rf $(VENV) && make venv"; exit 2; }
	$(PY) -m ipykernel install --sys-prefix --name hw3lib --display-name "Python (hw3lib)" >/dev/null
	@touch $@

venv: $(VENV)/.installed

# The demo world and its models (both cached: rebuilt only when missing or out of date). The world is a
# function of the files below; the models' fingerprint covers their data, settings and code (SHAPED_BY).
$(DEMO)/hw3_data/DEMO.json: hw3lib/demo/world.py hw3lib/demo/styles.py hw3lib/demo/phrasing.py | $(VENV)/.installed
	rm -rf $(DEMO)/hw3_data
	$(HW3) demo-data $(DEMO)/hw3_data --size $(DEMO_SIZE) --seed 0

demo: $(DEMO)/hw3_data/DEMO.json
	$(HW3) demo-models $(DEMO)/hw3_data $(DEMO)/models --size $(DEMO_SIZE) --seed 0

# The main job. With DATA/ASSETS pointing at a real hw3_data/ and a real manifest the demo is skipped
# and the report's own configs (configs/report_*.toml) are trained instead of the demo twins (the report
# tells a demo world by its DEMO.json). figures/ is replaced whole when every notebook has finished.
report: venv
	@if [ $(call shq,DATA) = "$(DEMO)/hw3_data" ]; then $(MAKE) --no-print-directory demo; fi
	TQDM_MININTERVAL=5 $(PY) -m hw3lib.app.report --data=$(call shq,DATA) --assets=$(call shq,ASSETS)

# JupyterLab on notebooks/ with the project's kernel ("Python (hw3lib)"), the demo built first.
# LAB_ARGS passes options through, e.g. make lab LAB_ARGS="--port 8890 --no-browser".
LAB_ARGS ?=
lab: venv
	@if [ $(call shq,DATA) = "$(DEMO)/hw3_data" ]; then $(MAKE) --no-print-directory demo; fi
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --ServerApp.ip=127.0.0.1 \
		--MappingKernelManager.default_kernel_name=hw3lib $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Debian's chromium + chromedriver for the headless-browser test of the attention viewer.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing chromium + chromium-driver (apt)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
		else echo "chromium not installed and no root apt: the browser test will be skipped"; fi; }

test: venv browser
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The tests that need no trained demo model, notebook or browser and are not slow (tests/conftest.py marks them).
test-fast: venv
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal \
		-m "not trained and not notebook and not slow" $(PYTEST_ARGS)

# Every benchmark, one at a time: build/bench/results.{json,md}, kept as docs/benchmarks.json, whose numbers
# docs/benchmarks.md quotes in its generated block (tests/test_docs.py keeps the two equal).
bench: venv demo
	$(PY) bench/run_all.py --out build/bench --record docs/benchmarks.json --doc docs/benchmarks.md

# The real-size GPU check (ViT-g + GPT-2 small + LoRA r=16, random weights, offline): run once on a CUDA
# machine and record its `name: value` lines with the card's name (README, "GPU smoke test").
gpu-smoke: venv
	HF_HUB_OFFLINE=1 $(PY) bench/gpu_smoke.py $(GPU_SMOKE_ARGS)

# The README's explorer screenshot (docs/explorer.png), taken in a real JupyterLab on the report's models:
# its best P2 variant (after make report) on the P3 images.
screenshot: venv browser
	@test -f figures/p2_summary.json || { echo "error: figures/p2_summary.json not found: run make report first"; exit 2; }
	HW3_EXPLORER_ASSETS="$$(realpath -- $(call shq,ASSETS))" HW3_EXPLORER_IMAGES="$$(realpath -- $(call shq,DATA))/p3_data/images" \
		HW3_EXPLORER_RUN=$(abspath build/runs/demo)/$$($(PY) -c "import json; print(json.load(open('figures/p2_summary.json'))['best']['variant'])") \
		HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_lab_browser.py
	cp build/screenshots/explorer.png docs/explorer.png

lint: venv
	$(VENV)/bin/ruff check hw3lib tests bench

clean:
	rm -rf build .pytest_cache
