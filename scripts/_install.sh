# Sourced by demo.sh and test.sh: one virtual environment, one way to install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
echo "Installing medres3d and its dependencies into .venv (log: .venv/install.log)"
# pip's own log goes to a file and is shown only if the install fails, so that the demo's and the
# tests' output stay readable.
install() { .venv/bin/python -m pip install --quiet "$@" >>.venv/install.log 2>&1 || { cat .venv/install.log; exit 1; }; }
: >.venv/install.log
install --upgrade pip
# torch is pinned here (pyproject.toml states a range): on this kind of machine pip takes
# a CPU build from local disk, on a user's Linux machine the same pin gives a CUDA build.
install "torch==2.13.0"
install -e ".[${MEDRES3D_EXTRAS:-test}]"
