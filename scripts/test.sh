#!/usr/bin/env bash
# The README's test command: `bash scripts/test.sh [pytest arguments]`.
#
# Installs what the tests need beyond the Python packages of `pip install -e '.[test]'`, then runs pytest
# (offline; arguments are passed on, e.g. `bash scripts/test.sh tests/test_plugin_cli.py`). The one such need
# is the MLflow UI test's headless browser: Debian's `chromium` and `chromium-driver` packages, installed
# with apt-get when /usr/bin/chromium or /usr/bin/chromedriver is missing (as root, or through sudo).
# Where they cannot be installed (no apt-get, no root) the UI test is skipped with that reason, unless
# GENMETRICS_REQUIRE_UI=1 (CI sets it), which makes it fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    sudo=""
  elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    sudo=none
  fi
  if [ "$sudo" = none ]; then
    echo "scripts/test.sh: cannot install chromium + chromium-driver here (needs apt-get as root or sudo);" \
         "the MLflow UI test will be skipped" >&2
  else
    echo "scripts/test.sh: installing Debian's chromium + chromium-driver for the MLflow UI test" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
fi

exec python -m pytest -q "$@"
