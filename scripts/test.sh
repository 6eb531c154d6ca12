#!/usr/bin/env bash
# Set up .venv (if missing), install medres3d with its test extras, run the whole suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_install.sh"
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
