#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Benchmark the GPT-OSS MoE layer (E experts, top-4, hidden = intermediate = 2880) over a token sweep.

Backends: ours (W4A4 and W4A8 fused_moe, and the FlashInfer-compatible cutlass_fused_moe entry), FlashInfer's
cutlass_fused_moe with its MXFP4 W4A8 convention, FlashInfer's b12x MXFP4 MoE (no expert biases: compared
against a bias-free reference), and a torch bf16 baseline on dequantized weights (torch._grouped_mm). Each row
that runs is checked against the float64 GPT-OSS reference (relative L2) for T <= --check-max-tokens. Prints the
device, the shapes and a table (ms, TFLOPS, speed-up vs FlashInfer CUTLASS W4A8); writes CSV and a PNG. A
backend that cannot run on this GPU is listed with the reason. On an H100/H200 with FLASHINFER_SM12X_EMULATE=1 our
W4A4 and W4A8 paths are checked for correctness only: an emulated time is never a speed.

    python benchmarks/bench_moe.py                  # GPT-OSS-20B and -120B, T in 1..8192
    python benchmarks/bench_moe.py --quick          # fewer token counts
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flashinfer_sm12x import cutlass_fused_moe, fused_moe
from flashinfer_sm12x.formats import mxfp4_dequantize, mxfp8_quantize
from flashinfer_sm12x.formats.scale_layout import SfLayout
from flashinfer_sm12x.moe import gpt_oss_moe_reference, prepare_gpt_oss_weights, route
from flashinfer_sm12x.testing.benchmarking import checkpoint_weights, device_banner, plot_panels, time_ms

MODELS = {"gpt-oss-20b": 32, "gpt-oss-120b": 128}  # experts; both: H = I = 2880, top-4
H = INTER = 2880
TOP_K = 4
TOKENS = [1, 4, 16, 64, 256, 1024, 4096, 8192]
QUICK_TOKENS = [1, 64, 1024]
REFERENCE = "flashinfer cutlass w4a8"


@dataclass
class Row:
    model: str
    tokens: int
    backend: str
    ms: float | None = None
    rel_l2: float | None = None
    note: str = ""

    @property
    def tflops(self) -> float | None:
        flops = 2 * self.tokens * TOP_K * (H * 2 * INTER + INTER * H)
        return None if self.ms is None else flops / self.ms / 1e9


def bf16_moe(raw: dict[str, torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A bf16 baseline: weights dequantized once, rows grouped by expert, torch._grouped_mm for both GEMMs."""
    num_e = raw["w13"].shape[0]
    w13 = torch.stack([mxfp4_dequantize(raw["w13"][e], raw["w13_scale"][e], SfLayout.layout_linear).bfloat16()
                       for e in range(num_e)]).transpose(1, 2)  # [E, H, 2I]
    w2 = torch.stack([mxfp4_dequantize(raw["w2"][e], raw["w2_scale"][e], SfLayout.layout_linear).bfloat16()
                      for e in range(num_e)]).transpose(1, 2)  # [E, I, H]
    b13, b2 = raw["w13_bias"].float(), raw["w2_bias"].float()

    def run(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        order = torch.sort(flat, stable=True).indices
        expert = flat[order].long()
        offs = torch.searchsorted(flat[order], torch.arange(1, num_e + 1, device=x.device, dtype=flat.dtype))
        xs = x.index_select(0, order // TOP_K)
        h = torch._grouped_mm(xs, w13, offs=offs.int()).float() + b13.index_select(0, expert)
        gate, up = h[:, 0::2].clamp(max=7.0), h[:, 1::2].clamp(-7.0, 7.0)
        a = ((up + 1) * gate * torch.sigmoid(1.702 * gate)).bfloat16()
        y = torch.empty(flat.numel(), H, device=x.device)
        y[order] = torch._grouped_mm(a, w2, offs=offs.int()).float() + b2.index_select(0, expert)
        return (y.view(-1, TOP_K, H) * weights.unsqueeze(2)).sum(1).bfloat16()

    return run


@dataclass
class Setup:
    model: str
    num_e: int
    raw: dict[str, torch.Tensor]
    w4: object
    w8: object
    fi_moe: object | None
    fi_error: str
    baseline: Callable | None
    ours: str


def bench_model(model: str, num_e: int, tokens: list[int], ours: str, iters: int, check_max: int) -> list[Row]:
    raw = checkpoint_weights(num_e, H, INTER)
    try:
        import flashinfer.fused_moe as fi_moe
        fi_error = ""
    except Exception as exc:  # the H100 machine has no flashinfer
        fi_moe, fi_error = None, f"flashinfer not importable: {str(exc).splitlines()[0][:80]}"
    setup = Setup(model, num_e, raw, prepare_gpt_oss_weights(**raw, pad_to=128),
                  prepare_gpt_oss_weights(**raw, pad_to=128, interleaved=False, up_first=True, act="mxfp8"),
                  fi_moe, fi_error, bf16_moe(raw) if hasattr(torch, "_grouped_mm") else None, ours)
    rows: list[Row] = []
    for t in tokens:
        print(f"  {model} T={t} ...", flush=True)
        rows += bench_tokens(setup, t, iters, t <= check_max)
    return rows


def bench_tokens(s: Setup, t: int, iters: int, check: bool) -> list[Row]:
    g = torch.Generator(device="cuda").manual_seed(t)
    x = torch.randn(t, H, generator=g, device="cuda").bfloat16()
    ids, weights = route(torch.randn(t, s.num_e, generator=g, device="cuda"), TOP_K)
    ref = gpt_oss_moe_reference(x, (ids, weights), **s.raw, act_quant=None) if check else None
    w4, w8, num_e, fi_moe = s.w4, s.w8, s.num_e, s.fi_moe
    hp = w8.hidden_size_padded
    per_e = {k: torch.full((num_e,), v, device="cuda") for k, v in
             (("swiglu_alpha", 1.702), ("swiglu_beta", 1.0), ("swiglu_limit", 7.0))}
    quant_scales = w8.flashinfer_quant_scales()
    ones = torch.ones(num_e, device="cuda")

    def fi_convention(fn: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            xq, xsf = mxfp8_quantize(torch.nn.functional.pad(x, (0, hp - H)), True, 32)
            return fn(xq, ids, weights, w8.w13, w8.w2, torch.bfloat16, quant_scales, w8.w13_bias, w8.w2_bias,
                      xsf, use_mxfp8_act_scaling=True, **per_e)[:, :H]
        return call

    ours_runs = "" if s.ours in ("native", "emulated") else "needs an SM120/SM121 GPU"
    cases: list[tuple[str, Callable[[], torch.Tensor] | None, str]] = [
        ("sm12x fused_moe w4a4", lambda: fused_moe(x, (ids, weights), w4, validate_ids=False), ours_runs),
        ("sm12x fused_moe w4a8", lambda: fused_moe(x, (ids, weights), w8, validate_ids=False), ours_runs),
        ("sm12x cutlass_fused_moe w4a8", fi_convention(cutlass_fused_moe), ours_runs),
        (REFERENCE, fi_convention(fi_moe.cutlass_fused_moe) if fi_moe else None, s.fi_error),
        ("flashinfer b12x mxfp4 (no biases)", None if fi_moe is None else lambda: fi_moe.b12x_fused_moe(
            x, w8.w13, w8.w13_sf, w8.w2, w8.w2_sf, ids, weights, num_e, TOP_K, w1_alpha=ones, w2_alpha=ones,
            activation="swigluoai_uninterleave", swiglu_limit=7.0, quant_mode="mxfp4"), s.fi_error),
        ("torch bf16 (_grouped_mm)", None if s.baseline is None else lambda: s.baseline(x, ids, weights),
         "" if s.baseline else "torch._grouped_mm not available"),
    ]
    rows = []
    for name, fn, why_not in cases:
        row = Row(s.model, t, name, note=why_not)
        rows.append(row)
        if fn is None or why_not:
            continue
        try:
            out = fn()
            torch.cuda.synchronize()
            want = ref
            if "no biases" in name and check:
                want = gpt_oss_moe_reference(x, (ids, weights), **{**s.raw, "w13_bias": None, "w2_bias": None},
                                             act_quant=None)
            if want is not None:
                row.rel_l2 = float((out.double() - want).norm() / want.norm())
            if name.startswith("sm12x") and s.ours == "emulated":
                row.note = "emulated MMA: correctness only, not timed"
            else:
                row.ms = time_ms(fn, iters, graph=not name.startswith("torch"))
        except Exception as exc:
            row.note = f"unavailable here: {str(exc).splitlines()[0][:100]}"
    return rows


def print_table(rows: list[Row]) -> None:
    base = {(r.model, r.tokens): r.ms for r in rows if r.backend == REFERENCE and r.ms}
    print(f"{'model':<13} {'T':>5} {'backend':<36} {'ms':>9} {'TFLOPS':>8} {'rel L2':>9} {'vs FI w4a8':>10}  note")
    for r in rows:
        ms = f"{r.ms:.4f}" if r.ms else "-"
        tf = f"{r.tflops:.1f}" if r.tflops else "-"
        err = f"{r.rel_l2:.2e}" if r.rel_l2 is not None else "-"
        b = base.get((r.model, r.tokens))
        speed = f"{b / r.ms:.2f}x" if b and r.ms else "-"
        print(f"{r.model:<13} {r.tokens:>5} {r.backend:<36} {ms:>9} {tf:>8} {err:>9} {speed:>10}  {r.note}")


def plot(rows: list[Row], path: Path, device: str) -> None:
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in rows:
        if r.ms:
            title = f"{r.model} (E={MODELS[r.model]}, top-{TOP_K}, H=I={H})"
            panels.setdefault(title, {}).setdefault(r.backend, []).append((r.tokens, r.ms))
    plot_panels(panels, path, f"GPT-OSS MoE layer on {device}", "tokens", "ms per MoE layer", log_y=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"tokens {QUICK_TOKENS}")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--check-max-tokens", type=int, default=1024, help="largest T checked against float64")
    parser.add_argument("--csv", default="bench_moe.csv")
    parser.add_argument("--png", default="bench_moe.png")
    args = parser.parse_args()
    banner = device_banner()
    if banner is None:
        return 1
    device, _, ours = banner
    tokens = QUICK_TOKENS if args.quick else TOKENS
    print(f"our kernels: {ours}; shapes: " + ", ".join(f"{m} E={MODELS[m]}" for m in args.models.split(","))
          + f", top-{TOP_K}, H=I={H} (padded to 2944); T in {tokens}")
    rows: list[Row] = []
    for model in args.models.split(","):
        rows += bench_model(model, MODELS[model], tokens, ours, args.iters, args.check_max_tokens)
        torch.cuda.empty_cache()
    print_table(rows)
    with open(args.csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["device", "model", "tokens", "backend", "ms", "tflops", "rel_l2", "note"])
        for r in rows:
            writer.writerow([device, r.model, r.tokens, r.backend, r.ms, r.tflops, r.rel_l2, r.note])
    print(f"wrote {args.csv}")
    plot(rows, Path(args.png), device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
