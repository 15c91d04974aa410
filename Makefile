# The README's commands. Each target builds its own virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-slow test-gpu lint demo bench screenshot clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The exact torch pin keeps pip on the local CPU wheel instead of a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'   # with napari, magicgui and PyQt6 for the plugin's tests
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/densepred demo --out demo

# ruff and the import-linter contracts (pyproject.toml), then the tests
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/lint-imports

# src's bytecode first: where PYTHONDONTWRITEBYTECODE is set, each of the ~50 densepred processes the
# tests start would compile every module again (0.4-0.5 s of each one's start)
test: lint
	$(PY) -m compileall -q src
	$(PY) -m pytest -q -n auto --dist worksteal -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# on a machine with an NVIDIA GPU, where the venv's torch is a CUDA build (PyPI's torch==2.13.0
# for Linux is one): every engine and precision, the file pipeline, training, a model from elsewhere
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m cuda -rs

bench: $(STAMP)
	$(PY) benchmarks/dense_speed.py

# the README's napari screenshot; needs Xvfb (apt-get install xvfb) where there is no display
screenshot: $(STAMP)
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) docs/napari_widget_screenshot.py docs/napari_widget.png

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis .import_linter_cache .ruff_cache
