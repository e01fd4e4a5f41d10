# The two commands: `make demo` (the main job on built-in data) and `make test`.
# Both create .venv when missing and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.megaclass-installed
OUT ?= demo-output

.PHONY: demo test test-fast lint bench clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Install the CPU wheel of torch first: an open-ended torch requirement
	@# would otherwise pull a multi-GB CUDA build.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/megaclass demo --out $(OUT)

# What CI runs (.ci/run): ruff and mypy (make lint), then every test, the slow ones included.
test: $(STAMP) lint
	$(PY) -m pytest -q

# Every test not marked slow (pytest -m "not slow"): the quick loop while working.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# ruff on src and tests; mypy on src (its settings: [tool.mypy] in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(OUT) build src/*.egg-info
