#!/usr/bin/env bash
# A scratch virtualenv with the transformers a reference was written for, beside the project's own; the
# reference scripts run the authors' files in it. Usage: bash scripts/reference/make_venv.sh [DIR] [TRANSFORMERS]
# (default /tmp/tie-lite-reference-venv and 4.46.3, what the LLaDA and Dream authors used; Fast-dLLM pins
# 4.49.0 in its requirements.txt and imports einops; the dllm library, which carries the LLaDA2 and LLaDA-MoE
# files, pins 4.57.0 with accelerate 1.11.0; Fast-dLLM v2's v2/requirements.txt pins 4.53.1, which its hub
# modeling.py needs, with einops); prints the venv's python.
set -euo pipefail
dir="${1:-/tmp/tie-lite-reference-venv}"
version="${2:-4.46.3}"
if [ ! -x "$dir/bin/python" ]; then
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip
  "$dir/bin/pip" install -q torch==2.13.0
  if [ "$version" = "4.46.3" ]; then
    "$dir/bin/pip" install -q "transformers==4.46.3" "tokenizers<0.21" safetensors "accelerate<1.2" numpy
  elif [ "$version" = "4.53.1" ]; then
    "$dir/bin/pip" install -q "transformers==4.53.1" safetensors numpy einops
  elif [ "$version" = "4.52.4" ]; then
    # SDAR (scripts/reference/sdar.py): its evaluation/environment.yml pins these, the versions its modeling files
    # were written against
    "$dir/bin/pip" install -q "transformers==4.52.4" "tokenizers==0.21.4" "accelerate==1.10.1" "einops==0.8.1" safetensors numpy
  elif [ "$version" = "4.57.0" ]; then
    "$dir/bin/pip" install -q "transformers==4.57.0" "accelerate==1.11.0" safetensors numpy
  else
    "$dir/bin/pip" install -q "transformers==$version" safetensors "accelerate==0.34.2" numpy einops
  fi
fi
echo "$dir/bin/python"
