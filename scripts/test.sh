#!/usr/bin/env bash
# The test command: set up, lint, type-check, run the default (fast) test suite.
# Extra arguments go to pytest (e.g. `-m slow` for the slow tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# the Prometheus integration test needs a real server: Debian's package (about 30 s)
if ! command -v prometheus >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing Debian's prometheus for the integration test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) ||
    echo "test: could not install prometheus; its test will be skipped"
fi
# the monitoring page's browser test drives Debian's headless Chromium (Playwright is
# a Python dependency; it downloads no browser: the test points it at /usr/bin/chromium)
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing Debian's chromium for the browser test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ||
    echo "test: could not install chromium; the browser test will be skipped"
fi
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
.venv/bin/python -m mypy
.venv/bin/python -m pytest "$@"
# CI has room for the slow tests (DDP training with 2 processes, ...): run them there
if [ "${CI:-}" = "true" ] && [ $# -eq 0 ]; then
  .venv/bin/python -m pytest -m slow
fi
