#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Host time per call of mm_fp4 (a shape seen before: module loaded, plan cached), against torch.matmul in bf16 of
the same shape, and the kernels each call launches.

Host time is the Python-side cost of one eager call: the wall time of `calls` back-to-back calls (no
synchronisation between them; launches are asynchronous) divided by `calls`, median of `repeats`. It does not
depend on how fast the kernel runs, so it is a real figure on any GPU, also where our GEMM runs through the SM90
emulation (FLASHINFER_SM12X_EMULATE=1 on an H100/H200); the kernel's own time is not reported there.

Rows: mm_fp4 allocating its output, with `out` given, and with `out` given but the activation at a new address on
every call (more buffers in turn than the module's launch cache holds: every call rebuilds the kernel
parameters), next to torch.matmul in bf16. The `cache hit %` column is the module's launch-cache hit rate over the
timed calls (near 100 in steady state, 0 for the moving activation).

    python benchmarks/bench_host.py [--calls 200] [--csv PATH] [--png PATH]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from flashinfer_sm12x import mm_fp4
from flashinfer_sm12x.formats import mxfp4_quantize
from flashinfer_sm12x.testing.benchmarking import our_kernels_mode, plot_panels, write_csv
from flashinfer_sm12x.testing.profiling import kernel_launches

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


def activation_buffers(module: object) -> int:
    """More activation buffers than the module's launch cache holds: used in turn, every call misses (LRU)."""
    capacity = getattr(module, "launch_cache_capacity", None)
    return (capacity() if capacity is not None else 256) + 8


def calls_for(m: int, n: int, k: int, native: bool, buffers: int) -> dict[str, Callable[[], object]]:
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=gen).cuda(), torch.randn(n, k, generator=gen).cuda()
    a, a_sf = mxfp4_quantize(x)
    b, b_sf = mxfp4_quantize(w)
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    xb, wb = x.bfloat16(), w.bfloat16()
    moving = itertools.cycle([a.clone() for _ in range(buffers)])
    calls: dict[str, Callable[[], object]] = {
        "mm_fp4 cutlass_sm12x": lambda: mm_fp4(a, b.T, a_sf, b_sf.T, block_size=32, use_nvfp4=False,
                                               backend="cutlass_sm12x"),
        "mm_fp4 cutlass_sm12x, out given": lambda: mm_fp4(a, b.T, a_sf, b_sf.T, out=out, block_size=32,
                                                          use_nvfp4=False, backend="cutlass_sm12x"),
        "mm_fp4 out given, a moves (miss)": lambda: mm_fp4(next(moving), b.T, a_sf, b_sf.T, out=out, block_size=32,
                                                           use_nvfp4=False, backend="cutlass_sm12x"),
        "torch.matmul bf16": lambda: torch.matmul(xb, wb.T),
    }
    if native:  # backend="auto" never picks the emulated path
        calls["mm_fp4 auto"] = lambda: mm_fp4(a, b.T, a_sf, b_sf.T, block_size=32, use_nvfp4=False)
    return calls


def our_module(m: int, n: int, k: int) -> object:
    """The module mm_fp4 runs for this shape (its plan is cached after the first call)."""
    from flashinfer_sm12x.ops import mm_fp4 as op

    a = torch.zeros(m, k // 2, dtype=torch.uint8, device="cuda")
    w = torch.zeros(n, k // 2, dtype=torch.uint8, device="cuda")
    a_sf = torch.zeros(-(-m // 128) * 128 * (-(-k // 128) * 4), dtype=torch.uint8, device="cuda")
    w_sf = torch.zeros(-(-n // 128) * 128 * (-(-k // 128) * 4), dtype=torch.uint8, device="cuda")
    return op.plan(op.validate(a, w.T, a_sf, w_sf, None, torch.bfloat16, None, 32, False, False)).module


def timed_with_hit_rate(fn: Callable[[], object], calls: int, module: object | None) -> tuple[float, float | None]:
    """Host time per call and, for our calls, the module's launch-cache hit rate over the timed calls (%)."""
    counters = getattr(module, "launch_cache_hits", None), getattr(module, "launch_cache_misses", None)
    if module is None or None in counters:
        return host_us(fn, calls), None
    hits, misses = counters[0](), counters[1]()
    us = host_us(fn, calls)
    hits, misses = counters[0]() - hits, counters[1]() - misses
    return us, round(100 * hits / max(hits + misses, 1), 1)


def breakdown(m: int, n: int, k: int, calls: int, buffers: int) -> list[dict]:
    """Where one mm_fp4 call's host time goes: validation, the plan lookup, the launch through tvm_ffi."""
    from flashinfer_sm12x.ops import mm_fp4 as op

    gen = torch.Generator().manual_seed(0)
    a, a_sf = mxfp4_quantize(torch.randn(m, k, generator=gen).cuda())
    b, b_sf = mxfp4_quantize(torch.randn(n, k, generator=gen).cuda())
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    p = op.validate(a, b.T, a_sf, b_sf.T, None, torch.bfloat16, out, 32, False, False)
    pl = op.plan(p)
    moved = itertools.cycle([op.validate(a.clone(), b.T, a_sf, b_sf.T, None, torch.bfloat16, out, 32, False, False)
                             for _ in range(buffers)])
    parts = {
        "validate": lambda: op.validate(a, b.T, a_sf, b_sf.T, None, torch.bfloat16, out, 32, False, False),
        "plan (cached)": lambda: op.plan(p),
        "run (launch through tvm_ffi)": lambda: op.run(p, pl),
        "run, a moves (cache miss)": lambda: op.run(next(moved), pl),
        "torch.empty of the output": lambda: torch.empty(m, n, dtype=torch.bfloat16, device="cuda"),
    }
    return [{"m": m, "n": n, "k": k, "call": f"part: {name}", "host_us": round(host_us(fn, calls), 2), "kernels": 0,
             "cache_hit_pct": None} for name, fn in parts.items()]


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
        module = our_module(m, n, k)
        for label, fn in calls_for(m, n, k, native=mode == "native", buffers=activation_buffers(module)).items():
            us, hit_pct = timed_with_hit_rate(fn, args.calls, module if "cutlass_sm12x" in label or "(miss)" in label
                                              else None)
            rows.append({"m": m, "n": n, "k": k, "call": label, "host_us": round(us, 2),
                         "kernels": kernels_per_call(fn), "cache_hit_pct": hit_pct})
    rows += breakdown(*SHAPES[0], args.calls, activation_buffers(our_module(*SHAPES[0])))
    print("torch.Tensor.__dlpack_c_exchange_api__ (tvm_ffi's fast tensor path):",
          hasattr(torch.Tensor, "__dlpack_c_exchange_api__"))
    print(f"{'M':>5} {'N':>6} {'K':>6}  {'call':<34} {'host us':>8} {'kernels':>8} {'cache hit %':>12}")
    for r in rows:
        hit = "-" if r["cache_hit_pct"] is None else f"{r['cache_hit_pct']:.1f}"
        print(f"{r['m']:>5} {r['n']:>6} {r['k']:>6}  {r['call']:<34} {r['host_us']:>8.2f} {r['kernels']:>8} {hit:>12}")
    write_csv(rows, args.csv)
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
