# incseg: `make demo` and `make test` do every set-up step from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INCSEG := $(VENV)/bin/incseg
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

DEMO_DIR ?= demo
# Real data for the GPU-box targets (see README, "Real VOC on a GPU box").
VOC_ROOT ?= data/VOCdevkit/VOC2012
RUNS ?= runs

.PHONY: install test demo bench clean help

help:
	@echo "make demo   - generate toy data and run the whole pipeline on CPU (minutes)"
	@echo "make test   - run the test suite"
	@echo "make bench  - run the benchmarks under bench/ (JSON in bench/results/)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) INCSEG=$(INCSEG) bash scripts/demo.sh

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
