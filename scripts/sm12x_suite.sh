#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Rung 4 of the verification ladder in one command, on an SM120/SM121 GPU (RTX 5090, RTX PRO 6000 Blackwell,
# DGX Spark), from a checkout with `pip install -e ".[test]"` done:
#   tests      pytest -m "sm12x or cuda": every op natively against its float64 / torch references (the test
#              modules build what they load on first use, in parallel within the cores and memory)
#   sanitizer  compute-sanitizer memcheck of the mm_fp4, fused MoE (W4A4 and W4A8) and quantizer workloads, racecheck
#              of the MoE glue kernels (each workload's modules are built first, outside the sanitizer)
#   bench      the benchmarks: mm_fp4 against FlashInfer's FP4 backends (cuDNN among them), the GPT-OSS MoE layer
#              against FlashInfer's MoE and torch, the glue kernels and quantizers against the copy bandwidth of the
#              same run, host time per call, and W4A8 / W4A4 accuracy against unquantized activations
# Everything lands in benchmarks/results/sm12x_suite_<gpu>_<date>/: one log per step, the benchmarks' CSV and PNG,
# and summary.txt (the device, each step's exit status and time, the sanitizer error counts).
# Exit status: 0 when every step passed, 1 when one failed, 2 when there is no SM120/SM121 GPU here (nothing ran).
#   bash scripts/sm12x_suite.sh [tests] [sanitizer] [bench]     (default: all three, in that order)
#   QUICK=1      the benchmarks' reduced sets
#   DRY_RUN=1    print the steps and exit (no GPU needed)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stages=${*:-"tests sanitizer bench"}
for stage in $stages; do
  case $stage in tests|sanitizer|bench) ;; *) echo "unknown stage '$stage' (tests, sanitizer, bench)"; exit 2 ;; esac
done
quick=${QUICK:+--quick}

# name|command: the steps of each stage, in order.
steps=()
if [[ " $stages " == *" tests "* ]]; then
  steps+=("tests|$PY -m pytest -q -ra -m 'sm12x or cuda' tests")
fi
if [[ " $stages " == *" sanitizer "* ]]; then
  memcheck="compute-sanitizer --tool memcheck --error-exitcode 1"
  steps+=(
    "build_sanitizer_workloads|$PY scripts/sanitize_mm_fp4.py --build-only && $PY scripts/sanitize_moe.py --build-only && $PY scripts/sanitize_moe.py --act mxfp8 --build-only"
    "memcheck_mm_fp4|$memcheck $PY scripts/sanitize_mm_fp4.py"
    "memcheck_moe_w4a4|$memcheck $PY scripts/sanitize_moe.py"
    "memcheck_moe_w4a8|$memcheck $PY scripts/sanitize_moe.py --act mxfp8"
    "memcheck_quantize|$memcheck $PY scripts/sanitize_quantize.py"
    "racecheck_moe_glue|compute-sanitizer --tool racecheck --error-exitcode 1 $PY scripts/sanitize_moe.py --glue-only"
  )
fi
if [[ " $stages " == *" bench "* ]]; then
  steps+=(
    "bench_mm_fp4|$PY benchmarks/bench_mm_fp4.py $quick --csv \$RESULTS/bench_mm_fp4.csv --png \$RESULTS/bench_mm_fp4.png"
    "bench_moe|$PY benchmarks/bench_moe.py $quick --csv \$RESULTS/bench_moe.csv --png \$RESULTS/bench_moe.png"
    "bench_moe_glue|$PY benchmarks/bench_moe_glue.py --csv \$RESULTS/bench_moe_glue.csv --png \$RESULTS/bench_moe_glue.png"
    "bench_quantize|$PY benchmarks/bench_quantize.py $quick --csv \$RESULTS/bench_quantize.csv --png \$RESULTS/bench_quantize.png"
    "bench_host|$PY benchmarks/bench_host.py --csv \$RESULTS/bench_host.csv --png \$RESULTS/bench_host.png"
    "moe_accuracy|$PY benchmarks/moe_accuracy.py --csv \$RESULTS/moe_accuracy.csv"
  )
fi

if [[ -n "${DRY_RUN:-}" ]]; then
  for step in "${steps[@]}"; do echo "${step%%|*}: ${step#*|}"; done
  exit 0
fi

device=$($PY - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible to torch")
major, minor = torch.cuda.get_device_capability()
name = torch.cuda.get_device_name()
if major != 12:
    sys.exit(f"{name} is compute capability {major}.{minor}")
print(f"{name}|{major}.{minor}")
PY
) || { echo "this suite needs an SM120/SM121 GPU (see above); on an SM90 GPU, scripts/gpu_run.sh runs rung 3"; exit 2; }
gpu=${device%%|*}
slug=$(echo "$gpu" | tr 'A-Z ' 'a-z_' | tr -cd 'a-z0-9_-')
export RESULTS=$PWD/benchmarks/results/sm12x_suite_${slug}_$(date +%F)
mkdir -p "$RESULTS"
if [[ " $stages " == *" sanitizer "* ]] && ! command -v compute-sanitizer > /dev/null; then
  echo "compute-sanitizer is not on PATH (it ships with the CUDA toolkit: \$CUDA_HOME/bin): the sanitizer steps fail"
fi

summary=$RESULTS/summary.txt
{
  echo "flashinfer_sm12x native suite: $gpu (CC ${device#*|}), $(date -u +%FT%TZ)"
  echo "checkout $(git rev-parse --short HEAD 2>/dev/null || echo '?'), stages: $stages"
  $PY -m flashinfer_sm12x doctor 2>&1 | sed 's/^/  /'
} | tee "$summary"
failed=0
start=$(date +%s)
for step in "${steps[@]}"; do
  name=${step%%|*}
  command=${step#*|}
  echo "== [$(( $(date +%s) - start )) s] $name: $command"
  step_start=$(date +%s)
  bash -c "$command" > "$RESULTS/$name.log" 2>&1
  rc=$?
  tail -5 "$RESULTS/$name.log" | sed 's/^/   /'
  errors=$(grep -ho "ERROR SUMMARY: [0-9]* error" "$RESULTS/$name.log" | tail -1)
  line=$(printf "%-28s exit %-3s %6s s  %s" "$name" "$rc" "$(( $(date +%s) - step_start ))" "$errors")
  echo "$line" >> "$summary"
  [[ $rc -eq 0 ]] || failed=1
done
echo "results in $RESULTS"
echo
cat "$summary"
exit $failed
