#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Benchmark the MXFP4 / MXFP8 / NVFP4 quantizers: our kernels vs the torch reference vs FlashInfer's quantizer.

Shapes: M in {1, 16, 128, 4096, 16384} x K in {2880, 4096, 8192}, bf16 input. Every row reports the device
time (CUDA-graph replay, median), the bandwidth (bytes read + bytes written / time) and its share of a device
copy of the same input (torch .clone(), measured in the same run), and, once per format and backend, the
kernels launched per call (torch.profiler) and the host time per eager call at M = 1. Each of our results is
checked against the reference (bit-exact) before it is timed. A backend that cannot run is listed with the
reason (FlashInfer needs its package and an SM100/SM12x GPU for the FP4 quantizers).

On an H200 run with FLASHINFER_SM12X_EMULATE=1: the quantizer modules are then native sm_90a builds (no emulated
instruction in them), so their times are real H200 figures.

    python benchmarks/bench_quantize.py                 # the full sweep
    python benchmarks/bench_quantize.py --quick         # M in {1, 4096}, K = 4096
"""

from __future__ import annotations

import argparse
import csv
import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flashinfer_sm12x.formats import quantize as reference
from flashinfer_sm12x.formats import swizzled_sf_size
from flashinfer_sm12x.ops import quantize as ops
from flashinfer_sm12x.testing.benchmarking import host_us, plot_panels, time_ms
from flashinfer_sm12x.testing.profiling import kernel_launches

MS = [1, 16, 128, 4096, 16384]
KS = [2880, 4096, 8192]
QUICK_MS, QUICK_KS = [1, 4096], [4096]
FORMATS = ["mxfp4", "mxfp8", "nvfp4"]
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    fmt: str
    m: int
    k: int
    backend: str
    us: float | None = None
    bytes_moved: int = 0
    copy_gbs: float | None = None
    kernels: int | None = None
    host_us: float | None = None
    note: str = ""

    @property
    def gbs(self) -> float | None:
        return None if self.us is None else self.bytes_moved / self.us / 1e3

    @property
    def copy_share(self) -> float | None:
        return None if self.gbs is None or not self.copy_gbs else self.gbs / self.copy_gbs


def output_bytes(fmt: str, m: int, k: int) -> int:
    """Bytes a quantizer writes for a [m, k] input (128x4 scales, padding included)."""
    block = 16 if fmt == "nvfp4" else 32
    data = m * k if fmt == "mxfp8" else m * k // 2
    return data + swizzled_sf_size(m, k // block, "128x4")


def calls(fmt: str, x: torch.Tensor, gs: torch.Tensor) -> dict[str, Callable[[], tuple[torch.Tensor, ...]]]:
    """Our kernel and the torch reference for one format (the reference runs on x's device)."""
    if fmt == "nvfp4":
        return {"sm12x kernel": lambda: ops.nvfp4_quantize(x, gs),
                "torch reference": lambda: reference.nvfp4_quantize(x, gs)}
    ours, theirs = getattr(ops, f"{fmt}_quantize"), getattr(reference, f"{fmt}_quantize")
    return {"sm12x kernel": lambda: ours(x), "torch reference": lambda: theirs(x)}


def flashinfer_call(fmt: str, x: torch.Tensor, gs: torch.Tensor) -> tuple[Callable[[], object] | None, str]:
    try:
        import flashinfer
    except Exception as exc:  # the package is optional
        return None, f"flashinfer not importable ({type(exc).__name__})"
    fn = {"mxfp4": lambda: flashinfer.mxfp4_quantize(x), "mxfp8": lambda: flashinfer.mxfp8_quantize(x),
          "nvfp4": lambda: flashinfer.nvfp4_quantize(x, gs)}[fmt]
    try:
        fn()
        torch.cuda.synchronize()
    except Exception as exc:
        return None, f"flashinfer {fmt}_quantize does not run here: {str(exc).splitlines()[0][:90]}"
    return fn, ""


def timed(fn: Callable[[], object], iters: int, graph: bool, launches: int = 1) -> float:
    """Median device time in microseconds: CUDA-graph replay of `launches` calls for our kernel and the copy; eager
    for the others (the torch reference copies host constants, which a graph capture refuses)."""
    return time_ms(fn, iters, graph=graph, launches=launches if graph else 1) * 1e3


def same(got: object, want: object) -> bool:
    """Bit equality of two (x_q, sf) results."""
    assert isinstance(got, tuple) and isinstance(want, tuple)
    return all(torch.equal(g.view(torch.uint8), w.view(torch.uint8)) for g, w in zip(got, want, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"M {QUICK_MS}, K {QUICK_KS}")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--launches", type=int, default=10,
                        help="calls per CUDA graph for the graph-timed kernels (amortizes the graph's submission)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--csv", default="", help="CSV path (default: results/bench_quantize_<gpu>_<date>.csv)")
    parser.add_argument("--png", default="", help="PNG path (default: beside the CSV)")
    parser.add_argument("--skip-flashinfer", action="store_true",
                        help="do not try FlashInfer's quantizers (their first call may JIT-build for minutes)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    device = torch.device("cuda")
    name, cc = torch.cuda.get_device_name(), torch.cuda.get_device_capability()
    target = ops._target(device)
    if target is None:
        print(f"{name} (CC {cc[0]}.{cc[1]}): no quantizer kernels here (SM12x, or SM90 with "
              "FLASHINFER_SM12X_EMULATE=1)")
        return 1
    print(f"device: {name}, CC {cc[0]}.{cc[1]}, quantizer modules built for {target.name} (native code)")
    ms, ks = (QUICK_MS, QUICK_KS) if args.quick else (MS, KS)
    formats = [f for f in args.formats.split(",") if f]
    print(f"shapes: M {ms} x K {ks}, bf16 input, 128x4 scales; formats {formats}")

    rows: list[Row] = []
    per_call: dict[tuple[str, str], tuple[int | None, float | None]] = {}
    for k in ks:
        for m in ms:
            g = torch.Generator(device="cuda").manual_seed(m * 31 + k)
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16, generator=g)
            gs = (448.0 * 6.0 / x.float().abs().amax()).reshape(1)
            copy_us = timed(lambda x=x: x.clone(), args.iters, graph=True, launches=args.launches)
            copy_bytes = 2 * x.numel() * x.element_size()
            copy_gbs = copy_bytes / copy_us / 1e3
            rows.append(Row("copy", m, k, "torch .clone()", copy_us, copy_bytes, copy_gbs))
            for fmt in formats:
                moved = x.numel() * x.element_size() + output_bytes(fmt, m, k)
                backends: dict[str, Callable[[], object] | None] = dict(calls(fmt, x, gs))  # type: ignore[arg-type]
                fi, why = (None, "skipped (--skip-flashinfer)") if args.skip_flashinfer else flashinfer_call(fmt, x, gs)
                backends["flashinfer"] = fi
                for backend, fn in backends.items():
                    row = Row(fmt, m, k, backend, bytes_moved=moved, copy_gbs=copy_gbs)
                    if fn is None:
                        row.note = why
                    else:
                        ours = backend == "sm12x kernel"
                        if ours and not same(fn(), backends["torch reference"]()):
                            row.note = "MISMATCH vs the reference"
                        row.us = timed(fn, args.iters, graph=ours, launches=args.launches)
                        if not ours:
                            row.note = "eager timing"
                        if m == 1:
                            per_call[(fmt, backend)] = (kernel_launches(fn), host_us(fn, 200, warmup=5))
                    rows.append(row)
    for row in rows:
        if (row.fmt, row.backend) in per_call:
            row.kernels, row.host_us = per_call[(row.fmt, row.backend)]

    print(f"\n{'format':7} {'M':>6} {'K':>5} {'backend':18} {'time us':>9} {'GB/s':>8} {'% copy':>7} "
          f"{'kernels':>7} {'host us':>8}  note")
    for r in rows:
        print(f"{r.fmt:7} {r.m:6d} {r.k:5d} {r.backend:18} "
              f"{'-' if r.us is None else f'{r.us:9.1f}':>9} {'-' if r.gbs is None else f'{r.gbs:8.0f}':>8} "
              f"{'-' if r.copy_share is None else f'{100 * r.copy_share:6.1f}%':>7} "
              f"{'-' if r.kernels is None else r.kernels:>7} {'-' if r.host_us is None else f'{r.host_us:8.1f}':>8}"
              f"  {r.note}")
    print("kernels / host us: one eager call at M = 1 (host us = time for the call to return).")

    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    csv_path = Path(args.csv or RESULTS / f"bench_quantize_{slug}_{datetime.date.today().isoformat()}.csv")
    png_path = Path(args.png) if args.png else csv_path.with_suffix(".png")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["device", "format", "m", "k", "backend", "time_us", "bytes", "gb_per_s", "copy_gb_per_s",
                         "share_of_copy", "kernels_per_call", "host_us_per_call", "note"])
        for r in rows:
            writer.writerow([name, r.fmt, r.m, r.k, r.backend, r.us, r.bytes_moved, r.gbs, r.copy_gbs,
                             r.copy_share, r.kernels, r.host_us, r.note])
    print(f"wrote {csv_path}")
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in rows:
        if r.gbs is None:
            continue
        for fmt in formats if r.fmt == "copy" else [r.fmt]:
            panels.setdefault(fmt, {}).setdefault(f"{r.backend} K={r.k}", []).append((r.m, r.gbs))
    plot_panels(panels, png_path, f"Quantizers on {name} (bf16 input)", "M (rows)", "GB/s", log_y=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
