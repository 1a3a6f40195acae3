# repalign — two commands do all set-up on a fresh machine:
#   make demo   train CL, NSCL, SCL and CE (+ chaos and noise floors) in lockstep on the procedural strokes data, print a summary + report
#   make test   run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.repalign-installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_ARGS ?=

.PHONY: demo test data install bench gpu-check docs clean help

help:
	@echo "make demo   - coupled CL/NSCL/SCL/CE run with chaos- and noise-floor controls on the procedural strokes data (100 classes; a few minutes on 2 CPU cores) + report"
	@echo "make test   - test suite"
	@echo "make bench  - benchmarks (writes benchmarks/results/)"
	@echo "make gpu-check - correctness + speed on one CUDA GPU, <= 8 min (writes benchmarks/results/gpu/<gpu>.json + .md)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 setuptools wheel
	$(BIN)/pip install -q --disable-pip-version-check --no-build-isolation -e '.[test]'
	@# submitit (extra `slurm`) is not in the offline registry: best effort, else its test is skipped
	$(BIN)/pip install -q --disable-pip-version-check --retries 0 --timeout 15 'submitit>=1.4' 2>/dev/null || \
	  echo "submitit not installable here: tests/test_sweep_slurm.py will be skipped"
	touch $(STAMP)

install: $(STAMP)

# Offline Fashion-MNIST: Debian's dataset-fashion-mnist puts the IDX files in $(FMNIST_DIR).
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -n "$$REPALIGN_DATA" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null)); \
	else \
	  echo "Fashion-MNIST not found in $(FMNIST_DIR): run 'sudo apt-get install dataset-fashion-mnist'" \
	       "or set REPALIGN_DATA to a folder holding fashion-mnist/*.gz"; exit 1; \
	fi

demo: $(STAMP) data
	$(BIN)/repalign train configs/demo.yaml --overwrite $(DEMO_ARGS)
	$(BIN)/repalign report runs/demo

# OMP_WAIT_POLICY=PASSIVE (unless set): idle OpenMP threads sleep, the tests' processes share the cores
test: $(STAMP) data
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BIN)/python -m pytest -p no:cacheprovider --durations=10

bench: $(STAMP) data
	$(BIN)/python benchmarks/bench_loss.py
	$(BIN)/python benchmarks/bench_coupled.py
	$(BIN)/python benchmarks/bench_metrics.py

# One CUDA GPU: pytest -m cuda, coupled-step speed, data wait, metrics; see benchmarks/gpu_check.py
# (GPU_CHECK_ARGS=--dry-run runs the same code on the CPU with tiny sizes).
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# API reference + guides into site/ (mkdocs.yml); --strict: a broken reference or link fails the build
docs: $(STAMP)
	$(BIN)/mkdocs build --strict -q

clean:
	rm -rf $(VENV) runs .pytest_cache site build dist
