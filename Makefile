# One-command set-up: every target installs what it needs into .venv first.
# torch==2.13.0 is installed on its own first: it is the CPU build that pip finds on this disk;
# an unpinned torch would pull a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# a second, separate environment for tests/export/test_clients.py: a real client of `nxmi onnx` (Hugging Face
# Optimum's ONNX Runtime classes) without nxmiformer. Optimum ONNX pins transformers<4.58, which the main .venv
# (transformers 5) cannot hold; same torch first, for the same reason as above.
CLIENT_VENV ?= .venv-client
CLIENT_STAMP := $(CLIENT_VENV)/.installed-stamp

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(CLIENT_STAMP): Makefile
	test -x $(CLIENT_VENV)/bin/python || python3 -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CLIENT_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(CLIENT_VENV)/bin/python -m pip install --quiet 'optimum-onnx[onnxruntime]==0.1.0'
	touch $@

install: $(STAMP)

# the main job: a search on the embedded MiniLM default model (SST-2 from GLUE_DIR, the shared data beside the clone
# when present, else from the hub): 3 short trials, about 5 minutes on 2 cores (docs/measurements.md)
GLUE_DIR ?= $(abspath ../shared/data/glue)
SEARCH_OUT ?= runs/search-sst2
demo: $(STAMP)
	$(VENV)/bin/nxmi search --preset quick --task sst2 --target-ratio 0.875 \
		$(if $(wildcard $(GLUE_DIR)/sst2),--data-dir $(GLUE_DIR)) \
		$(if $(wildcard $(SEARCH_OUT)/search.json),--resume) --out $(SEARCH_OUT)

test: $(STAMP) $(CLIENT_STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/step_overhead.py
	# the CPU-sized subset; the full table (4 plans x 3 methods x 3 scale methods x 2 seeds) is
	# `bench/recovery.py --device cuda --jobs 12` on a GPU
	$(PY) bench/recovery.py --specs 2:4:int8,2:4:int4 --scales lsq --seeds 0

clean:
	rm -rf $(VENV) $(CLIENT_VENV) build *.egg-info
