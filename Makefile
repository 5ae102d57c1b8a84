# Two commands for a fresh machine (see README.md):
#   make demo   create .venv, install, run the demo on the embedded head phantom
#   make test   create .venv, install, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
OUT ?= demo_output

.PHONY: install demo test benchmarks clean

# torch is installed first and pinned: the project's machines carry the CPU
# wheel of 2.13.0, and any unpinned torch would fetch GB of CUDA packages.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/deepsim demo --out $(OUT)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -rs

benchmarks: $(VENV)/.installed
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
