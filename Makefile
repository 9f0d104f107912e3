# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench dashboard clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## the main job: the trading demo on embedded defaults (~20 s)
	$(BIN)/tailguard demo

test: $(STAMP)  ## every test
	$(BIN)/python -m pytest -q

lint: $(STAMP)  ## ruff on everything, mypy (strict) on src/
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy src

bench: $(STAMP)  ## the in-process overhead benchmark
	$(BIN)/python benchmarks/inproc.py

dashboard: $(STAMP)  ## the live dashboard in headless Chromium under real traffic: runs/dashboard*.png
	$(BIN)/python -m pytest -q tests/integration/test_dashboard_browser.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache examples/*/models
