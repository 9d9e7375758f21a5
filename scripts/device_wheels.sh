#!/usr/bin/env bash
# The wheels a GPU machine without internet lacks for igsm (omegaconf and its parser runtime),
# downloaded into .whl/ for scripts/device_check.py, which puts pure-Python wheels on the path
# without installing them. Run here, with internet, from the repository root; then carry .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: -d .whl omegaconf==2.4.0 antlr4-python3-runtime==4.13.2
ls -l .whl
