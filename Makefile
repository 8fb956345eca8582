# make run  : set everything up, then search spaces/demo.yaml offline for a few minutes
# make test : set everything up, then run the test suite (make test-fast: the fast lane, no real study)
# Both are idempotent: a second call reuses .venv and only reinstalls when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUDGET ?= 5m
STUDY  ?= demo
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data run test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.14.1 lies on the development machines' disk
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q --no-deps foolbox==3.3.4   # sample ImageNet photos for a test
	$(BIN)/python -m pip install -q -e ".[dev,offline,db,dashboard,onnx]"
	touch $(STAMP)

data:
	@if [ -f $(FASHION_MNIST) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	else echo "note: Fashion-MNIST is missing; install the Debian package dataset-fashion-mnist (tests that need it skip)"; fi

run: setup data
	$(BIN)/tdmr-search run --study $(STUDY) --space spaces/demo.yaml --budget $(BUDGET) --reevaluate 2 --folds 2

test: setup data
	$(BIN)/python -m pytest -q

test-fast: setup data   # unit and contract tests, no real study
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup data
	$(BIN)/python benchmarks/trial_cost.py
	$(BIN)/python benchmarks/pruning.py
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache
