# incseg: `make demo` and `make test` do every set-up step from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INCSEG := $(VENV)/bin/incseg
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

DEMO_DIR ?= demo
# The demo's toy data, shared with the toy chains below (scripts/demo.sh).
DEMO_IMAGES ?= 3000
# Real data for the GPU-box targets (see docs/gpu-box.md).
VOC_ROOT ?= data/VOCdevkit/VOC2012
RUNS ?= runs
# WILSON's, MiB's and PLOP's ImageNet backbone: InPlace-ABN's ResNet-101 (LeakyReLU 0.01;
# docs/differences.md). Their step 0 loads it when the file is found where
# `--backbone-weights iabn` looks ($INCSEG_WEIGHTS, data/weights, torch's checkpoint cache), else
# torchvision's; ALIFE's step 0 always loads torchvision's, as ALIFE's code does.
IABN_FILE := resnet101_iabn_sync.pth.tar
IABN_WEIGHTS ?= $(firstword $(wildcard $(if $(INCSEG_WEIGHTS),$(INCSEG_WEIGHTS)/$(IABN_FILE)) data/weights/$(IABN_FILE) \
	$(or $(TORCH_HOME),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/torch)/hub/checkpoints/$(IABN_FILE)))
PAPER_WEIGHTS := $(if $(IABN_WEIGHTS),--backbone-weights $(IABN_WEIGHTS))

.PHONY: install test demo bench docs clean help

help:
	@echo "make demo   - generate toy data and run the whole pipeline on CPU (minutes)"
	@echo "make test   - run the test suite"
	@echo "make bench  - run the benchmarks under bench/ (JSON in bench/results/)"
	@echo "make docs   - regenerate docs/cli.md, the CLI reference, from the commands' declarations (scripts/gen-cli-docs.py)"
	@echo "make gpu-check - the first run on a GPU box: every stage on the GPU, <= 8 minutes (scripts/gpu-check.sh)"
	@echo "make voc-15-5, alife-voc-15-1, plop-voc-15-5, dkd-voc-15-1-m, ... - a paper's whole recipe on a GPU box (docs/reproducing.md)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Two pytest workers, one torch thread each: on 2 cores that is ~3x faster than one
# process with two threads (torch's threads spin when another process shares the cores).
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) DEMO_IMAGES=$(DEMO_IMAGES) INCSEG=$(INCSEG) bash scripts/demo.sh

# docs/cli.md from the Typer declarations of every command; tests/test_docs.py fails when it is stale.
docs: $(STAMP)
	$(PY) scripts/gen-cli-docs.py

# -- benchmarks (JSON in bench/results/) ------------------------------------------------------
bench: bench-data bench-speed bench-alife bench-wilson bench-methods

.PHONY: bench-data
bench-data: $(STAMP)
	$(PY) bench/data.py

# The speed paths against the code they replaced, side by side (bench/speed.py,
# docs/benchmarks.md): MiB and ALIFE iterations over CE, fit-rotations at 50 classes, loader bytes.
.PHONY: bench-speed bench-gpu
bench-speed: $(STAMP)
	$(PY) bench/speed.py --out bench/results/speed.json

# On a GPU box (<= 8 minutes on one H200): every stage at the VOC recipe, bf16/fp32,
# --compile, peak memory, FLOP utilisation, the loader against the model (bench/gpu.py).
bench-gpu: $(STAMP)
	$(PY) bench/gpu.py --out bench/results/gpu.json

# The first run on a GPU box (<= 8 minutes on one GPU): every stage of every method on the GPU
# with --device auto, the exported program on CUDA, --compile, then bench/gpu.py (docs/gpu-box.md).
.PHONY: gpu-check
gpu-check: $(STAMP)
	INCSEG=$(INCSEG) PYTHON=$(PY) bash scripts/gpu-check.sh

# Every method side by side on toy 10-10 (and 10-5-5) from one step-0 run; <= 20 min on 2 cores.
# Writes bench/results/methods.{json,md,png}; fails if ft does not forget or a method learns nothing.
.PHONY: bench-methods
bench-methods: $(STAMP)
	$(PY) bench/methods.py --out-dir bench/results

# -- WILSON (docs/methods/wilson.md) ------------------------------------------------------------
# Paper recipe on a GPU box: step 0 with one-hot BCE, the weakly step from image labels,
# evaluation (fp16 + GradScaler on CUDA, as WILSON's code; --amp bf16 is the speed option).
# Splits: the shipped ones for VOC; prepare-splits writes COCO-to-VOC's once.
COCO_ROOT ?= data/coco
WILSON_VOC := voc-15-5 voc-15-5-ov voc-10-10 voc-10-10-ov
.PHONY: $(WILSON_VOC) coco-voc wilson-toy wilson-toy-10-10 wilson-toy-10-5-5 bench-wilson

$(WILSON_VOC): voc-%: $(STAMP)
	$(INCSEG) train-base --data $(VOC_ROOT) --task $* --loss bce $(PAPER_WEIGHTS) --out $(RUNS)/voc/$*/step0-bce
	$(INCSEG) train-step --prev $(RUNS)/voc/$*/step0-bce --data $(VOC_ROOT) --method wilson \
		--out $(RUNS)/voc/$*/step1-wilson
	$(INCSEG) evaluate $(RUNS)/voc/$*/step1-wilson --data $(VOC_ROOT) --out $(RUNS)/voc/$*/step1-wilson-eval.json

coco-voc: $(STAMP)
	test -f splits/coco/coco-voc/task.json || $(INCSEG) prepare-splits --dataset coco --task coco-voc \
		--data $(COCO_ROOT) --voc-data $(VOC_ROOT) --out splits
	$(INCSEG) train-base --dataset coco --data $(COCO_ROOT) --task coco-voc --loss bce $(PAPER_WEIGHTS) \
		--out $(RUNS)/coco/coco-voc/step0-bce
	$(INCSEG) train-step --prev $(RUNS)/coco/coco-voc/step0-bce --data $(VOC_ROOT) --method wilson \
		--out $(RUNS)/coco/coco-voc/step1-wilson
	$(INCSEG) evaluate $(RUNS)/coco/coco-voc/step1-wilson --data $(VOC_ROOT) \
		--out $(RUNS)/coco/coco-voc/step1-wilson-eval.json

# Toy chain on CPU, from the demo's toy data and its step-0 run (trained here if missing):
# 10-10-ov in one step, 10-5-5-ov in two. WILSON_TOY_EPOCHS per step (the preset's is 6).
WILSON_TOY_EPOCHS ?= 3
TOY_BASE ?= $(DEMO_DIR)/runs/10-10-ov/step0
WILSON_TOY := INCSEG_SPLITS=$(DEMO_DIR)/splits $(INCSEG)
WILSON_TOY_STEP := --data $(DEMO_DIR)/toy --method wilson --preset toy --epochs $(WILSON_TOY_EPOCHS)

wilson-toy: wilson-toy-10-10 wilson-toy-10-5-5

# The demo's toy data, splits and step-0 run, shared by the toy chains of every method.
.PHONY: toy-data
toy-data: $(STAMP)
	$(INCSEG) make-toy-data --out $(DEMO_DIR)/toy --images $(DEMO_IMAGES) --val-images 200 --size 64 --seed 0
	for t in 10-10-ov 10-5-5-ov; do test -f $(DEMO_DIR)/splits/voc/$$t/task.json || \
		$(INCSEG) prepare-splits --dataset voc --data $(DEMO_DIR)/toy --task $$t --out $(DEMO_DIR)/splits; done
	test -f $(TOY_BASE)/checkpoint.pt || $(WILSON_TOY) train-base --data $(DEMO_DIR)/toy \
		--task 10-10-ov --preset toy --out $(TOY_BASE)

wilson-toy-10-10: toy-data
	$(WILSON_TOY) train-step --prev $(TOY_BASE) $(WILSON_TOY_STEP) --out $(DEMO_DIR)/chains/wilson-10-10-ov/step1
	$(INCSEG) evaluate $(DEMO_DIR)/chains/wilson-10-10-ov/step1 --data $(DEMO_DIR)/toy --eval-size 64 \
		--out $(DEMO_DIR)/chains/wilson-10-10-ov.json

wilson-toy-10-5-5: toy-data
	$(WILSON_TOY) train-step --prev $(TOY_BASE) --task 10-5-5-ov $(WILSON_TOY_STEP) \
		--out $(DEMO_DIR)/chains/wilson-10-5-5-ov/step1
	$(WILSON_TOY) train-step --prev $(DEMO_DIR)/chains/wilson-10-5-5-ov/step1 $(WILSON_TOY_STEP) \
		--out $(DEMO_DIR)/chains/wilson-10-5-5-ov/step2
	$(INCSEG) evaluate $(DEMO_DIR)/chains/wilson-10-5-5-ov/step2 --data $(DEMO_DIR)/toy --eval-size 64 \
		--out $(DEMO_DIR)/chains/wilson-10-5-5-ov.json

# WILSON iteration time vs plain CE on the toy model, and PAMR's share (bench/wilson.py).
bench-wilson: $(STAMP)
	$(PY) bench/wilson.py --out bench/results/wilson.json
	$(PY) bench/wilson.py --backbone resnet101 --crop 128 --batch 2 --threads 1 --warmup 1 --iterations 3 \
		--target 1.4 --out bench/results/wilson-resnet101.json

# -- ALIFE (docs/methods/alife.md) --------------------------------------------------------------
# $(call alife_chain,TASK,DATA,RUNDIR,STEPS,BASE,OPTIONS,EVAL_SIZE,STEP1_OPTIONS): ALIFE-M at every stage
# (Step 1, extract-features appending the previous rotated bank, fit-rotations, Step 3) and
# ALIFE (Step 1 only, chained on its own), then both evaluated. Per-task settings (epochs,
# λ, λ_ROT) are the defaults of the commands (ALIFE's configs). Every command skips itself when
# its output is complete and resumes an interrupted one, so rerunning the target continues.
# OPTIONS go to every training command, STEP1_OPTIONS to train-step only.
alife_chain = set -e; I="$(INCSEG)"; D=$(2); R=$(3); O="$(6)"; S="$(6) $(8)"; prev=$(5); plain=$(5); bank=; \
	for t in $$(seq 1 $(4)); do \
	  s1=$$R/step$$t-alife; [ $$t = 1 ] || s1=$$R/step$$t-alife-m-s1; \
	  [ $$t = 1 ] || $$I train-step --prev $$plain --task $(1) --data $$D --method alife $$S --out $$R/step$$t-alife; \
	  $$I train-step --prev $$prev --task $(1) --data $$D --method alife $$S --out $$s1; \
	  $$I extract-features --prev $$prev --data $$D $$O $${bank:+--append $$bank} --out $$R/bank$$t.h5; \
	  $$I fit-rotations --bank $$R/bank$$t.h5 --prev $$prev --current $$s1 --data $$D $$O \
	    --out $$R/rot$$t.pt --out-bank $$R/bank$$t-rotated.h5; \
	  $$I finetune-classifier --current $$s1 --prev $$prev --bank $$R/bank$$t-rotated.h5 --data $$D $$O \
	    --out $$R/step$$t-alife-m; \
	  prev=$$R/step$$t-alife-m; plain=$$R/step$$t-alife; bank=$$R/bank$$t-rotated.h5; \
	done; \
	$$I evaluate $$plain --data $$D --eval-size $(7) --out $$R/alife.json; \
	$$I evaluate $$prev --data $$D --eval-size $(7) --out $$R/alife-m.json

ALIFE_VOC := alife-voc-15-5 alife-voc-15-1 alife-voc-19-1
ALIFE_TOY_EPOCHS ?= 6
ALIFE_TOY_S1 := --epochs $(ALIFE_TOY_EPOCHS)
.PHONY: $(ALIFE_VOC) alife-toy alife-toy-10-10 alife-toy-10-5-5 bench-alife

# Paper settings on a GPU box (ResNet-101, VOC, overlapped): step 0 then every stage. Step 0
# upsamples its logits with align_corners=True as ALIFE's model does, and every later stage
# inherits it from the checkpoint; docs/reproducing.md.
alife-voc-15-5 alife-voc-19-1: alife-voc-%: $(STAMP)
	$(INCSEG) train-base --data $(VOC_ROOT) --task $*-ov --align-corners --out $(RUNS)/voc/$*-ov/step0
	$(call alife_chain,$*-ov,$(VOC_ROOT),$(RUNS)/voc/$*-ov,1,$(RUNS)/voc/$*-ov/step0,,512)

alife-voc-15-1: $(STAMP)
	$(INCSEG) train-base --data $(VOC_ROOT) --task 15-1-ov --align-corners --out $(RUNS)/voc/15-1-ov/step0
	$(call alife_chain,15-1-ov,$(VOC_ROOT),$(RUNS)/voc/15-1-ov,5,$(RUNS)/voc/15-1-ov/step0,,512)

# Toy chains on CPU from the demo's toy data and step-0 run (toy-data makes them if
# missing): 10-10-ov in one stage, ALIFE-M over two stages on 10-5-5-ov. The epochs of the
# Step-1 trainings are ALIFE_TOY_EPOCHS; the other stages use their toy defaults.
alife-toy: alife-toy-10-10 alife-toy-10-5-5

alife-toy-10-10: toy-data
	INCSEG_SPLITS=$(DEMO_DIR)/splits; export INCSEG_SPLITS; \
	$(call alife_chain,10-10-ov,$(DEMO_DIR)/toy,$(DEMO_DIR)/chains/alife-10-10-ov,1,$(TOY_BASE),--preset toy,64,$(ALIFE_TOY_S1))

alife-toy-10-5-5: toy-data
	INCSEG_SPLITS=$(DEMO_DIR)/splits; export INCSEG_SPLITS; \
	$(call alife_chain,10-5-5-ov,$(DEMO_DIR)/toy,$(DEMO_DIR)/chains/alife-10-5-5-ov,2,$(TOY_BASE),--preset toy,64,$(ALIFE_TOY_S1))

# Cayley batched solve vs per-class inverses, fit-rotations iteration, bank size, Step-1
# iteration vs plain CE (bench/alife.py); adds the demo's bank when there is one.
bench-alife: $(STAMP)
	$(PY) bench/alife.py --out bench/results/alife.json \
		$(if $(wildcard $(DEMO_DIR)/runs/10-10-ov/bank0.h5),--bank $(DEMO_DIR)/runs/10-10-ov/bank0.h5)

# -- PLOP (docs/methods/baselines.md) -------------------------------------------------------------
# PLOP's scripts/voc/plop_*.sh on a GPU box (ResNet-101, VOC, overlapped): step 0 with CE (the VOC preset: 30
# epochs, lr 0.01, SGD Nesterov, batch 24), then every step with --method plop (30 epochs, lr 1e-3,
# λ maps / logits 0.01 / 0.0005, threshold floor 0.001: its defaults), then evaluate the last
# step. Step 0 upsamples without align_corners, as PLOP's model (the alife-voc-* step 0 differs).
PLOP_VOC := plop-voc-15-5 plop-voc-15-1 plop-voc-19-1
.PHONY: $(PLOP_VOC)
# $(call plop_chain,TASK,STEPS): every command skips or resumes itself on a rerun.
plop_chain = set -e; R=$(RUNS)/voc/$(1); prev=$$R/step0-ce; \
	$(INCSEG) train-base --data $(VOC_ROOT) --task $(1) $(PAPER_WEIGHTS) --out $$prev; \
	for t in $$(seq 1 $(2)); do \
	  $(INCSEG) train-step --prev $$prev --data $(VOC_ROOT) --method plop --out $$R/step$$t-plop; \
	  prev=$$R/step$$t-plop; \
	done; \
	$(INCSEG) evaluate $$prev --data $(VOC_ROOT) --out $$R/plop.json

plop-voc-15-5 plop-voc-19-1: plop-voc-%: $(STAMP)
	$(call plop_chain,$*-ov,1)

plop-voc-15-1: $(STAMP)
	$(call plop_chain,15-1-ov,5)

# DKD and DKD-M (cvlab-yonsei/DKD scripts/voc/overlapped): step 0 with --loss dkd (60 epochs,
# batch 32, lr 1e-3, --pos-weight 2, torchvision's dilation), then every step with the method's
# recipe (60 epochs, lr 1e-4); dkd-m adds its 100-image replay memory. docs/methods/dkd.md.
DKD_VOC := dkd-voc-15-5 dkd-voc-19-1 dkd-voc-15-1 dkd-voc-10-1
.PHONY: $(DKD_VOC) $(DKD_VOC:%=%-m)
# $(call dkd_chain,TASK,STEPS,METHOD)
dkd_chain = set -e; R=$(RUNS)/voc/$(1); prev=$$R/step0-dkd; \
	$(INCSEG) train-base --data $(VOC_ROOT) --task $(1) --loss dkd --backbone-weights imagenet --out $$prev; \
	for t in $$(seq 1 $(2)); do \
	  $(INCSEG) train-step --prev $$prev --data $(VOC_ROOT) --method $(3) --out $$R/step$$t-$(3); \
	  prev=$$R/step$$t-$(3); \
	done; \
	$(INCSEG) evaluate $$prev --data $(VOC_ROOT) --out $$R/$(3).json

dkd-voc-15-5 dkd-voc-19-1: dkd-voc-%: $(STAMP)
	$(call dkd_chain,$*-ov,1,dkd)
dkd-voc-15-5-m dkd-voc-19-1-m: dkd-voc-%-m: $(STAMP)
	$(call dkd_chain,$*-ov,1,dkd-m)
dkd-voc-15-1: $(STAMP)
	$(call dkd_chain,15-1-ov,5,dkd)
dkd-voc-15-1-m: $(STAMP)
	$(call dkd_chain,15-1-ov,5,dkd-m)
dkd-voc-10-1: $(STAMP)
	$(call dkd_chain,10-1-ov,10,dkd)
dkd-voc-10-1-m: $(STAMP)
	$(call dkd_chain,10-1-ov,10,dkd-m)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
