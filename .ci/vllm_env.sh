#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# An environment with a real vLLM for the plugin tests (tests/integrations/test_vllm_plugin*.py).
# vLLM pins its own CUDA torch, so it cannot share the CPU-torch .venv.
#   bash .ci/vllm_env.sh [0.33|0.34] [VENV_DIR]     (defaults: 0.33, .venv-vllm033 / .venv-vllm034)
#   .venv-vllm034/bin/python -m pytest -q tests/integrations/test_vllm_plugin.py
# Each version's requirements are .ci/vllm-<version>-requirements.txt (vLLM's own, pins the index lacks replaced).
set -euo pipefail
cd "$(dirname "$0")/.."
series="${1:-0.33}"
case "$series" in
  0.33) vllm_version="0.33.0" ;;
  0.34) vllm_version="0.34.0" ;;
  *) echo "vllm_env.sh: unknown vLLM series '$series' (known: 0.33, 0.34)" >&2; exit 2 ;;
esac
venv="${2:-.venv-vllm${series//./}}"
export PIP_NO_CACHE_DIR=1  # nothing here reads a wheel twice; the cache would cost GBs
start=$(date +%s)
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r ".ci/vllm-${series}-requirements.txt"
"$venv/bin/python" -m pip install -q --no-deps "vllm==${vllm_version}"
# This package (its entry point is what vLLM discovers) and what it and the tests import beyond vLLM's set.
"$venv/bin/python" -m pip install -q --no-deps -e .
"$venv/bin/python" -m pip install -q "apache-tvm-ffi>=0.1.11,<0.2" "jinja2>=3.1" "ninja>=1.11" "pytest>=8" "ml_dtypes>=0.5"
"$venv/bin/python" -c "import vllm, flashinfer, torch; print('vllm', vllm.__version__, 'flashinfer', flashinfer.__version__, 'torch', torch.__version__)"
echo "vllm_env.sh: $venv (vLLM $vllm_version) built in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1)"
