#!/usr/bin/env bash
# One-step install: a virtualenv in .venv with shmlot (editable) and its test extras.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
"$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
