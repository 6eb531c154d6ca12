# Sourced by demo.sh and test.sh: one virtual environment, one way to install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch is pinned here (pyproject.toml states a range): on this kind of machine pip takes
# a CPU build from local disk, on a user's Linux machine the same pin gives a CUDA build.
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[${MEDRES3D_EXTRAS:-test}]"
