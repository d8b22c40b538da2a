# The two commands of README.md. Each sets up what it needs (scripts/setup.sh) first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test bench
setup:
	@bash scripts/setup.sh

# The main job: a real continual-learning run on Split MNIST (class-IL), with its table and run folder.
run: setup
	$(BIN)/lifelong run --config configs/split-mnist.yaml --strategy er

# The test suite.
test: setup
	$(BIN)/python -m pytest

# The speed benchmarks (overhead against plain PyTorch, long stream, evaluation cost): tables on
# stdout, JSON and a combined README in benchmarks/results/. DEVICE=cuda runs them on the GPU;
# BENCH_ARGS=--quick for smaller settings.
DEVICE ?= cpu
bench: setup
	$(BIN)/python benchmarks/run_all.py --device $(DEVICE) $(BENCH_ARGS)
