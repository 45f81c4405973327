#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A second environment with a real vLLM 0.33.0 for the plugin tests (tests/integrations/test_vllm_plugin.py).
# vLLM pins its own CUDA torch, so it cannot share the CPU-torch .venv. ~4 min, ~9.4 GB.
#   bash .ci/vllm_env.sh && .venv-vllm/bin/python -m pytest -q tests/integrations/test_vllm_plugin.py
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-vllm
.venv-vllm/bin/python -m pip install -q --upgrade pip
.venv-vllm/bin/python -m pip install -q -r .ci/vllm-0.33-requirements.txt
.venv-vllm/bin/python -m pip install -q --no-deps "vllm==0.33.0"
# This package (its entry point is what vLLM discovers) and what it and the tests import beyond vLLM's set.
.venv-vllm/bin/python -m pip install -q --no-deps -e .
.venv-vllm/bin/python -m pip install -q "apache-tvm-ffi>=0.1.11,<0.2" "jinja2>=3.1" "ninja>=1.11" "pytest>=8" "ml_dtypes>=0.5"
.venv-vllm/bin/python -c "import vllm; print('vllm', vllm.__version__)"
