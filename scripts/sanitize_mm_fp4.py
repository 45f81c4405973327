#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A small mm_fp4 workload for compute-sanitizer: shipped tactics on ragged shapes (M and N not multiples of the
tile; K not a multiple of 128 where the format allows it), each checked against the float64 reference. The log
names every case as it passes and ends with the count.

Tactics (memcheck slows each run ~100x): W4A4 and NVFP4 run Pingpong and Cooperative 128x128 and our 64-row
mainloop; W4A8 (`mm_mxfp8_mxfp4`, K a multiple of 128) runs every tactic shipped for the target.

    FLASHINFER_SM12X_EMULATE=1 python scripts/sanitize_mm_fp4.py --formats mxfp8_mxfp4 --build-only
    FLASHINFER_SM12X_EMULATE=1 compute-sanitizer --tool memcheck python scripts/sanitize_mm_fp4.py --formats mxfp8_mxfp4
    python scripts/sanitize_mm_fp4.py --arch sm_90a --list-cases     # the cases and modules, no GPU needed
"""

from __future__ import annotations

import argparse
import sys

import torch

from flashinfer_sm12x.errors import Sm12xError
from flashinfer_sm12x.jit.arch import Target
from flashinfer_sm12x.jit.module import ModuleSpec
from flashinfer_sm12x.kernels.family import Tactic
from flashinfer_sm12x.kernels.mm_fp4 import FAMILY
from flashinfer_sm12x.testing.workloads import build_modules, unique_specs, workload_target

Case = tuple[str, Tactic, int, int, int]  # format, tactic, m, n, k


def cases(target: Target, formats: list[str]) -> list[Case]:
    """Every (format, tactic, m, n, k) the workload runs on `target`."""
    out = []
    for fmt in formats:
        menu = FAMILY.shipped(fmt, target)
        if fmt == "mxfp8_mxfp4":
            tactics = list(menu)
            shapes = [(1, 72, 2944), (130, 136, 384)]  # W4A8's K is a multiple of 128
        else:
            tactics = [*menu[:2], *[t for t in menu if t.tile_m == 64]]
            shapes = [(1, 72, 2880), (130, 136, 384)]
        out += [(fmt, tactic, m, n, k) for tactic in tactics for m, n, k in shapes]
    return out


def modules(target: Target, work: list[Case]) -> list[ModuleSpec]:
    """The modules the cases load (bf16 output), each once."""
    return unique_specs([FAMILY.spec(target, fmt, tactic, torch.bfloat16) for fmt, tactic, *_ in work])


def fresh_output_probe(target: Target, formats: list[str]) -> int:
    """The GEMM's D is written by CUTLASS's TMA-store epilogue (bulk copies from shared memory). The workload's other
    cases pre-fill D with NaN (a regular kernel's stores) to catch unwritten elements; here D is a fresh torch.empty
    that only the GEMM writes, then read by torch. Equal to the NaN-filled run: every element was written by the
    GEMM, so an initcheck report on these reads is about what the tool sees, not about our kernel."""
    from flashinfer_sm12x.ops.mm_fp4 import run_tactic, validate
    from flashinfer_sm12x.testing.mm_fp4_cases import make_operands

    for fmt in formats:
        fmt_, tactic, m, n, k = cases(target, [fmt])[1]  # the ragged 130 x 136 case
        ops = make_operands(fmt_, m, n, k, 0)
        outs = []
        for out in (torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda"),
                    # the tail of a fresh 64 MiB block: memory no kernel of this process has written
                    torch.empty(2**25 + m * n, dtype=torch.bfloat16, device="cuda")[-m * n:].view(m, n)):
            p = validate(ops["a"], ops["b"], ops["a_descale"], ops["b_descale"], ops["alpha"], torch.bfloat16, out,
                         ops["block_size"], False, ops["use_nvfp4"], fp8_a=fmt_ == "mxfp8_mxfp4")
            run_tactic(p, tactic)
            outs.append(out)
        torch.cuda.synchronize()
        same = torch.equal(outs[0], outs[1])
        print(f"fresh-output probe {fmt_} {tactic.name} m={m} n={n} k={k}: "
              f"{'identical to the NaN-filled run' if same else 'DIFFERS'}", flush=True)
        if not same:
            return 1
    print("sanitizer workload done: fresh-output probe", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="", help="comma-separated formats (default: every one with a build "
                        f"for the target); from {', '.join(FAMILY.formats)}")
    parser.add_argument("--arch", default=None, help="target (default: this GPU's)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--build-only", action="store_true", help="build the workload's modules and exit")
    what.add_argument("--list-cases", action="store_true", help="print the cases and modules and exit")
    what.add_argument("--fresh-output", action="store_true",
                      help="initcheck's probe: each format's first case into a never-written output (torch.empty), "
                      "read back by a torch kernel and compared with the same call into a NaN-filled output")
    args = parser.parse_args()
    try:
        target = workload_target(args.arch)
    except (RuntimeError, Sm12xError) as exc:
        parser.error(str(exc))
    formats = [f for f in args.formats.split(",") if f] or list(FAMILY.formats_for(target))
    unknown = [f for f in formats if f not in FAMILY.formats_for(target)]
    if unknown:
        parser.error(f"formats {unknown} have no {target.name} build; choose from {FAMILY.formats_for(target)}")
    work = cases(target, formats)
    if args.list_cases:
        for fmt, tactic, m, n, k in work:
            print(f"case {fmt} {tactic.name} m={m} n={n} k={k}")
        for spec in modules(target, work):
            print(f"module {spec.op}/{spec.group}/{spec.target_name}")
        return 0
    if args.build_only:
        return 0 if build_modules(modules(target, work), "sanitize_mm_fp4") else 1

    from flashinfer_sm12x.testing.mm_fp4_cases import run_and_check

    if args.fresh_output:
        return fresh_output_probe(target, formats)

    print(f"target {target.name}: {len(work)} cases over formats {', '.join(formats)}", flush=True)
    for fmt, tactic, m, n, k in work:
        err = run_and_check(fmt, tactic, torch.bfloat16, m, n, k, with_alpha=True)
        print(f"{fmt} {tactic.name} m={m} n={n} k={k}: ok (max rel err {err:.1e})", flush=True)
    print(f"sanitizer workload done: {len(work)} cases", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
