#!/usr/bin/env bash
# A scratch virtualenv with the transformers the model authors used (4.46), beside the project's own;
# the reference scripts run the authors' files in it. Usage: bash scripts/reference/make_venv.sh [DIR]
# (default /tmp/tie-lite-reference-venv); prints the venv's python.
set -euo pipefail
dir="${1:-/tmp/tie-lite-reference-venv}"
if [ ! -x "$dir/bin/python" ]; then
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip
  "$dir/bin/pip" install -q torch==2.13.0
  "$dir/bin/pip" install -q "transformers==4.46.3" "tokenizers<0.21" safetensors "accelerate<1.2" numpy
fi
echo "$dir/bin/python"
