# Common tasks. Variables: VENV (the environment `make install` creates, .venv), PY (its interpreter;
# every target runs it, not whatever `python` is first on PATH), ARTIFACTS (artifacts root), RUN (a
# run id), SWEEP_ARGS (extra `llc sweep` flags, e.g. SWEEP_ARGS="--backend=joblib --workers=2").
VENV ?= .venv
PY ?= $(VENV)/bin/python
LLC ?= $(PY) -m llc
MODAL ?= $(PY) -m modal
ARTIFACTS ?= artifacts
VOLUME ?= llc-artifacts
SWEEP_ARGS ?=

.PHONY: help install quick test test-slurm sweep plot-sweep slurm-start slurm-stop modal-deploy modal-ls modal-get clean

help:
	@echo "targets: install quick test test-slurm sweep plot-sweep slurm-start slurm-stop modal-deploy modal-ls modal-get clean"

# What the README installs: the package and its test extra (the remote backends, pytest, selenium).
# Not --all-extras: cuda12 and cuda13 are alternatives, and both plugins together crash JAX.
install:  ## the package with its test extra into $(VENV)
	@if command -v uv >/dev/null 2>&1; then UV_PROJECT_ENVIRONMENT=$(VENV) uv sync --extra test; \
	else { test -x $(PY) || python3 -m venv $(VENV); } && $(PY) -m pip install -e '.[test]'; fi

quick:  ## one run of the quick preset, figures included
	$(LLC) run --preset=quick

test:  ## the default (fast) test suite
	$(PY) -m pytest

test-slurm:  ## the SLURM tests on a local one-node cluster (needs root)
	scripts/slurm-local.sh start
	LLC_REQUIRE_SLURM=1 $(PY) -m pytest tests/test_slurm.py; status=$$?; scripts/slurm-local.sh stop; exit $$status

sweep:  ## the default sweep -> llc_sweep_results.csv
	$(LLC) sweep --artifacts=$(ARTIFACTS) $(SWEEP_ARGS)

plot-sweep:
	$(LLC) plot-sweep

slurm-start:
	scripts/slurm-local.sh start

slurm-stop:
	scripts/slurm-local.sh stop

modal-deploy:  ## deploy modal_app.py (optional: sweeps run the app ephemerally anyway)
	$(MODAL) deploy modal_app.py

modal-ls:  ## list run directories on the Modal volume (RUN=<id> lists one run)
	$(MODAL) volume ls $(VOLUME) /$(RUN)

modal-get:  ## download one run from the volume: make modal-get RUN=<run_id>
	@test -n "$(RUN)" || { echo "usage: make modal-get RUN=<run_id>"; exit 2; }
	mkdir -p $(ARTIFACTS)
	$(MODAL) volume get $(VOLUME) /$(RUN) $(ARTIFACTS)/

clean:  ## generated artifacts, sweep results and caches
	rm -rf $(ARTIFACTS)/* llc_sweep_results.csv llc_sweep_*.png .pytest_cache
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
