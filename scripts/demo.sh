#!/usr/bin/env bash
# Set up .venv (if missing), install medres3d, run the end-to-end demo on embedded data.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_install.sh"
.venv/bin/medres3d demo "$@"
