#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A venv with a given flashinfer-python release, for running the CPU suite against it:
#   bash .ci/flashinfer_env.sh 0.7.2.post1 .venv-fi072 && .venv-fi072/bin/python -m pytest -m "not compile_proof" tests
set -euo pipefail
cd "$(dirname "$0")/.."
version=$1
venv=$2
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "torch==2.13.0"
"$venv/bin/python" -m pip install -q -e ".[test]" "flashinfer-python==$version"
"$venv/bin/python" -c "import importlib.metadata as m; print('flashinfer-python', m.version('flashinfer-python'))"
