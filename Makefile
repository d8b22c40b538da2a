# The two commands of README.md. Each sets up what it needs (scripts/setup.sh) first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test
setup:
	@bash scripts/setup.sh

# The main job: a real continual-learning run on Split MNIST (class-IL), with its table and run folder.
run: setup
	$(BIN)/lifelong run --config configs/split-mnist.yaml --strategy er

# The test suite.
test: setup
	$(BIN)/python -m pytest
