#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# One device call on an H100 (SM90): the rungs that need a GPU but no SM12x chip.
#   1. the emulated block-scaled MMA atom alone against its host reference (tests/cpp/emulated_atom_test.cu)
#   2. every shipped mm_fp4 tactic built for sm_90a with the emulated atom, run against the float64 reference
#      (tests/emulation), CUDA-graph capture/replay, formats on CUDA (tests/formats, cuda-marked)
#   3. compute-sanitizer memcheck on a subset
#   4. the compile sweep of the native menu for sm_120a/sm_121a (16 cores there), as the compile table
#   5. the benchmark in its reduced mode (correctness of the emulated path, bf16 baseline timing)
#   6. moe_sanitizer: memcheck of the fused MoE; bench_moe: the MoE benchmark in its reduced mode
# Needs, carried in .carry/: the apache-tvm-ffi cp312 wheel and cutlass.tar.xz (FlashInfer's CUTLASS 4.5.0
# include/ and tools/util/include). Logs go to $OUT. Usage: bash scripts/h100_run.sh [stage ...]
# All stages took 585 s in one 10-minute device call for 42 sweep configs; with more candidates, split it:
#   bash scripts/h100_run.sh atom emulation sanitizer   then   bash scripts/h100_run.sh sweep bench
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/h100-out}
mkdir -p "$OUT"
stages=${*:-"atom emulation sanitizer sweep bench"}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/*.whl || exit 1
mkdir -p /tmp/cutlass && tar -C /tmp/cutlass -xJf .carry/cutlass.tar.xz || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export FLASHINFER_SM12X_CUTLASS_DIR=/tmp/cutlass/cutlass
export FLASHINFER_SM12X_CACHE_DIR=$PWD/.jit-cache
mkdir -p "$FLASHINFER_SM12X_CACHE_DIR" && chmod 700 "$FLASHINFER_SM12X_CACHE_DIR"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
nvcc --version | tail -2

sweep_pid=""
if [[ $stages == *sweep* ]]; then  # CPU-only work: runs beside the GPU stages
  ( FLASHINFER_SM12X_QUIET=1 python3 scripts/compile_sweep.py --candidates --arch sm_120a,sm_121a --parallel 8 \
      --csv "$OUT/compile_sweep.csv" > "$OUT/compile_sweep.log" 2>&1 ) &
  sweep_pid=$!
fi

if [[ $stages == *atom* ]]; then
  echo "== [$(elapsed) s] emulated atom unit test"
  nvcc -std=c++17 --expt-relaxed-constexpr -O2 -I include -I /tmp/cutlass/cutlass/include \
    -gencode=arch=compute_90a,code=sm_90a -o /tmp/emulated_atom_test tests/cpp/emulated_atom_test.cu \
    && /tmp/emulated_atom_test 2>&1 | tee "$OUT/atom.log"
fi

if [[ $stages == *emulation* ]]; then
  echo "== [$(elapsed) s] emulation tests (their fixture builds the sm_90a modules, 8 at a time)"
  # EMULATION_K: a pytest -k expression to run part of the cases (e.g. one new tactic) within a call's budget.
  FLASHINFER_SM12X_PREBUILD_PARALLEL=8 FLASHINFER_SM12X_QUIET=1 FLASHINFER_SM12X_EMULATE=1 python3 -m pytest -q -ra -p no:cacheprovider tests \
    -m "emulation or cuda" ${EMULATION_K:+-k "$EMULATION_K"} 2>&1 | tee "$OUT/emulation.log" | tail -25
fi

if [[ -n $sweep_pid ]]; then
  echo "== [$(elapsed) s] waiting for the compile sweep"
  wait "$sweep_pid"
  tail -45 "$OUT/compile_sweep.log"
fi
if [[ " $stages " == *" sanitizer "* ]]; then
  echo "== [$(elapsed) s] compute-sanitizer memcheck (subset)"
  FLASHINFER_SM12X_EMULATE=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 scripts/sanitize_mm_fp4.py 2>&1 | tee "$OUT/sanitizer.log" | tail -8
fi

if [[ $stages == *moe_sanitizer* ]]; then
  echo "== [$(elapsed) s] compute-sanitizer memcheck (fused MoE)"
  FLASHINFER_SM12X_EMULATE=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
    python3 scripts/sanitize_moe.py 2>&1 | tee "$OUT/sanitizer_moe.log" | tail -10
fi

if [[ " $stages " == *" bench "* ]]; then
  echo "== [$(elapsed) s] benchmark (reduced)"
  FLASHINFER_SM12X_EMULATE=1 python3 benchmarks/bench_mm_fp4.py --quick --iters 20 \
    --csv "$OUT/bench_mm_fp4.csv" --png "$OUT/bench_mm_fp4.png" 2>&1 | tee "$OUT/bench.log" | tail -30
fi

if [[ $stages == *bench_moe* ]]; then
  echo "== [$(elapsed) s] MoE benchmark (reduced: emulated W4A4 correctness, torch bf16 baseline timing)"
  FLASHINFER_SM12X_EMULATE=1 python3 benchmarks/bench_moe.py --quick --iters 20 \
    --csv "$OUT/bench_moe.csv" --png "$OUT/bench_moe.png" 2>&1 | tee "$OUT/bench_moe.log" | tail -45
fi

echo "== done in $(elapsed) s"
