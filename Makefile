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

.PHONY: all venv report demo test lint bench clean

all: report

# The venv is rebuilt when pyproject.toml changes. torch/torchvision come from this machine's local
# wheel cache (pinned in pyproject.toml); the Jupyter kernel is registered inside the venv for papermill.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name hw3lib --display-name "Python (hw3lib)" >/dev/null
	@touch $@

venv: $(VENV)/.installed

# The demo world and its models (both cached: rebuilt only when missing or out of date).
$(DEMO)/hw3_data/DEMO.json: | $(VENV)/.installed
	rm -rf $(DEMO)/hw3_data
	$(HW3) demo-data $(DEMO)/hw3_data --size $(DEMO_SIZE) --seed 0

demo: $(DEMO)/hw3_data/DEMO.json
	$(HW3) demo-models $(DEMO)/hw3_data $(DEMO)/models --size $(DEMO_SIZE) --seed 0

# The main job. With DATA/ASSETS pointing at a real hw3_data/ and a real manifest the demo is skipped.
report: venv
	@if [ "$(DATA)" = "$(DEMO)/hw3_data" ]; then $(MAKE) --no-print-directory demo; fi
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-0} $(PY) -m hw3lib.report --data $(DATA) --assets $(ASSETS)

test: venv
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check hw3lib tests bench

clean:
	rm -rf build .pytest_cache
