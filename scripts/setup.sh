#!/usr/bin/env bash
# Creates .venv and installs edgekit with its pinned dependencies (torch 2.13.0 CPU wheel first,
# so nothing pulls a CUDA build). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
# No build isolation: an isolated build env would resolve its own torch (the CUDA wheel).
python -m pip install -q setuptools wheel
python -m pip install -q --no-build-isolation -e ".[test]"
