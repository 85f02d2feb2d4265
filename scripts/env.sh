#!/usr/bin/env bash
# Create or refresh the project-local virtual environment in .venv, idempotently.
# A second run with an unchanged pyproject.toml installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.ltc-installed"
want=$(cat pyproject.toml scripts/env.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# torch + torchvision first and pinned, so no resolver step can pull another multi-GB build.
"$VENV/bin/pip" install --disable-pip-version-check -q torch==2.14.1 torchvision==0.29.1
printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$VENV/constraints-torch.txt"
"$VENV/bin/pip" install --disable-pip-version-check -q -c "$VENV/constraints-torch.txt" -e '.[dev]'
echo "$want" > "$stamp"
echo "environment ready: $VENV"
