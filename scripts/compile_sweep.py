#!/usr/bin/env python3
"""Compile proof of the whole mm_fp4 tile menu: one cubin per (format, tactic, target), no GPU needed.

Prints a table (config, target, registers, spills, smem, stages, MMA instruction count, seconds, verdict)
and writes it as CSV. Exit status 1 if any config fails a requirement (native MMA in SASS, no spills,
smem <= 101,376 B).

    python scripts/compile_sweep.py --arch sm_120a,sm_121a --parallel 2 --csv sweep.csv
    python scripts/compile_sweep.py --op grouped_mm_fp4 --candidates     # the MoE GEMM's menus (W4A4, W4A8)
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.jit.compile_proof import SM120_SMEM_CAPACITY, compile_proof
from flashinfer_sm12x.ops import grouped_mm_fp4 as grouped
from flashinfer_sm12x.ops.mm_fp4 import (
    CANDIDATES,
    EMULATED_FORMATS,
    MENU,
    applicable,
    mm_fp4_spec,
    required_instruction,
    shipped,
)

OUT = {"bf16": torch.bfloat16, "fp16": torch.float16}


def prove(fmt: str, tactic, target, out: str, op: str = "mm_fp4") -> dict:
    if op == "grouped_mm_fp4":
        spec = grouped.grouped_mm_fp4_spec(target, tactic, OUT[out], fmt)
    else:
        spec = mm_fp4_spec(target, fmt, tactic, OUT[out])
    row = {"config": f"{op}/{fmt}/{out}/{tactic.name}", "target": target.name}
    try:
        report = compile_proof(spec)
        instruction = required_instruction(fmt, target)
        kernel = report.kernel()
        row.update(registers=kernel.registers, spill_stores=kernel.spill_stores, spill_loads=kernel.spill_loads,
                   mainloop_spill_instructions=kernel.mainloop_spills(instruction),
                   smem=(report.dynamic_smem or 0) + kernel.static_smem, stages=report.stages,
                   mma=f"{instruction} x{kernel.count(instruction)}", seconds=round(report.seconds))
        # Emulated builds are correctness builds: their spills are reported, not held against them.
        report.require(instruction=instruction, no_mainloop_spills=not target.emulated, max_smem=SM120_SMEM_CAPACITY)
        row["verdict"] = "PASS"
    except Exception as exc:  # a failing config is a row of the table, not the end of the sweep
        row["verdict"] = "FAIL: " + str(exc).strip().splitlines()[-1][:160]
    print(f"  {row['config']:<44} {row['target']:<8} {row['verdict']}", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_120a,sm_121a")
    parser.add_argument("--formats", default=",".join(MENU["format"]))
    parser.add_argument("--out-dtypes", default="bf16")
    parser.add_argument("--parallel", type=int, default=2, help="cubins compiled at once (~5.5 GB each)")
    parser.add_argument("--csv", default="")
    parser.add_argument("--candidates", action="store_true", help="every candidate config, not only the shipped")
    parser.add_argument("--only", default="", help="comma-separated tactic names to restrict the sweep to")
    parser.add_argument("--op", default="mm_fp4", choices=("mm_fp4", "grouped_mm_fp4"))
    args = parser.parse_args()
    jobs = []
    for arch in args.arch.split(","):
        target = parse_target(arch)
        if args.op == "grouped_mm_fp4":
            for fmt in (f for f in args.formats.split(",") if f in grouped.FORMATS):
                if target.emulated and fmt not in EMULATED_FORMATS:
                    continue
                menu = grouped.candidates(fmt) if args.candidates else grouped.shipped(target, fmt)
                jobs += [(fmt, t, target, o, args.op) for t in menu for o in args.out_dtypes.split(",")]
            continue
        formats = [f for f in args.formats.split(",") if not target.emulated or f in EMULATED_FORMATS]
        jobs += [(f, t, target, o) for f in formats for t in (CANDIDATES if args.candidates else shipped(f, target))
                 for o in args.out_dtypes.split(",") if applicable(f, t)]
    if args.only:
        jobs = [j for j in jobs if j[1].name in args.only.split(",")]
    print(f"compile sweep: {len(jobs)} configs, {args.parallel} at a time", flush=True)
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        rows = list(pool.map(lambda j: prove(*j), jobs))
    cols = ["config", "target", "registers", "spill_stores", "spill_loads", "mainloop_spill_instructions", "smem",
            "stages", "mma", "seconds", "verdict"]
    print(f"\n{len(rows)} configs in {time.monotonic() - start:.0f} s")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols)
            writer.writeheader()
            writer.writerows(rows)
    return 0 if all(r["verdict"] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
