#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Benchmark mm_fp4 on layer shapes of GPT-OSS-120B/20B and Llama-70B and an M sweep.

Backends: ours (auto and each tactic), FlashInfer cudnn (MXFP4; needs cuDNN >= 9.14), b12x (MXFP4), cutlass
(NVFP4) and, with FlashInfer >= 0.7.4, its SM12x cute-dsl (NVFP4, 64-row decode tiles), torch bf16. Prints the
device, the shapes and a table (TFLOPS, % of the device's dense FP4 peak, speed-up vs cudnn); writes CSV and a PNG.
A backend that cannot run on this GPU is reported with the reason and the rest run. On a GPU without native SM12x
MMA (e.g. an H200 with FLASHINFER_SM12X_EMULATE=1) our path is checked for correctness only: an emulated time is
never reported as a speed.

    python benchmarks/bench_mm_fp4.py                 # full
    python benchmarks/bench_mm_fp4.py --quick         # a few shapes
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from flashinfer_sm12x import mm_fp4
from flashinfer_sm12x.formats import mxfp4_quantize, nvfp4_quantize
from flashinfer_sm12x.kernels.mm_fp4 import heuristic
from flashinfer_sm12x.ops.mm_fp4 import run_tactic, validate
from flashinfer_sm12x.testing.benchmarking import device_banner, plot_panels, time_ms
from flashinfer_sm12x.testing.gemm_reference import mm_fp4_reference

# Dense FP4 peaks (TFLOPS; datasheet "AI TOPS" are 2:4 sparse, halved) and bf16 for other GPUs.
FP4_PEAK = {"RTX 5090": 1676, "RTX PRO 6000": 2015, "GB10": 500}
BF16_PEAK = {"H100": 989, "H200": 989}

LAYERS = {  # name: (N, K) of y = x W^T
    "gpt-oss qkv": (5120, 2880),
    "gpt-oss o_proj": (2880, 4096),
    "gpt-oss lm_head": (201088, 2880),
    "llama-70b qkv": (10240, 8192),
    "llama-70b o_proj": (8192, 8192),
    "llama-70b gate_up": (57344, 8192),
    "llama-70b down": (8192, 28672),
}
M_SWEEP = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
QUICK_LAYERS = ["gpt-oss qkv", "llama-70b o_proj"]
QUICK_M = [1, 16, 128, 1024, 4096]


@dataclass
class Row:
    layer: str
    m: int
    n: int
    k: int
    backend: str
    ms: float | None = None
    note: str = ""

    @property
    def tflops(self) -> float | None:
        return None if self.ms is None else 2 * self.m * self.n * self.k / self.ms / 1e9


def peak_for(name: str) -> tuple[str, float] | None:
    for key, peak in FP4_PEAK.items():
        if key in name:
            return "FP4", peak
    for key, peak in BF16_PEAK.items():
        if key in name:
            return "BF16", peak
    return None


def bench_shape(layer: str, m: int, n: int, k: int, native: bool, emulated: bool, iters: int) -> list[Row]:
    rows: list[Row] = []
    x, w = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
    a, a_sf = mxfp4_quantize(x)
    b, b_sf = mxfp4_quantize(w)
    mx = (a, b.T, a_sf, b_sf.T)
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")

    def ours(tactic_index: int | None) -> Callable[[], object]:
        if tactic_index is None:
            return lambda: mm_fp4(*mx, out=out, block_size=32, use_nvfp4=False, backend="cutlass_sm12x")
        p = validate(*mx, None, torch.bfloat16, out, 32, False, False)
        tactic = heuristic(m, n, k)[tactic_index]
        return lambda: run_tactic(p, tactic)

    if native or emulated:
        ref = mm_fp4_reference(*mx, None, torch.float64, 32, False) if m * n <= 2**26 else None
        for name, idx in [("sm12x auto", None)] + [(f"sm12x {t.name}", i)
                                                  for i, t in enumerate(heuristic(m, n, k))]:
            row = Row(layer, m, n, k, name)
            try:
                fn = ours(idx)
                fn()
                torch.cuda.synchronize()
                if ref is not None:
                    err = ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
                    row.note = f"max rel err {err:.1e}"
                if native:
                    row.ms = time_ms(fn, iters)
                else:
                    row.note += "; emulated MMA: correctness only, not timed"
            except Exception as exc:
                row.note = f"failed: {str(exc).splitlines()[0][:100]}"
            rows.append(row)
    else:
        rows.append(Row(layer, m, n, k, "sm12x", note="needs an SM120/SM121 GPU"))

    try:
        import flashinfer
    except Exception as exc:
        flashinfer = None
        fi_error = f"flashinfer not importable: {exc}"
    for backend in ("cudnn", "b12x", "cutlass", "cute-dsl"):
        nvfp4_only = backend in ("cutlass", "cute-dsl")  # upstream's CUTLASS and SM12x cute-dsl reject MXFP4
        row = Row(layer, m, n, k, f"flashinfer {backend}" + (" (nvfp4)" if nvfp4_only else ""))
        if flashinfer is None:
            row.note = fi_error
            rows.append(row)
            continue
        try:
            if nvfp4_only:  # compare on NVFP4
                gx, gw = 448 * 6 / x.abs().amax(), 448 * 6 / w.abs().amax()
                an, an_sf = nvfp4_quantize(x, gx)
                bn, bn_sf = nvfp4_quantize(w, gw)
                alpha = (1 / (gx * gw)).reshape(1).float()
                fn = partial(flashinfer.mm_fp4, an, bn.T, an_sf, bn_sf.T, alpha, torch.bfloat16, out,
                             backend=backend)
            else:
                fn = partial(flashinfer.mm_fp4, *mx, None, torch.bfloat16, out, block_size=32, use_nvfp4=False,
                             backend=backend)
            fn()
            torch.cuda.synchronize()
            row.ms = time_ms(fn, iters)
        except Exception as exc:
            row.note = f"unavailable here: {str(exc).splitlines()[0][:100]}"
        rows.append(row)

    xb, wb = x.bfloat16(), w.bfloat16()
    rows.append(Row(layer, m, n, k, "torch bf16", time_ms(lambda: torch.matmul(xb, wb.T, out=out), iters)))
    return rows


def print_table(rows: list[Row], peak: tuple[str, float] | None) -> None:
    cudnn = {(r.layer, r.m): r.ms for r in rows if r.backend == "flashinfer cudnn" and r.ms}
    head = f"{'layer':<18} {'M':>5} {'N':>6} {'K':>6} {'backend':<30} {'ms':>9} {'TFLOPS':>8}"
    head += f" {'%' + peak[0] + ' peak':>10}" if peak else ""
    print(head + f" {'vs cudnn':>8}  note")
    for r in rows:
        ms = f"{r.ms:.4f}" if r.ms else "-"
        tf = f"{r.tflops:.1f}" if r.tflops else "-"
        line = f"{r.layer:<18} {r.m:>5} {r.n:>6} {r.k:>6} {r.backend:<30} {ms:>9} {tf:>8}"
        if peak:
            line += f" {100 * r.tflops / peak[1]:>9.1f}%" if r.tflops else f" {'-':>10}"
        base = cudnn.get((r.layer, r.m))
        line += f" {base / r.ms:>7.2f}x" if base and r.ms else f" {'-':>8}"
        print(line + f"  {r.note}")


def plot(rows: list[Row], path: Path, device: str) -> None:
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in rows:
        if r.tflops:
            panels.setdefault(r.layer, {}).setdefault(r.backend, []).append((r.m, r.tflops))
    plot_panels(dict(sorted(panels.items())), path, f"mm_fp4 on {device}", "M (tokens)", "TFLOPS")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two layers, five M values")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--csv", default="bench_mm_fp4.csv")
    parser.add_argument("--png", default="bench_mm_fp4.png")
    args = parser.parse_args()
    banner = device_banner()
    if banner is None:
        return 1
    device, _, mode = banner
    native, emulated = mode == "native", mode == "emulated"
    peak = peak_for(device)
    print("our kernels: " + ("native" if native else "emulated MMA, correctness only" if emulated else
                             "not runnable on this GPU"))
    layers = QUICK_LAYERS if args.quick else list(LAYERS)
    ms = QUICK_M if args.quick else M_SWEEP
    print("shapes: " + ", ".join(f"{name} N={LAYERS[name][0]} K={LAYERS[name][1]}" for name in layers)
          + f"; M in {ms}")
    rows: list[Row] = []
    for layer in layers:
        n, k = LAYERS[layer]
        for m in ms:
            print(f"  {layer} M={m} ...", flush=True)
            rows += bench_shape(layer, m, n, k, native, emulated, args.iters)
    print_table(rows, peak)
    with open(args.csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["device", "layer", "m", "n", "k", "backend", "ms", "tflops", "note"])
        for r in rows:
            writer.writerow([device, r.layer, r.m, r.n, r.k, r.backend, r.ms, r.tflops, r.note])
    print(f"wrote {args.csv}")
    plot(rows, Path(args.png), device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
