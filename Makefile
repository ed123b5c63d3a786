# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and install
# what they need; nothing here needs network beyond the package registries.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install data test test-all test-slow demo lint bench clean

FMNIST := /usr/share/datasets/fashion-mnist

$(STAMP): requirements.txt requirements-dev.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Real Fashion-MNIST from Debian's package (root); elsewhere, say how to get it.
data:
	@test -d $(FMNIST) || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } \
	  || { echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' or pass --data-dir"; exit 1; }

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check cheapconv cli tests examples benchmarks

# Train a small teacher on real Fashion-MNIST, cheapen it, distil the student, print the before/after table.
demo: $(STAMP) data
	$(BIN)/python examples/demo.py --out demo-out

clean:
	rm -rf $(VENV) build *.egg-info demo-out
