#!/usr/bin/env bash
# Set up .venv (if missing), install medres3d with its test extras, run the whole suite:
# lint, the docstring examples, unit/integration tests and the notebooks (run top to bottom by nbmake).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_install.sh"
.venv/bin/ruff check .
.venv/bin/lint-imports  # the layers of docs/architecture.md
.venv/bin/python -m pytest --nbmake --doctest-modules medres3d tests notebooks "$@"
