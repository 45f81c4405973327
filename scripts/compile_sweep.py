#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Compile proof of kernel families' menus: one cubin per case (family, format, tactic, target), no GPU needed.

Prints a table (config, target, registers, spills, smem, stages, MMA instruction count, seconds, verdict) and writes
it as CSV. Exit status 1 if any case fails its requirement (the family's instruction in SASS, no spill instruction
in the mainloop, smem <= 101,376 B). Every family in flashinfer_sm12x.kernels.FAMILIES is swept unless --family
names some.

    python scripts/compile_sweep.py --arch sm_120a,sm_121a --parallel 2 --csv sweep.csv
    python scripts/compile_sweep.py --family grouped_mm_fp4 --candidates --formats mxfp8_mxfp4
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.jit.compile_proof import SM120_SMEM_CAPACITY, compile_proof
from flashinfer_sm12x.kernels import FAMILIES, GemmFamily, ProofCase


def prove(case: ProofCase) -> dict:
    target = case.spec.target
    row = {"config": case.label, "target": target.name if target else "host"}
    try:
        report = compile_proof(case.spec)
        kernel = report.kernel()
        row.update(registers=kernel.registers, spill_stores=kernel.spill_stores, spill_loads=kernel.spill_loads,
                   mainloop_spill_instructions=kernel.mainloop_spills(case.instruction),
                   smem=(report.dynamic_smem or 0) + kernel.static_smem, stages=report.stages,
                   mma=f"{case.instruction} x{kernel.count(case.instruction)}", seconds=round(report.seconds))
        report.require(instruction=case.instruction, no_spills=case.no_spills,
                       no_mainloop_spills=case.no_mainloop_spills, max_smem=SM120_SMEM_CAPACITY)
        row["verdict"] = "PASS"
    except Exception as exc:  # a failing config is a row of the table, not the end of the sweep
        row["verdict"] = "FAIL: " + str(exc).strip().splitlines()[-1][:160]
    print(f"  {row['config']:<52} {row['target']:<8} {row['verdict']}", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_120a,sm_121a")
    parser.add_argument("--family", default="", help=f"comma-separated, of {sorted(FAMILIES)} (default: all)")
    parser.add_argument("--formats", default="", help="GEMM families: comma-separated formats (default: all)")
    parser.add_argument("--parallel", type=int, default=2, help="cubins compiled at once (~5.5 GB each)")
    parser.add_argument("--csv", default="")
    parser.add_argument("--candidates", action="store_true", help="every candidate config, not only the shipped")
    parser.add_argument("--only", default="", help="comma-separated substrings of case labels to keep")
    args = parser.parse_args()
    names = args.family.split(",") if args.family else list(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        parser.error(f"unknown family {unknown}; known: {sorted(FAMILIES)}")
    cases: list[ProofCase] = []
    for arch in args.arch.split(","):
        target = parse_target(arch)
        for name in names:
            family = FAMILIES[name]
            if isinstance(family, GemmFamily) and args.formats:
                formats = tuple(f for f in args.formats.split(",") if f in family.formats)
                cases += family.proof_cases(target, candidates=args.candidates, formats=formats)
            else:
                cases += family.proof_cases(target, candidates=args.candidates)
    if args.only:
        cases = [c for c in cases if any(s in c.label for s in args.only.split(","))]
    print(f"compile sweep: {len(cases)} cases, {args.parallel} at a time", flush=True)
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        rows = list(pool.map(prove, cases))
    cols = ["config", "target", "registers", "spill_stores", "spill_loads", "mainloop_spill_instructions", "smem",
            "stages", "mma", "seconds", "verdict"]
    print(f"\n{len(rows)} cases in {time.monotonic() - start:.0f} s")
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
