#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The W4A8 emulation's unit tests on an SM90 GPU (H100/H200): the emulated e4m3 x e2m1 MMA atom and the e2m1
# operand's smem path (byte TMA + emulated unpacking ldmatrix) against the native fragment. Exit code 0 = both pass.
# Usage: bash scripts/w4a8_unit_tests.sh [CUTLASS_DIR]   (CUTLASS_DIR holds include/ and tools/util/include;
# default $FLASHINFER_SM12X_CUTLASS_DIR). Logs go to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
cutlass=${1:-${FLASHINFER_SM12X_CUTLASS_DIR:?pass the CUTLASS directory}}
out=${OUT:-/tmp}
bin=$(mktemp -d)
status=0
for test in w4a8_atom_test w4a8_fragment_test; do
  echo "== $test"
  if nvcc -std=c++17 --expt-relaxed-constexpr -O2 -I include -I "$cutlass/include" -I "$cutlass/tools/util/include" \
      -gencode=arch=compute_90a,code=sm_90a -o "$bin/$test" "tests/cpp/$test.cu"; then
    "$bin/$test" 2>&1 | tee "$out/$test.log"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
  else
    status=1
  fi
done
echo "W4A8 unit tests: $([[ $status -eq 0 ]] && echo PASS || echo FAIL)"
exit $status
