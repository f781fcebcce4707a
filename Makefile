# Two commands matter: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is installed first, so the loose `torch>=2.3` in pyproject.toml
# is already satisfied and pip never pulls a multi-GB CUDA build. GPU machines override:
#   make install TORCH_SPEC="torch==2.13.0"  (after pointing pip at a CUDA index)
TORCH_SPEC ?= torch==2.13.0
# geotessera's reader of zone stores, installed over the pip-resolvable one for the dev tests.
GEOTESSERA_READER ?= 0.11.0

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	# geotessera 0.11.0's zone-store reader, for tests/test_mosaic.py (declares Python >= 3.12, imports on 3.11)
	$(BIN)/pip install -q --no-deps --ignore-requires-python "geotessera==$(GEOTESSERA_READER)"
	touch $@

demo: install
	$(BIN)/tessera-pipeline demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/tessera-pipeline bench --model v1.1 --size 64x64

clean:
	rm -rf $(VENV) demo-output .pytest_cache
