#!/usr/bin/env bash
# The wheel a GPU machine without internet lacks for igsm (omegaconf; 2.4 vendors its parser runtime),
# downloaded into .whl/ for scripts/device_check.py, which puts pure-Python wheels on the path
# without installing them. Run here, with internet, from the repository root; then carry .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: -d .whl omegaconf==2.4.0
ls -l .whl
