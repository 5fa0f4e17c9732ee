# buscador: `make demo` sets up .venv and runs the whole pipeline on drawn demo data;
# `make test` sets up .venv and runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WS ?= workspace

.PHONY: demo test lint clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	BUSCADOR_WORKSPACE=$(WS) $(PY) cli.py demo-data $(WS)/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -ra

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(WS) runs .pytest_cache
