# One-command set-up: every target installs what it needs into .venv first.
# torch==2.13.0 is installed on its own first: it is the CPU build that pip finds on this disk;
# an unpinned torch would pull a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

# the main job on the embedded MiniLM default model
demo: $(STAMP)
	$(VENV)/bin/nxmi compress --model default --plan 2:4:int8

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/step_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
