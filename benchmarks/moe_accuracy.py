#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Accuracy of fused_moe's W4A4 (MXFP4 activations) and W4A8 (MXFP8 activations) against unquantized activations,
on GPT-OSS-shaped data: E = 32 experts (GPT-OSS-20B), top-4, hidden = intermediate = 2880, T in {16, 256}.

Both modes run on the same MXFP4 expert weights and the same routing. Each output is measured (relative L2) against
two float64 GPT-OSS references (flashinfer_sm12x.moe.reference) on the same dequantized MXFP4 weights:
- unquantized activations (act_quant=None: the hidden states as given, the SwiGLU output unrounded). This is the
  yardstick of benchmarks/bench_moe.py's rel L2 column, so these numbers are comparable with it;
- the activations quantized as the kernels quantize them (MXFP4 for W4A4, MXFP8 for W4A8): what the kernels add.
The table also gives the quantized reference against the unquantized one: the format's own error, without kernels.

Data sets: "bench_moe" generates weights and inputs as benchmarks/bench_moe.py does (random E2M1 codes, E8M0 scales
2^-7..2^-3, biases 0.1 sigma; hidden N(0, 1) in bf16; router logits N(0, 1)); "tests" as the MoE tests do
(flashinfer_sm12x.testing.moe_cases: scales 2^-7..2^-2, biases 0.5 sigma, hidden N(0, 4)).

Valid under emulation: on an SM90 GPU (H100/H200) with FLASHINFER_SM12X_EMULATE=1 the GEMMs are the SM12x
templates with the emulated block-scaled MMA atom, which computes every 32-element block's product exactly in fp32
and applies the E8M0 scales after (docs/emulation.md), as the native instruction does; only the fp32 summation
order may differ from SM12x hardware, which can move single roundings but not the errors measured here. The
quantization and glue kernels run as on SM12x (an sm_90a build of the same code). Only speed is not valid under
emulation: nothing is timed here.
It needs a CUDA GPU (the GEMMs are CUDA modules even with impl="reference") and exits with a message without one.

    FLASHINFER_SM12X_EMULATE=1 python benchmarks/moe_accuracy.py          # table; CSV in benchmarks/results
    python benchmarks/moe_accuracy.py --arch sm_90a --list-modules         # the modules it loads, no GPU needed
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from flashinfer_sm12x.checks import round_up
from flashinfer_sm12x.errors import Sm12xError
from flashinfer_sm12x.jit.arch import Target
from flashinfer_sm12x.jit.module import ModuleSpec
from flashinfer_sm12x.kernels.grouped_mm_fp4 import FAMILY as GROUPED
from flashinfer_sm12x.kernels.grouped_mm_fp4 import gemm_format
from flashinfer_sm12x.kernels.moe_glue import moe_glue_spec
from flashinfer_sm12x.moe.pipeline import row_plan
from flashinfer_sm12x.testing.moe_accuracy import ACTS, AccuracyRow, format_table, measure, write_csv
from flashinfer_sm12x.testing.workloads import build_modules, unique_specs, workload_target

H = INTER = 2880
TOP_K = 4
DATA_SETS = ("bench_moe", "tests")
DEFAULT_CSV = Path(__file__).resolve().parent / "results" / "moe_accuracy.csv"


def modules(target: Target, num_e: int, tokens: list[int]) -> list[ModuleSpec]:
    """What fused_moe (impl="kernels") loads for these T: per activation format, the grouped GEMM tactic the
    heuristic picks for T * k rows and the glue module."""
    specs = []
    for act in ACTS:
        fmt = gemm_format(act)
        specs += [GROUPED.spec(target, fmt, row_plan(t, TOP_K, num_e, fmt, None, target).tactic, torch.bfloat16)
                  for t in tokens]
        specs.append(moe_glue_spec(target, act))
    return unique_specs(specs)


def make_weights(data: str, num_e: int) -> dict[str, torch.Tensor]:
    """Checkpoint-layout MXFP4 expert weights on the GPU, generated as `data` does."""
    if data == "bench_moe":
        from flashinfer_sm12x.testing.benchmarking import checkpoint_weights

        return checkpoint_weights(num_e, H, INTER)
    from flashinfer_sm12x.testing.moe_cases import make_weights as test_weights

    return {k: v.cuda() for k, v in test_weights(num_e, H, INTER).items()}


def make_inputs(data: str, num_e: int, num_t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden [T, H] bf16, router logits [T, E]) on the GPU, generated as `data` does."""
    if data == "bench_moe":
        g = torch.Generator(device="cuda").manual_seed(num_t)  # bench_moe.bench_tokens' inputs for this T
        hidden = torch.randn(num_t, H, generator=g, device="cuda").bfloat16()
        return hidden, torch.randn(num_t, num_e, generator=g, device="cuda")
    from flashinfer_sm12x.testing.moe_cases import make_inputs as test_inputs

    hidden, logits = test_inputs(num_t, H, num_e)
    return hidden.cuda(), logits.cuda()


def run(data_sets: list[str], num_e: int, tokens: list[int]) -> list[AccuracyRow]:
    """Every (data set, T, activation format) row; one weight set per data set, shared by both formats."""
    from flashinfer_sm12x.moe import fused_moe, prepare_gpt_oss_weights, route

    rows: list[AccuracyRow] = []
    for data in data_sets:
        raw = make_weights(data, num_e)
        prepared = {act: prepare_gpt_oss_weights(**raw, pad_to=128, act=act) for act in ACTS}
        for num_t in tokens:
            hidden, logits = make_inputs(data, num_e, num_t)
            rows += measure(data, raw, hidden, route(logits, TOP_K),
                            lambda act, x, routing, w=prepared: fused_moe(x, routing, w[act]))
            print(f"  {data} T={num_t}: done", flush=True)
        del raw, prepared  # one data set's weights on the GPU at a time
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="16,256", help="comma-separated token counts T (default 16,256)")
    parser.add_argument("--experts", type=int, default=32, help="experts E (default 32, GPT-OSS-20B)")
    parser.add_argument("--data", default=",".join(DATA_SETS), help=f"data sets, from {', '.join(DATA_SETS)}")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help=f"CSV output (default {DEFAULT_CSV})")
    parser.add_argument("--arch", default=None, help="target for --list-modules / --build-only (default: this GPU's)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--build-only", action="store_true", help="build the modules it loads and exit")
    what.add_argument("--list-modules", action="store_true", help="print the modules it loads and exit")
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",") if t]
    data_sets = [d for d in args.data.split(",") if d]
    if not tokens or min(tokens) < 1 or args.experts < TOP_K:
        parser.error(f"--tokens must be positive and --experts at least {TOP_K}")
    if not data_sets or any(d not in DATA_SETS for d in data_sets):
        parser.error(f"--data must name some of {', '.join(DATA_SETS)}")
    if args.arch is None and not torch.cuda.is_available():
        print("moe_accuracy.py needs a CUDA GPU: fused_moe's grouped GEMMs are CUDA modules (on an SM90 GPU run it "
              "with FLASHINFER_SM12X_EMULATE=1). No CUDA GPU here.", file=sys.stderr)
        return 1
    try:
        target = workload_target(args.arch)
    except (RuntimeError, Sm12xError) as exc:
        print(f"moe_accuracy.py: {exc}", file=sys.stderr)
        return 1
    if args.list_modules:
        for spec in modules(target, args.experts, tokens):
            print(f"module {spec.op}/{spec.group}/{spec.target_name}")
        return 0
    if args.build_only:
        return 0 if build_modules(modules(target, args.experts, tokens), "moe_accuracy") else 1
    if not torch.cuda.is_available():
        print("moe_accuracy.py needs a CUDA GPU to run (--arch only serves --list-modules / --build-only)",
              file=sys.stderr)
        return 1

    device = torch.cuda.get_device_name()
    cc = torch.cuda.get_device_capability()
    mode = "native" if cc[0] == 12 else "emulated MMA atom (numerics valid, nothing timed)"
    print(f"device: {device} (compute capability {cc[0]}.{cc[1]}), target {target.name}: {mode}; "
          f"torch {torch.__version__}")
    print(f"shapes: E={args.experts}, top-{TOP_K}, H=I={H} (padded to {round_up(H, 128)}), T in {tokens}; data: "
          f"{', '.join(data_sets)}; references: float64 GPT-OSS MoE on the same dequantized MXFP4 weights")
    rows = run(data_sets, args.experts, tokens)
    print(format_table(rows))
    write_csv(rows, args.csv, device)
    print(f"wrote {args.csv}")
    bad = [r for r in rows if not all(math.isfinite(v) for v in (r.vs_unquantized, r.vs_quantized_reference))]
    if bad:
        print(f"non-finite errors in {len(bad)} row(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
