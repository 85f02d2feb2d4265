# The two set-up commands of the README. Both create/refresh .venv first (a no-op when current).
.PHONY: workbook test lab env bench

env:
	@./scripts/env.sh

# Main job: the whole workbook on the embedded default (synthetic benchmark + tiny CLIP).
workbook: env
	HF_HUB_OFFLINE=1 .venv/bin/ltc run --out runs/default

# The test suite (what CI runs).
test: env
	HF_HUB_OFFLINE=1 .venv/bin/pytest -q

# Interactive: open the notebooks in JupyterLab.
# (--allow-root only when run as root, which Jupyter otherwise refuses)
lab: env
	HF_HUB_OFFLINE=1 .venv/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

bench: env
	HF_HUB_OFFLINE=1 .venv/bin/python -m ltcutils.bench all
