#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The rungs that need a GPU but no SM12x chip, on an SM90 machine (H100/H200), in one or two device calls:
#   atom       the emulated block-scaled MMA atoms alone against their host references (tests/cpp/*_test.cu)
#   prebuild   the sm_90a modules of the families in PREBUILD_OPS, in parallel (the tests then only load them); or
#              PREBUILD_DEPLOYMENTS="model:act:max_tokens ...": exactly what those fused_moe deployments load
#   emulation  pytest -m "emulation or cuda": every GEMM candidate through the emulated atom against float64
#              references, the fused MoE end to end, CUDA graphs; the native SM90 kernels (quantizers, MoE glue)
#              bit-exact against the torch oracle
#   sanitizer  compute-sanitizer memcheck of mm_fp4; memcheck and racecheck of the fused MoE and the glue kernels
#              (SANITIZE_GLUE_ONLY=1: the glue kernels alone under memcheck, racecheck, initcheck and synccheck;
#              SANITIZE_MATRIX=1: every family -- quantize, glue, fused_moe W4A4 / W4A8 with their grouped GEMMs,
#              mm_fp4 in each format -- under all four tools, side by side; sanitizer_matrix.txt sums them up)
#   sweep      the compile sweep of every family for sm_120a/sm_121a (CPU work, beside the GPU stages)
#   w4a8       W4A8's closing runs (not in the default list): its modules built in parallel, then side by side
#              compute-sanitizer memcheck of the dense W4A8 GEMM (every shipped tactic) and of the W4A8 grouped GEMM
#              + fused_moe(act="mxfp8") + cutlass_fused_moe, and benchmarks/moe_accuracy.py (W4A4 vs W4A8 against
#              unquantized activations); w4a8_summary.txt lists each run's exit status and last lines
#   bench      benchmarks (BENCHES: a list of scripts to run instead): host time per call, quantizers and MoE glue (native H200 kernels, against the copy
#              bandwidth measured in the same run), reduced mm_fp4 / MoE benchmarks (emulated: correctness only)
#   oldbuild   the previous checkout's modules for `bits` and `stress` (.carry/base: a `git archive` of it), built in the
#              background into its own cache while the later stages run
#   bits       scripts/moe_bits.py: the MoE grid and the dense 64-row tile on this checkout, compared bit for bit with
#              the baseline's (stage baseline) and, with oldbuild in the same call, with .carry/base's
#   stress     tests/stress/stress_concurrency.py (8 threads on 8 streams, on one stream, graph capture beside eager
#              threads); then the two crashes it guards against, reproduced on purpose: mm_fp4 with the bindings
#              releasing the GIL, and the previous checkout's fused_moe from 8 streams
#   baseline   the checkout in BASELINE_TAR (default .carry/head.tar: `git archive HEAD` before a change) run beside
#              this one, in its own module cache (BASELINE_ARCHIVES): moe_bits (compared by `bits` with this
#              checkout's; BASELINE_SKIP_BITS=1 leaves it out) and the glue kernels alone at GLUE_TOKENS, the
#              baseline's then this checkout's back to back, so a kernel change is timed against what it replaces
#   launch     scripts/launch_check.py: the pinned Cooperative 128x128 dense tactic alone (LAUNCH_TACTIC), as built
#              (static cudart) and under compute-sanitizer (which names the failing API call), and in the background
#              rebuilt with FLASHINFER_SM12X_CUDART=shared: whether the runtime's linking decides a launch failure
#   profile    benchmarks/bench_moe_glue.py (kernel durations from the profiler and per call in graphs) and Nsight
#              Compute's view of the glue kernels at T = 1 and 64 (stall reasons: what the plan spends its time on)
# Needs, carried in .carry/: the apache-tvm-ffi cp312 wheel and cutlass.tar.xz (FlashInfer's CUTLASS 4.5.0 include/
# and tools/util/include). Optional: .carry/modules*.tar.gz, sm_90a modules built on the CPU machine with
#   flashinfer-sm12x cache export --arch sm_90a --ops grouped_mm_fp4 -o .carry/modules_sm_90a.tar.gz
# (same tvm_ffi version and CUDA major as here; keep the carry within its 64 MiB): imported into the cache first,
# so this machine compiles only what they lack (a module built from other headers is skipped and rebuilt; an
# archive that fails any other check is refused and logged).
# MODULE_ARCHIVES / BASELINE_ARCHIVES: the archives for this checkout's cache and for the baseline's (stage baseline). Logs and results go to $RESULTS, packed at the end into $OUT/gpu_results_<stages>.tgz
# (the device tool returns few files). Usage: bash scripts/gpu_run.sh [stage ...]
# EMULATION_K: a pytest -k expression, EMULATION_PATHS: test paths (default tests), to run part of the GPU tests
# within a call's budget.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
stages=${*:-"atom emulation sanitizer sweep bench"}
RESULTS=/tmp/gpu-results/$(echo "$stages" | tr ' ' '_')
mkdir -p "$OUT" "$RESULTS"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
# The results so far, packed after every stage: a call cut off at its time limit still returns what ran.
pack() { tar -C "$RESULTS" -czf "$OUT/gpu_results_$(basename "$RESULTS").tgz" . 2>/dev/null; }

if [[ ! -d /tmp/site/tvm_ffi ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/*.whl || exit 1
fi
[[ -d /tmp/cutlass/cutlass ]] || { mkdir -p /tmp/cutlass && tar -C /tmp/cutlass -xJf .carry/cutlass.tar.xz; } || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export FLASHINFER_SM12X_CUTLASS_DIR=/tmp/cutlass/cutlass
export FLASHINFER_SM12X_CACHE_DIR=$PWD/.jit-cache
export FLASHINFER_SM12X_EMULATE=1 FLASHINFER_SM12X_QUIET=1 MAX_JOBS=2
mkdir -p "$FLASHINFER_SM12X_CACHE_DIR" && chmod 700 "$FLASHINFER_SM12X_CACHE_DIR"
shopt -s nullglob
for carried in ${MODULE_ARCHIVES:-.carry/modules*.tar .carry/modules*.tar.gz}; do
  echo "== [$(elapsed) s] cache import $carried"
  # --skip-stale: a module whose headers changed since the archive was made is rebuilt here; the rest still serve
  python3 -m flashinfer_sm12x cache import "$carried" --arch sm_90a --skip-stale 2>&1 | tail -1 \
    | tee -a "$RESULTS/import.log"
done
shopt -u nullglob
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$RESULTS/device.txt"
nvcc --version | tail -2

sweep_pid=""
if [[ " $stages " == *" sweep "* ]]; then  # CPU-only work: runs beside the GPU stages
  ( python3 scripts/compile_sweep.py --candidates --arch sm_120a,sm_121a --parallel 6 \
      --csv "$RESULTS/compile_sweep.csv" > "$RESULTS/compile_sweep.log" 2>&1 ) &
  sweep_pid=$!
fi
pack

OLD=$PWD/.carry/base OLD_CACHE=/tmp/old-jit-cache
old_python() {  # the previous checkout's package, its own module cache
  (cd "$OLD" && FLASHINFER_SM12X_CACHE_DIR=$OLD_CACHE PYTHONPATH=/tmp/site:$OLD "$@")
}
oldbuild_pid=""
if [[ " $stages " == *" oldbuild "* && -d $OLD ]]; then
  mkdir -p "$OLD_CACHE" && chmod 700 "$OLD_CACHE"
  echo "== [$(elapsed) s] the previous checkout's modules, in the background"
  ( old_python python3 "$PWD/scripts/moe_bits.py" --build-only --jobs 12 > "$RESULTS/oldbuild.log" 2>&1 ) &
  oldbuild_pid=$!
fi
pack
wait_oldbuild() {
  if [[ -n $oldbuild_pid ]]; then
    wait "$oldbuild_pid"
    oldbuild_pid=""
    tail -n 2 "$RESULTS/oldbuild.log"
  fi
}

if [[ " $stages " == *" atom "* ]]; then
  for test in tests/cpp/*_test.cu; do
    name=$(basename "$test" .cu)
    echo "== [$(elapsed) s] $name"
    nvcc -std=c++17 --expt-relaxed-constexpr -O2 -I include -I /tmp/cutlass/cutlass/include \
      -gencode=arch=compute_90a,code=sm_90a -o "/tmp/$name" "$test" && "/tmp/$name" 2>&1 | tee "$RESULTS/$name.log" | tail -5
  done
fi
pack

if [[ " $stages " == *" prebuild "* ]]; then  # PREBUILD_OPS: the families the tests load without prebuilding
  if [[ -n ${PREBUILD_DEPLOYMENTS:-} ]]; then  # model:act:max_tokens ...: exactly what those deployments load
    for deployment in $PREBUILD_DEPLOYMENTS; do
      IFS=: read -r model act tokens <<< "$deployment"
      echo "== [$(elapsed) s] prebuild --arch sm_90a --model $model --act $act --max-num-tokens $tokens"
      python3 -m flashinfer_sm12x prebuild --arch sm_90a --model "$model" --act "$act" --max-num-tokens "$tokens" \
        --jobs 8 > "$RESULTS/prebuild_${model}_$act.log" 2>&1 &
    done
    wait
    tail -q -n 1 "$RESULTS"/prebuild_*.log
  else
    echo "== [$(elapsed) s] prebuild --arch sm_90a --ops ${PREBUILD_OPS:-grouped_mm_fp4}"
    python3 -m flashinfer_sm12x prebuild --arch sm_90a --ops "${PREBUILD_OPS:-grouped_mm_fp4}" --jobs 16 2>&1 \
      | tee "$RESULTS/prebuild.log" | tail -3
  fi
fi
pack

if [[ " $stages " == *" emulation "* ]]; then
  echo "== [$(elapsed) s] pytest -m 'emulation or cuda' (fixtures build the sm_90a modules, 8 at a time)"
  FLASHINFER_SM12X_PREBUILD_PARALLEL=${PREBUILD_PARALLEL:-12} python3 -m pytest -q -ra -p no:cacheprovider \
    ${EMULATION_PATHS:-tests} \
    -m "emulation or cuda" ${EMULATION_K:+-k "$EMULATION_K"} 2>&1 | tee "$RESULTS/emulation.log" | tail -40
fi
pack

if [[ " $stages " == *" sanitizer "* ]]; then  # SANITIZER_TIMEOUT: seconds per run (default 600)
  limit=${SANITIZER_TIMEOUT:-600}
  run_sanitizer() {  # tool, log name, script and its arguments
    local tool=$1 name=$2
    shift 2
    echo "== [$(elapsed) s] compute-sanitizer $tool: $*"
    timeout "$limit" compute-sanitizer --tool "$tool" --error-exitcode 9 python3 "$@" 2>&1 \
      | tee "$RESULTS/sanitizer_${name}_$tool.log" | tail -4
  }
  if [[ -n ${SANITIZE_MATRIX:-} ]]; then  # every family under all four tools, SANITIZE_PARALLEL runs at a time
    # (default 8; one GPU serves them side by side: most of a run is the tool instrumenting each module as it loads)
    sanitize_one() {  # tool, log name, script and its arguments; prints one summary line
      local tool=$1 name=$2
      shift 2
      local log="$RESULTS/sanitizer_${name}_$tool.log"
      timeout "$limit" compute-sanitizer --tool "$tool" --error-exitcode 9 python3 "$@" > "$log" 2>&1
      local status=$?
      echo "$tool $name: exit $status; $(grep -hE 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1);" \
        "$(grep -hE 'workload done|cases over' "$log" | tail -1)"
    }
    export -f sanitize_one
    export RESULTS limit
    echo "== [$(elapsed) s] sanitizer matrix: building the workloads' modules"
    for fmt in mxfp4 nvfp4 mxfp8_mxfp4; do
      python3 scripts/sanitize_mm_fp4.py --formats "$fmt" --build-only > "$RESULTS/sanitize_build_mm_$fmt.log" 2>&1 &
    done
    python3 scripts/sanitize_moe.py --act mxfp8 --build-only > "$RESULTS/sanitize_build_moe_w4a8.log" 2>&1 &
    python3 scripts/sanitize_moe.py --build-only > "$RESULTS/sanitize_build_moe.log" 2>&1 &
    wait
    echo "== [$(elapsed) s] sanitizer matrix: 4 tools x (quantize, glue, fused_moe W4A4 and W4A8, mm_fp4 x 3 formats)"
    { for tool in memcheck racecheck initcheck synccheck; do
      echo "$tool quantize scripts/sanitize_quantize.py"
      echo "$tool moe_glue scripts/sanitize_moe.py --glue-only"
      echo "$tool moe scripts/sanitize_moe.py"
      echo "$tool moe_w4a8 scripts/sanitize_moe.py --act mxfp8"
      for fmt in mxfp4 nvfp4 mxfp8_mxfp4; do echo "$tool mm_fp4_$fmt scripts/sanitize_mm_fp4.py --formats $fmt"; done
    done
    # initcheck's view of TMA-store output: D written only by the GEMM (see sanitize_mm_fp4.py --fresh-output)
    echo "initcheck tma_store_probe scripts/sanitize_mm_fp4.py --fresh-output"; } | xargs -P "${SANITIZE_PARALLEL:-8}" -L 1 bash -c 'sanitize_one "$@"' _ | sort | tee "$RESULTS/sanitizer_matrix.txt"
  elif [[ -n ${SANITIZE_GLUE_ONLY:-} ]]; then  # the glue kernels only, under all four tools
    for tool in memcheck racecheck initcheck synccheck; do
      run_sanitizer "$tool" moe_glue scripts/sanitize_moe.py --glue-only
    done
  else
  [[ -z ${SANITIZE_SKIP_QUANTIZE:-} ]] && run_sanitizer memcheck quantize scripts/sanitize_quantize.py
  run_sanitizer memcheck moe scripts/sanitize_moe.py
  run_sanitizer racecheck moe_glue scripts/sanitize_moe.py --glue-only
  # racecheck of the whole pipeline: the GEMMs too (their fused epilogue stages tiles through shared memory)
  [[ -n ${SANITIZE_RACECHECK_MOE:-} ]] && run_sanitizer racecheck moe scripts/sanitize_moe.py
  [[ -n ${SANITIZE_MM_FP4:-} ]] && run_sanitizer memcheck mm_fp4 scripts/sanitize_mm_fp4.py
  # initcheck (reads of uninitialised memory: padding rows, workspaces) and synccheck of the glue kernels
  if [[ -n ${SANITIZE_GLUE_ALL:-} ]]; then
    run_sanitizer initcheck moe_glue scripts/sanitize_moe.py --glue-only
    run_sanitizer synccheck moe_glue scripts/sanitize_moe.py --glue-only
  fi
  fi
fi
pack

if [[ " $stages " == *" w4a8 "* ]]; then
  # W4A8_TIMEOUT: seconds per run (default: what is left of 570 s since the start, so that a 600 s device call
  # still packs the results); W4A8_BUILD_JOBS: builds at once per workload (default 6)
  w4a8_dense=(scripts/sanitize_mm_fp4.py --formats mxfp8_mxfp4)
  w4a8_moe=(scripts/sanitize_moe.py --act mxfp8)
  w4a8_accuracy=(benchmarks/moe_accuracy.py --csv "$RESULTS/moe_accuracy.csv")
  echo "== [$(elapsed) s] w4a8: building the modules of the three workloads (a shared module is built once)"
  pids=()
  for name in dense moe accuracy; do
    declare -n cmd="w4a8_$name"
    MAX_JOBS=${W4A8_BUILD_JOBS:-6} python3 "${cmd[@]}" --build-only > "$RESULTS/w4a8_build_$name.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  w4a8_limit=${W4A8_TIMEOUT:-$(( 570 - $(elapsed) ))}
  (( w4a8_limit >= 60 )) || w4a8_limit=60
  grep -hE 'prebuild: .* built|FAILED' "$RESULTS"/w4a8_build_*.log | tee "$RESULTS/w4a8_summary.txt"
  echo "== [$(elapsed) s] w4a8: memcheck of the dense and MoE workloads and the accuracy table, side by side" \
    "(at most $w4a8_limit s each)"
  w4a8_run() {  # log name, then the command; appends the exit status to the log
    local log="$RESULTS/$1.log"
    shift
    timeout "$w4a8_limit" "$@" > "$log" 2>&1
    echo "exit status $?" >> "$log"
  }
  sanitize=(compute-sanitizer --tool memcheck --error-exitcode 9 python3)
  w4a8_run sanitizer_mm_w4a8_memcheck "${sanitize[@]}" "${w4a8_dense[@]}" &
  pids=($!)
  w4a8_run sanitizer_moe_w4a8_memcheck "${sanitize[@]}" "${w4a8_moe[@]}" &
  pids+=($!)
  w4a8_run moe_accuracy python3 "${w4a8_accuracy[@]}" &
  pids+=($!)
  wait "${pids[@]}"
  for log in sanitizer_mm_w4a8_memcheck sanitizer_moe_w4a8_memcheck; do
    { echo "-- $log"; grep -E 'ERROR SUMMARY|workload done|Error' "$RESULTS/$log.log" | tail -5
      tail -n 1 "$RESULTS/$log.log"; } | tee -a "$RESULTS/w4a8_summary.txt"
  done
  { echo "-- moe_accuracy"; tail -n 14 "$RESULTS/moe_accuracy.log"; } | tee -a "$RESULTS/w4a8_summary.txt"
fi
pack

if [[ " $stages " == *" bench "* ]]; then
  for bench in ${BENCHES:-benchmarks/bench_host.py benchmarks/bench_quantize.py benchmarks/bench_moe_glue.py}; do
    [[ -f $bench ]] || continue
    name=$(basename "$bench" .py)
    echo "== [$(elapsed) s] $name"
    python3 "$bench" --csv "$RESULTS/$name.csv" --png "$RESULTS/$name.png" 2>&1 | tee "$RESULTS/$name.log" | tail -40
  done
fi
pack

BASE=/tmp/baseline BASE_CACHE=/tmp/baseline-jit-cache
base_python() {  # the baseline checkout's package (BASELINE_TAR) and module cache, this checkout's scripts
  FLASHINFER_SM12X_CACHE_DIR=$BASE_CACHE PYTHONPATH=/tmp/site:$BASE "$@"
}
if [[ " $stages " == *" baseline "* ]]; then
  tarball=${BASELINE_TAR:-.carry/head.tar}
  rm -rf "$BASE" && mkdir -p "$BASE" "$BASE_CACHE" && chmod 700 "$BASE_CACHE" && tar -C "$BASE" -xf "$tarball" || exit 1
  for carried in ${BASELINE_ARCHIVES:-}; do  # modules built for the baseline's headers (its own cache: a module's
    # manifest names its headers' contents, so one cache cannot hold both checkouts' builds of a changed header)
    echo "== [$(elapsed) s] baseline cache import $carried"
    # from inside the baseline's tree: `python -m` puts the working directory first on sys.path
    (cd "$BASE" && base_python python3 -m flashinfer_sm12x cache import "$OLDPWD/$carried" --arch sm_90a) 2>&1 \
      | tail -1 | tee -a "$RESULTS/import_baseline.log"
  done
  if [[ -z ${BASELINE_SKIP_BITS:-} ]]; then
    echo "== [$(elapsed) s] baseline ($tarball): moe_bits"
    base_python python3 scripts/moe_bits.py --build-only --jobs 16 > "$RESULTS/bits_baseline_build.log" 2>&1
    base_python python3 scripts/moe_bits.py --out "$RESULTS/bits_baseline.json" 2>&1 \
      | tee "$RESULTS/bits_baseline.log" | tail -2
  fi
  # The glue kernels alone (no GEMM module needed), the baseline's and then this checkout's, back to back.
  echo "== [$(elapsed) s] baseline: the glue kernels, the baseline's then this checkout's"
  base_python python3 benchmarks/bench_moe_glue.py --glue-only --tokens "${GLUE_TOKENS:-1,8,32,64,128,1024,8192}" \
    --csv "$RESULTS/bench_moe_glue_baseline.csv" --png "$RESULTS/bench_moe_glue_baseline.png" 2>&1 \
    | tee "$RESULTS/bench_moe_glue_baseline.log" | tail -8
  python3 benchmarks/bench_moe_glue.py --glue-only --tokens "${GLUE_TOKENS:-1,8,32,64,128,1024,8192}" \
    --csv "$RESULTS/bench_moe_glue_new.csv" --png "$RESULTS/bench_moe_glue_new.png" 2>&1 \
    | tee "$RESULTS/bench_moe_glue_new.log" | tail -8
fi
pack

if [[ " $stages " == *" bits "* ]]; then
  echo "== [$(elapsed) s] bits: this checkout"
  python3 scripts/moe_bits.py --build-only --jobs 16 > "$RESULTS/bits_build.log" 2>&1
  python3 scripts/moe_bits.py --out "$RESULTS/bits_new.json" 2>&1 | tee "$RESULTS/bits_new.log" | tail -4
  if [[ -f $RESULTS/bits_baseline.json ]]; then
    echo "== [$(elapsed) s] bits: the baseline against this checkout"
    python3 scripts/moe_bits.py --compare "$RESULTS/bits_baseline.json" "$RESULTS/bits_new.json" 2>&1 \
      | tee "$RESULTS/bits_compare_baseline.log" | tail -12
  fi
  if [[ " $stages " == *" oldbuild "* ]]; then  # the previous checkout too (its modules built by oldbuild)
    wait_oldbuild
    echo "== [$(elapsed) s] bits: the previous checkout"
    old_python python3 "$PWD/scripts/moe_bits.py" --out "$RESULTS/bits_old.json" 2>&1 | tee "$RESULTS/bits_old.log" \
      | tail -4
    python3 scripts/moe_bits.py --compare "$RESULTS/bits_old.json" "$RESULTS/bits_new.json" 2>&1 \
      | tee "$RESULTS/bits_compare.log" | tail -12
  fi
fi
pack

launch_pid=""
if [[ " $stages " == *" launch "* ]]; then
  tactic=${LAUNCH_TACTIC:-cooperative:128x128x128}
  echo "== [$(elapsed) s] launch: $tactic (static cudart), then under compute-sanitizer; shared cudart in the background"
  ( FLASHINFER_SM12X_CUDART=shared timeout 400 python3 scripts/launch_check.py --tactic "$tactic" \
      > "$RESULTS/launch_check_shared.log" 2>&1; echo "exit status $?" >> "$RESULTS/launch_check_shared.log" ) &
  launch_pid=$!
  timeout 120 python3 scripts/launch_check.py --tactic "$tactic" 2>&1 | tee "$RESULTS/launch_check_static.log"
  timeout 180 compute-sanitizer --tool memcheck --print-limit 8 python3 scripts/launch_check.py --tactic "$tactic" \
    > "$RESULTS/launch_check_sanitized.log" 2>&1
  grep -E "Program hit|ERROR SUMMARY|ok,|Error|=========     at" "$RESULTS/launch_check_sanitized.log" | head -12
fi
pack
wait_launch() {
  if [[ -n $launch_pid ]]; then
    wait "$launch_pid"
    launch_pid=""
    echo "== [$(elapsed) s] launch, shared cudart:"
    tail -n 4 "$RESULTS/launch_check_shared.log"
  fi
}

if [[ " $stages " == *" stress "* ]]; then
  echo "== [$(elapsed) s] stress: modules, then 8 threads x ${STRESS_CALLS:-420} calls per mode"
  python3 tests/stress/stress_concurrency.py --build-only > "$RESULTS/stress_build.log" 2>&1
  timeout 300 python3 tests/stress/stress_concurrency.py --threads 8 --calls "${STRESS_CALLS:-420}" \
    --csv "$RESULTS/stress.csv" 2>&1 | tee "$RESULTS/stress.log" | tail -16
  if [[ -z ${STRESS_SKIP_GIL:-} ]]; then
    echo "== [$(elapsed) s] stress, diagnosis: mm_fp4 from 8 threads on one stream with the bindings releasing the GIL"
    FLASHINFER_SM12X_RELEASE_GIL=1 timeout 120 python3 tests/stress/stress_concurrency.py --ops mm_fp4 \
      --modes shared --calls 150 > "$RESULTS/stress_release_gil.log" 2>&1
    echo "exit status $?" >> "$RESULTS/stress_release_gil.log"
    tail -n 6 "$RESULTS/stress_release_gil.log"
  fi
  if [[ -d $OLD && -z ${STRESS_SKIP_OLD:-} ]]; then
    wait_oldbuild
    echo "== [$(elapsed) s] stress, diagnosis: the previous checkout's fused_moe from 8 streams"
    old_python timeout 120 python3 "$PWD/tests/stress/stress_concurrency.py" --ops fused_moe --modes streams \
      --calls 100 > "$RESULTS/stress_old_fused_moe.log" 2>&1
    echo "exit status $?" >> "$RESULTS/stress_old_fused_moe.log"
    tail -n 6 "$RESULTS/stress_old_fused_moe.log"
  fi
fi
pack

if [[ " $stages " == *" profile "* ]]; then
  if [[ -z ${PROFILE_SKIP_BENCH:-} ]]; then
    echo "== [$(elapsed) s] profile: glue kernels (durations from the profiler and per call in graphs)"
    python3 benchmarks/bench_moe_glue.py --tokens "${GLUE_TOKENS:-1,8,32,64,128,1024,8192}" \
      --csv "$RESULTS/bench_moe_glue.csv" --png "$RESULTS/bench_moe_glue.png" 2>&1 | tee "$RESULTS/bench_moe_glue.log" | tail -14
  fi
  if command -v ncu > /dev/null; then
    echo "== [$(elapsed) s] profile: Nsight Compute on the glue kernels at T = 1 and 64"
    timeout 240 ncu --kernel-name regex:"plan|scatter|finalize|activation" --launch-count 10 \
      --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
      python3 benchmarks/bench_moe_glue.py --tokens "${NCU_TOKENS:-1,64}" --iters 2 --launches 1 --csv /tmp/ncu_glue.csv \
      > "$RESULTS/ncu_glue.log" 2>&1
    echo "exit status $?" >> "$RESULTS/ncu_glue.log"
    grep -E "^  [a-z_]+.*\(|Duration|Stall|Warp Cycles Per Issued|Achieved Occupancy" "$RESULTS/ncu_glue.log" | head -60
  fi
fi
pack

wait_oldbuild
wait_launch
if [[ -n $sweep_pid ]]; then
  echo "== [$(elapsed) s] waiting for the compile sweep"
  wait "$sweep_pid"
  tail -5 "$RESULTS/compile_sweep.log"
fi
echo "== done in $(elapsed) s"
tar -C "$RESULTS" -czf "$OUT/gpu_results_$(basename "$RESULTS").tgz" .
