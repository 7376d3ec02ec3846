# Two commands do all the set-up on a fresh machine (Python 3.11, registries reachable, no GPU):
#   make demo   creates .venv, installs mmedge with its training extras, runs `mmedge demo`
#   make test   the same environment, then the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mmedge-installed

.PHONY: demo test env clean-env

env: $(STAMP)

# torch==2.13.0 is pinned in pyproject.toml: here it resolves to the CPU wheel on disk
# (an unpinned torch pulls a multi-GB CUDA build).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,train,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mmedge demo $(ARGS)

# One pytest worker per core (the tests pin torch and onnxruntime to one thread each); a file's tests
# stay on one worker so its module fixtures (tiny trained runs, bundles) are built once.
TEST_WORKERS ?= auto

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

clean-env:
	rm -rf $(VENV)
