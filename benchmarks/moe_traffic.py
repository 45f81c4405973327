#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Bytes one MoE forward moves through device memory outside the expert weights: fused_moe's kernel pipeline (GEMM1
with the activation fused, and unfused) against FlashInfer's cutlass_fused_moe pipeline, on the same shapes.

A model, not a measurement: each kernel's reads and writes of activations, intermediates, scales, routing tables and
output, computed from the shapes (what the kernels are written to touch; caches ignored). Weights (and their scales,
and the per-expert biases) are the same for every pipeline and left out. Our GEMMs run over the padded bound the host
sizes the buffers by (each expert's segment padded to the tile height) but read only the T*k routed rows of A: the
routing plan's padded_start / counts bound each tile's A descriptor on the device, and TMA does not fetch rows past
the bound (include/flashinfer_sm12x/common/a_row_bounds.cuh). A's scales keep whole 128-row atoms: every M tile of
the bound, trailing ones included, reads its atoms. With the MoE epilogues (fused) the GEMMs write the T*k routed
rows only, unfused every row. FlashInfer's grouped GEMM runs exact per-expert row
counts (T*k rows; its TMA does not fetch rows past a problem's end). FlashInfer's pipeline as its kernels are
written: the caller quantizes the hidden states (vLLM's MXFP8 path), expandInputRows permutes them (T*k rows),
GEMM1 writes its [T*k, 2I] output in bf16, doActivation reads it and writes the quantized [T*k, I], GEMM2 writes
bf16 [T*k, H], finalizeMoeRouting reduces into [T, H] (its fusion into GEMM2's epilogue, in some SM90+
configurations, is not counted).

    python benchmarks/moe_traffic.py [--arch sm_121a] [--csv PATH] [--png PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flashinfer_sm12x.checks import round_up
from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.moe.pipeline import row_plan
from flashinfer_sm12x.ops.moe_glue import fused_plan_scatter_serves
from flashinfer_sm12x.testing.benchmarking import plot_panels, write_csv

TOKENS = (1, 8, 32, 64, 128, 1024, 8192)
EXPERTS = (32, 128)
TOP_K, H, INTER = 4, 2880, 2880
ACTS = {"mxfp8": 1.0, "mxfp4": 0.5}  # bytes per activation element
BF16 = 2


def scales(rows: int, cols: int) -> int:
    """E8M0 scale bytes of [rows, cols] in the 128x4 layout."""
    return round_up(rows, 128) * round_up(cols // 32, 4)


def ours(num_t: int, num_e: int, act: str, fused: bool, arch: str) -> dict[str, int]:
    """Bytes per kernel of fused_moe's pipeline (H, I padded to 128 multiples, as prepare_gpt_oss_weights pads)."""
    b = ACTS[act]
    hp, ip, pairs = round_up(H, 128), round_up(INTER, 128), num_t * TOP_K
    plan = row_plan(num_t, TOP_K, num_e, "mxfp4" if act == "mxfp4" else "mxfp8_mxfp4", None, parse_target(arch))
    rows = plan.bound
    routing = num_t * num_e * 4 + pairs * 4 * 4 + num_e * 3 * 4 + plan.tiles * 4  # logits, ids/weights/rank/dest...
    scatter = pairs * H * BF16 + int(pairs * hp * b) + scales(rows, hp)  # gather, quantized rows, every scale row
    kernels = {"plan_scatter" if fused_plan_scatter_serves(num_t, TOP_K, num_e) else "plan + scatter":
               routing + scatter}
    # A: the routed rows only (bounded per expert); its scales: the 128-row atoms of every M tile of the bound.
    gemm1_in = int(pairs * hp * b) + scales(rows, hp)
    a_in = int(pairs * ip * b) + scales(rows, ip)
    if fused:  # the MoE epilogues write the routed rows only
        kernels["GEMM1 + activation"] = gemm1_in + int(pairs * ip * b) + pairs * (ip // 32)
        kernels["GEMM2"] = a_in + pairs * hp * BF16
    else:
        kernels["GEMM1"] = gemm1_in + rows * 2 * ip * BF16
        kernels["activation"] = pairs * 2 * ip * BF16 + int(pairs * ip * b) + scales(rows, ip)
        kernels["GEMM2"] = a_in + rows * hp * BF16
    kernels["finalize"] = pairs * H * BF16 + num_t * H * BF16 + pairs * 3 * 4
    return kernels


def launches(kernels: dict[str, int]) -> int:
    """Kernels per forward ("plan + scatter" is two)."""
    return len(kernels) + sum(1 for name in kernels if name == "plan + scatter")


def flashinfer(num_t: int, num_e: int, act: str) -> dict[str, int]:
    """Bytes per kernel of cutlass_fused_moe's pipeline (exact T*k rows; unpadded H, I)."""
    b = ACTS[act]
    pairs = num_t * TOP_K
    return {
        "quantize input (caller)": num_t * H * BF16 + int(num_t * H * b) + scales(num_t, H),
        "expert maps / prefix sums": pairs * 4 * 3 + num_e * 4 * 2,
        "expandInputRows": int(pairs * H * b) * 2 + scales(num_t, H) + scales(pairs, H),
        "GEMM1": int(pairs * H * b) + scales(pairs, H) + pairs * 2 * INTER * BF16,
        "doActivation": pairs * 2 * INTER * BF16 + int(pairs * INTER * b) + scales(pairs, INTER),
        "GEMM2": int(pairs * INTER * b) + scales(pairs, INTER) + pairs * H * BF16,
        "finalizeMoeRouting": pairs * H * BF16 + num_t * H * BF16 + pairs * 3 * 4,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sm_121a", help="the target whose grouped tactic sets the padding")
    parser.add_argument("--csv", default="benchmarks/results/moe_traffic.csv")
    parser.add_argument("--png", default="benchmarks/results/moe_traffic.png")
    args = parser.parse_args()
    print(f"bytes per forward outside the weights (model), E in {EXPERTS}, top-{TOP_K}, H = I = {H}, tiles of "
          f"{args.arch}")
    print(f"{'E':>4} {'T':>5} {'act':<6} {'ours fused':>12} {'ours unfused':>13} {'FlashInfer':>12} "
          f"{'fused/FI':>9}  kernels (ours fused / FI)")
    rows = []
    for num_e in EXPERTS:
        for act in ACTS:
            for num_t in TOKENS:
                fused, unfused = ours(num_t, num_e, act, True, args.arch), ours(num_t, num_e, act, False, args.arch)
                fi = flashinfer(num_t, num_e, act)
                total = {"fused": sum(fused.values()), "unfused": sum(unfused.values()), "fi": sum(fi.values())}
                print(f"{num_e:>4} {num_t:>5} {act:<6} {total['fused']:>12,} {total['unfused']:>13,} "
                      f"{total['fi']:>12,} {total['fused'] / total['fi']:>9.2f}  {launches(fused)} / {launches(fi)}")
                rows.append({"experts": num_e, "tokens": num_t, "act": act, "ours_fused_bytes": total["fused"],
                             "ours_unfused_bytes": total["unfused"], "flashinfer_bytes": total["fi"],
                             "ours_fused_kernels": launches(fused), "flashinfer_kernels": launches(fi),
                             "ours_fused_breakdown": "; ".join(f"{k}={v}" for k, v in fused.items()),
                             "flashinfer_breakdown": "; ".join(f"{k}={v}" for k, v in fi.items())})
    write_csv(rows, args.csv)
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {f"E = {num_e}": {} for num_e in EXPERTS}
    for r in rows:
        for key in ("ours_fused_bytes", "flashinfer_bytes"):
            name = f"{key.removesuffix('_bytes')} {r['act']}"
            panels[f"E = {r['experts']}"].setdefault(name, []).append((r["tokens"], r[key] / 2**20))
    plot_panels(panels, Path(args.png), "bytes per MoE forward outside the weights (model)", "tokens T",
                "MiB per forward", log_y=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
