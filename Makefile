# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and install
# what they need; nothing here needs network beyond the package registries.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all demo lint bench clean

$(STAMP): requirements.txt requirements-dev.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check cheapconv cli tests examples benchmarks

demo: $(STAMP)
	$(BIN)/cheapconv cheapen resnet34 --block 'G(4)' -o demo-out/resnet34-g4.pt

clean:
	rm -rf $(VENV) build *.egg-info demo-out
