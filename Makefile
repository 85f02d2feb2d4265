# The two set-up commands of the README. Both create/refresh .venv first (a no-op when current).
.PHONY: workbook test test-fast browser lab env bench

env:
	@./scripts/env.sh

# Main job: the whole workbook on the embedded default (synthetic benchmark + tiny CLIP).
workbook: env
	HF_HUB_OFFLINE=1 .venv/bin/ltc run --out runs/default

# The test suite (what CI runs): unit tests, notebook runs, the browser tests.
test: env browser
	HF_HUB_OFFLINE=1 .venv/bin/pytest -q

# The fast tier: everything but notebook runs, browser tests and opt-in slow tests.
test-fast: env
	HF_HUB_OFFLINE=1 .venv/bin/pytest -q -m "not notebook and not browser and not slow"

# Debian's chromium + chromium-driver for the browser tests (apt; a no-op when present).
browser:
	@./scripts/browser.sh

# Interactive: open the notebooks in JupyterLab.
# (--allow-root only when run as root, which Jupyter otherwise refuses)
lab: env
	HF_HUB_OFFLINE=1 .venv/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

bench: env
	HF_HUB_OFFLINE=1 .venv/bin/python -m ltcutils.bench all
