#!/usr/bin/env bash
# Install the browser the browser tests drive: Debian's chromium and chromium-driver (apt).
# Browsers that download themselves do not work on machines without internet; these come from
# the distribution's package registry. Idempotent: does nothing when both are present.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
chromium --version
