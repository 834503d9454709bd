#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, GUI tests under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# pytest-xvfb starts a virtual display for the GUI tests by itself.
exec .venv/bin/python -m pytest "$@"
