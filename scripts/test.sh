#!/usr/bin/env bash
# Set up a virtual environment with what the tests need, then run them. The pinned CPU torch goes
# first, from PyTorch's CPU index: PyPI's Linux torch (and a looser requirement with no torch installed)
# would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu  # the CPU build (README)
pip install -q -e '.[test]'
# The browser test needs Debian's chromium; install it where we may (CI runs as root), else it skips.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium could not be installed; the browser test will skip"
fi
python -m pytest -q "$@"
