# cellpipe: `make stages` runs the pipeline, `make test` runs the tests; both set up .venv first.
# Stages are chained by their output files under $(WORK), so a rerun only redoes what is stale;
# each stage also skips itself when its inputs and config block are unchanged (work/manifests/).
SHELL := /bin/bash
.DELETE_ON_ERROR:
.SUFFIXES:

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
WORK ?= work
DATA ?= $(WORK)/data
CONFIG ?= configs/cpu.yaml
CELLPIPE = $(BIN)/cellpipe --config $(CONFIG) work_dir=$(WORK) data_dir=$(DATA)

.PHONY: stages test lint venv clean
stages: $(WORK)/folds.csv

venv: $(INSTALLED)
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

# --- data -----------------------------------------------------------------------------------
ifeq ($(DATA),$(WORK)/data)
# the embedded synthetic dataset (or `prepare.source=kaggle` in the config)
$(DATA)/train.csv: $(CONFIG) | $(INSTALLED)
	$(CELLPIPE) prepare
else
# DATA=/path/to/competition: used as it is; downloaded there from Kaggle if it has no train.csv
$(DATA)/train.csv: | $(INSTALLED)
	$(CELLPIPE) prepare prepare.source=kaggle
endif

$(WORK)/coco/train.json: $(DATA)/train.csv $(CONFIG) | $(INSTALLED)
	$(CELLPIPE) convert

$(WORK)/folds.csv: $(WORK)/coco/train.json $(CONFIG) | $(INSTALLED)
	$(CELLPIPE) folds

# --- checks ---------------------------------------------------------------------------------
# pytest exits 5 when it collects no test: that fails here like any other error.
test: $(INSTALLED)
	$(BIN)/pytest -n 2 -q

lint: $(INSTALLED)
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/ruff format --check pipeline tests benchmarks

clean:
	rm -rf $(WORK)
