#!/usr/bin/env bash
# The test command of the README (expects the .venv from scripts/setup.sh to be active).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q "$@"
