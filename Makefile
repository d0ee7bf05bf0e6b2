# Fresh-machine contract: `make demo` and `make test` do all set-up themselves.
# A local venv in .venv; torch==2.13.0 (the CPU wheel) is installed first when no torch is
# importable, so pip never pulls a multi-GB CUDA build. A python3 that already has torch
# keeps it: the venv then sees the system site-packages.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kmr-installed
PROFILE = $(if $(CI),ci,dev)

.PHONY: demo test lint typecheck pytest prove bench clean

$(STAMP): pyproject.toml
	@if python3 -c "import torch" 2>/dev/null; then \
	  echo "using the torch of $$(command -v python3)"; python3 -m venv --system-site-packages $(VENV); \
	else python3 -m venv $(VENV) && $(PY) -m pip install -q "torch==2.13.0"; fi
	$(PY) -m pip install -q -e ".[dev,models]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kmr demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict kmr_ref proofs/kmr_proofs

pytest: $(STAMP)
	HYPOTHESIS_PROFILE=$(PROFILE) $(VENV)/bin/pytest -q

test: lint typecheck pytest

prove: $(STAMP)
	$(VENV)/bin/kmr prove

bench: $(STAMP)
	$(VENV)/bin/kmr bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Code-level checks beyond `make test` (proofs/README.md, "Proof <-> code"): the large small-world
# bounds with every Z3 replay and an interrupt at every line; the code mutants of kmr_ref/core; and
# mutmut over kmr_ref/core in a scratch copy (/tmp/kmr-mut; two workers, nice; about 4 min here),
# which rewrites proofs/mutation_report.json (`kmr prove --mutation` prints it).
.PHONY: exhaustive mutation
exhaustive: $(STAMP)
	PYTHONPATH=proofs $(PY) -m kmr_proofs.exhaustive large --everywhere --sample 2000 --seed $$(date +%s)

mutation: $(STAMP)
	PYTHONPATH=proofs $(PY) -m kmr_proofs.code_mutants
	PYTHONPATH=proofs $(PY) -m kmr_proofs.mutation run --dest /tmp/kmr-mut --max-children 2
