#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Host time per call of mm_fp4 (a shape seen before: module loaded, plan cached), against torch.matmul in bf16 of
the same shape, and the kernels each call launches.

Host time is the Python-side cost of one eager call: the wall time of `calls` back-to-back calls (no
synchronisation between them; launches are asynchronous) divided by `calls`, median of `repeats`. It does not
depend on how fast the kernel runs, so it is a real figure on any GPU, also where our GEMM runs through the SM90
emulation (FLASHINFER_SM12X_EMULATE=1 on an H100/H200); the kernel's own time is not reported there.

    python benchmarks/bench_host.py [--calls 200] [--csv PATH] [--png PATH]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import our_kernels_mode, plot_panels  # noqa: E402
from flashinfer_sm12x import mm_fp4  # noqa: E402
from flashinfer_sm12x.formats import mxfp4_quantize  # noqa: E402
from flashinfer_sm12x.testing.profiling import kernel_launches  # noqa: E402

SHAPES = [(1, 5760, 2880), (16, 5760, 2880), (128, 2880, 2880), (1, 2880, 4096)]  # GPT-OSS qkv/o-sized, decode


def host_us(fn: Callable[[], object], calls: int, repeats: int = 7) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(samples)


def kernels_per_call(fn: Callable[[], object]) -> int:
    fn()  # warm: JIT loads and allocations are not counted
    return kernel_launches(fn)


def calls_for(m: int, n: int, k: int, native: bool) -> dict[str, Callable[[], object]]:
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=gen).cuda(), torch.randn(n, k, generator=gen).cuda()
    a, a_sf = mxfp4_quantize(x)
    b, b_sf = mxfp4_quantize(w)
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    xb, wb = x.bfloat16(), w.bfloat16()
    calls: dict[str, Callable[[], object]] = {
        "mm_fp4 cutlass_sm12x": lambda: mm_fp4(a, b.T, a_sf, b_sf.T, block_size=32, use_nvfp4=False,
                                               backend="cutlass_sm12x"),
        "mm_fp4 cutlass_sm12x, out given": lambda: mm_fp4(a, b.T, a_sf, b_sf.T, out=out, block_size=32,
                                                          use_nvfp4=False, backend="cutlass_sm12x"),
        "torch.matmul bf16": lambda: torch.matmul(xb, wb.T),
    }
    if native:  # backend="auto" never picks the emulated path
        calls["mm_fp4 auto"] = lambda: mm_fp4(a, b.T, a_sf, b_sf.T, block_size=32, use_nvfp4=False)
    return calls


def breakdown(m: int, n: int, k: int, calls: int) -> list[dict]:
    """Where one mm_fp4 call's host time goes: validation, the plan lookup, the launch through tvm_ffi."""
    from flashinfer_sm12x.ops import mm_fp4 as op

    gen = torch.Generator().manual_seed(0)
    a, a_sf = mxfp4_quantize(torch.randn(m, k, generator=gen).cuda())
    b, b_sf = mxfp4_quantize(torch.randn(n, k, generator=gen).cuda())
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    p = op.validate(a, b.T, a_sf, b_sf.T, None, torch.bfloat16, out, 32, False, False)
    pl = op.plan(p)
    parts = {
        "validate": lambda: op.validate(a, b.T, a_sf, b_sf.T, None, torch.bfloat16, out, 32, False, False),
        "plan (cached)": lambda: op.plan(p),
        "run (launch through tvm_ffi)": lambda: op.run(p, pl),
        "torch.empty of the output": lambda: torch.empty(m, n, dtype=torch.bfloat16, device="cuda"),
    }
    return [{"m": m, "n": n, "k": k, "call": f"part: {name}", "host_us": round(host_us(fn, calls), 2), "kernels": 0}
            for name, fn in parts.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--csv", default="benchmarks/results/bench_host.csv")
    parser.add_argument("--png", default="benchmarks/results/bench_host.png")
    args = parser.parse_args()
    name, cc, mode = our_kernels_mode()
    print(f"device: {name} (CC {cc[0]}.{cc[1]}); our kernels: {mode}; calls per sample: {args.calls}")
    if mode == "no":
        print("our kernels do not run here (needs SM120/SM121, or SM90 with FLASHINFER_SM12X_EMULATE=1)")
        return 1
    rows = []
    for m, n, k in SHAPES:
        for label, fn in calls_for(m, n, k, native=mode == "native").items():
            rows.append({"m": m, "n": n, "k": k, "call": label, "host_us": round(host_us(fn, args.calls), 2),
                         "kernels": kernels_per_call(fn)})
    rows += breakdown(*SHAPES[0], args.calls)
    print("torch.Tensor.__dlpack_c_exchange_api__ (tvm_ffi's fast tensor path):",
          hasattr(torch.Tensor, "__dlpack_c_exchange_api__"))
    print(f"{'M':>5} {'N':>6} {'K':>6}  {'call':<34} {'host us':>8} {'kernels':>8}")
    for r in rows:
        print(f"{r['m']:>5} {r['n']:>6} {r['k']:>6}  {r['call']:<34} {r['host_us']:>8.2f} {r['kernels']:>8}")
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.csv}")
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {"host time per call (us)": {}}
    for r in rows:
        if r["call"].startswith("part:"):
            continue
        panels["host time per call (us)"].setdefault(f"{r['call']} (N={r['n']}, K={r['k']})", []).append(
            (r["m"], r["host_us"]))
    plot_panels(panels, Path(args.png), f"Host time per call on {name}", "M", "us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
