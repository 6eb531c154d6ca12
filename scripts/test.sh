#!/usr/bin/env bash
# Set up .venv (if missing), install medres3d with its test extras, run the whole suite:
# lint, unit/integration tests and the notebooks (executed top to bottom by nbmake).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_install.sh"
.venv/bin/ruff check .
.venv/bin/python -m pytest --nbmake tests notebooks "$@"
