# The two set-up commands of the README. Both create/refresh .venv first (a no-op when current).
.PHONY: workbook test test-fast browser lab env bench

env:
	@./scripts/env.sh

# Main job: the whole workbook on the embedded default (synthetic benchmark + tiny CLIP).
workbook: env
	HF_HUB_OFFLINE=1 .venv/bin/ltc run --out runs/default

# The test suite (what CI runs): unit tests, notebook runs, the browser tests. Two pytest
# processes (pytest-xdist), each test file whole on one of them, so a file's shared runs (the CI
# workbook run, one run per real layout) are made once.
test: env browser
	HF_HUB_OFFLINE=1 .venv/bin/pytest -q -n 2 --dist loadfile

# The fast tier: everything but notebook runs, browser tests, process-level integration tests
# (torchrun ranks, a wheel in a scratch venv, sweeps, a tmpfs), real-size towers (ViT-B-16 / L-14
# at 224 px) and opt-in slow tests; two processes as above.
test-fast: env
	HF_HUB_OFFLINE=1 .venv/bin/pytest -q -n 2 --dist loadfile -m "not notebook and not browser and not integration and not realsize and not slow"

# Debian's chromium + chromium-driver for the browser tests (apt; a no-op when present).
browser:
	@./scripts/browser.sh

# Interactive: JupyterLab at the project root. notebooks/ holds the sources (exercise solutions
# filled in); run there, they write to runs/default/ (their output_dir default), which is where
# `make workbook` writes its executed notebooks, figures and metrics, so both are side by side.
# `make lab MODE=learner` first writes the class's copies (exercise stubs) to runs/class/ and opens
# that folder; those copies write to runs/class/outputs/.
# (--allow-root only when run as root, which Jupyter otherwise refuses)
MODE ?= solution
lab: env
	$(if $(filter learner,$(MODE)),HF_HUB_OFFLINE=1 .venv/bin/python -m ltcutils.exercises --out runs/class &&) \
	HF_HUB_OFFLINE=1 .venv/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) \
	  $(if $(filter learner,$(MODE)),runs/class,.)

bench: env
	HF_HUB_OFFLINE=1 .venv/bin/python -m ltcutils.bench all
