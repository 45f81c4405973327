#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Release check: build the wheel and the sdist, check that both carry the kernel sources (include/, csrc/, jit/),
# install the wheel NON-editable into a fresh venv and, from outside the checkout, run doctor, one compile proof
# (the MMA probe for sm_121a) and a prebuild of one module.
#
# Uses the active Python environment (it must have setuptools >= 77 and the runtime dependencies installed, as
# CI's .venv does). The fresh venv reuses those already-resolved dependencies through a .pth line instead of
# downloading them again; WHEEL_CHECK_FULL_INSTALL=1 installs them from the package index instead (slow: torch).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
py=${PYTHON:-python}

echo "== build wheel and sdist"
builder=$py
if ! "$py" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" 2>/dev/null; then
  # This environment's setuptools cannot read pyproject.toml's license field: build with a current one.
  "$py" -m venv "$work/build-env"
  builder="$work/build-env/bin/python"
  "$builder" -m pip install -q "setuptools>=77" wheel
fi
"$builder" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" .
"$builder" -c "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])" "$work/dist" \
  >/dev/null
"$py" - "$work/dist" <<'PY'
import sys, tarfile, zipfile
from pathlib import Path

dist = Path(sys.argv[1])
wheel = next(dist.glob("*.whl"))
sdist = next(dist.glob("*.tar.gz"))
in_wheel = set(zipfile.ZipFile(wheel).namelist())
in_sdist = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
needed = [p.as_posix() for folder in ("include", "csrc", "jit") for p in Path(folder).rglob("*") if p.is_file()]
missing_wheel = [p for p in needed if f"flashinfer_sm12x/data/{p}" not in in_wheel]
missing_sdist = [p for p in needed if p not in in_sdist]
if missing_wheel or missing_sdist:
    sys.exit(f"missing from the wheel: {missing_wheel}\nmissing from the sdist: {missing_sdist}")
print(f"{wheel.name}: {len(needed)} kernel source files in the wheel and in {sdist.name}")
PY

echo "== install the wheel into a fresh venv"
"$py" -m venv "$work/venv"
fresh="$work/venv/bin/python"
if [ "${WHEEL_CHECK_FULL_INSTALL:-0}" = "1" ]; then
  "$fresh" -m pip install -q "$work"/dist/*.whl
else
  deps=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  fresh_site=$("$fresh" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # A plain path line: the dependencies become importable, but .pth files there (an editable install of this
  # checkout) are not run, so the package itself comes only from the wheel.
  echo "$deps" > "$fresh_site/zz_resolved_dependencies.pth"
  "$fresh" -m pip install -q --no-deps --no-index "$work"/dist/*.whl
fi

# Run from outside the checkout so nothing can import it by accident.
cd "$work"
cache="$work/jit-cache"
mkdir -m 700 "$cache"
export FLASHINFER_SM12X_CACHE_DIR="$cache"
"$fresh" - "$work/venv" <<'PY'
import sys

import flashinfer_sm12x
from flashinfer_sm12x import paths

assert flashinfer_sm12x.__file__.startswith(sys.argv[1]), f"imported {flashinfer_sm12x.__file__}, not the wheel"
assert paths.layout() == "installed", paths.source_base()
print(f"installed package {flashinfer_sm12x.__file__}, kernel sources from {paths.source_base()}")
PY

echo "== doctor (installed)"
"$work/venv/bin/flashinfer-sm12x" doctor

echo "== compile proof: MMA probe for sm_121a (installed)"
"$fresh" - <<'PY'
from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.jit.compile_proof import compile_proof
from flashinfer_sm12x.ops.mma_probe import mma_probe_spec

report = compile_proof(mma_probe_spec(parse_target("sm_121a"), 1))
kernel = report.require(instruction="OMMA.SF.16864.F32.E2M1.E2M1.E8", no_spills=True)
print(f"{report.module}: OMMA.SF x{kernel.count('OMMA.SF')}, no spills")
PY

echo "== prebuild one module (installed)"
"$work/venv/bin/flashinfer-sm12x" prebuild --arch sm_121a --ops mma_probe --limit 1
"$work/venv/bin/flashinfer-sm12x" cache list | grep -q "mma_probe_mxfp4_k64_sm_121a" || {
  echo "prebuilt module not in the cache listing"; exit 1; }
echo "wheel check passed in $(( $(date +%s) - start )) s (checkout: $repo)"
