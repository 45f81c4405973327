#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Benchmark the fused MoE's glue kernels (plan, scatter, plan_scatter, activation, finalize) at GPT-OSS-20B sizes
(E = 32, top-4, H = I = 2880, W4A4) over T.

Per T it prints and writes (CSV + PNG under benchmarks/results):
- device kernels per forward (torch.profiler), impl="kernels" vs impl="reference" (the torch pipeline), and which
  plan path the forward takes (plan_scatter at decode sizes, plan + scatter beyond);
- host time per eager call (CPU time to submit one forward, measured over back-to-back calls before the sync);
- each glue kernel's time, two ways: its device duration from the GPU's activity records (torch.profiler, median
  over back-to-back calls: the kernel alone) and CUDA-graph replay of --launches back-to-back calls per graph, per
  call, median (a one-call graph's events also hold the graph's submission latency); and its bytes moved (routed
  rows only: padding rows' data is not rewritten), as a fraction of the device copy bandwidth measured in the same
  run (a torch clone of 512 MiB); plan_scatter (the fused kernel, at T <= 128, whichever path the forward takes)
  next to "plan+scatter" (the two kernels back to back in one graph): where the first is faster is where
  ops/moe_glue.py should fuse;
- the glue chain's latency at T = 1 (the glue kernels the forward runs, back to back, GEMMs excluded).
The glue kernels have no block-scaled MMA: on an H200 (FLASHINFER_SM12X_EMULATE=1 maps it to the sm_90a build) they
are native SM90 kernels and their times are real H200 figures. The GEMMs in between are emulated there: no forward
time is reported as a speed, only the glue.

    FLASHINFER_SM12X_EMULATE=1 python benchmarks/bench_moe_glue.py [--tokens 1,8,32,64,128,1024,8192]
"""

from __future__ import annotations

import argparse
import csv
import datetime
from pathlib import Path

import torch

from flashinfer_sm12x.jit.arch import device_facts
from flashinfer_sm12x.kernels.moe_glue import FUSED_MAX_PAIRS, FUSED_MAX_TOKENS
from flashinfer_sm12x.moe.fused_moe import fused_moe
from flashinfer_sm12x.moe.pipeline import glue_views, row_plan
from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
from flashinfer_sm12x.ops.moe_glue import glue_module
from flashinfer_sm12x.testing.benchmarking import host_us, plot_panels, time_ms
from flashinfer_sm12x.testing.moe_cases import make_inputs, make_weights
from flashinfer_sm12x.testing.profiling import kernel_durations_us, kernel_launches

NUM_E, TOP_K, H = 32, 4, 2880


def copy_bandwidth() -> float:
    """Device copy bandwidth in bytes/s (read + write of a 512 MiB clone)."""
    x = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
    ms = time_ms(lambda: x.clone(), 20, graph=False)
    return 2 * x.numel() / (ms * 1e-3)


def measure(num_t: int, w, module, target, bw: float, iters: int, per_graph: int, panels_us: dict,
            panels_frac: dict, glue_only: bool = False) -> dict:
    """One T: launches, host time, each glue kernel's time and bandwidth fraction (printed; returned as a row)."""
    dev, name = torch.device("cuda"), torch.cuda.get_device_name()
    hp, ip = w.hidden_size_padded, w.intermediate_size_padded
    hidden, logits = make_inputs(num_t, H, NUM_E)
    hidden, logits = hidden.cuda().bfloat16(), logits.cuda()

    def forward(impl: str = "kernels", hidden=hidden, logits=logits) -> torch.Tensor:
        return fused_moe(hidden, logits, w, top_k=TOP_K, impl=impl)

    if glue_only:  # the glue kernels alone: no GEMM module is loaded (nor needed)
        launches = torch_launches = -1
        host = float("nan")
    else:
        forward()
        launches = kernel_launches(forward)
        torch_launches = kernel_launches(lambda: forward("reference"))
        host = host_us(forward, 50)
    plan = row_plan(num_t, TOP_K, NUM_E, "mxfp4", None, target, device_facts(dev).sm_count)
    v = glue_views(dev, plan, hp, ip, "mxfp4")
    tm, pairs = plan.tactic.tile_m, num_t * TOP_K
    out = hidden.new_empty(num_t, H)
    plan_bytes = num_t * NUM_E * 4 + pairs * 12 + plan.tiles * 4
    scatter_bytes = pairs * H * 2 + pairs * hp // 2 + v.x_sf.numel() + pairs * 16
    kernels = {
        "plan": (lambda: module.plan_logits(logits, v.workspace, TOP_K, tm, plan.tiles), plan_bytes),
        "scatter": (lambda: module.scatter(hidden, v.workspace, v.x, v.x_sf, TOP_K, NUM_E, hp, tm, plan.bound),
                    scatter_bytes),
        "plan_scatter": (lambda: module.plan_scatter(logits, None, hidden, None, True, v.workspace, v.x, v.x_sf,
                                                     TOP_K, NUM_E, hp, tm, plan.bound, 0, NUM_E, False),
                         plan_bytes + scatter_bytes),
        "activation": (lambda: module.activation(v.h, v.workspace, v.a, v.a_sf, num_t, TOP_K, NUM_E, tm, 0, True,
                                                 None, w.w13_bias, None, None, None, 1.702, 1.0, 7.0, True),
                       pairs * 2 * ip * 2 + pairs * ip // 2 + v.a_sf.numel() + pairs * 8),
        "finalize": (lambda: module.finalize(v.y, v.workspace, out, TOP_K, NUM_E, tm,
                                             None, w.w2_bias),
                     pairs * H * 2 * 2 + num_t * H * 2 + pairs * 12),
    }
    fused_fits = num_t <= FUSED_MAX_TOKENS and pairs <= FUSED_MAX_PAIRS
    row = {"device": name, "T": num_t, "kernels": launches, "torch_kernels": torch_launches,
           "plan_path": "plan_scatter" if plan.fused_plan_scatter else "plan+scatter",
           "host_us": round(host, 1), "copy_GBps": round(bw / 1e9)}
    cells = []
    for kname, (fn, nbytes) in kernels.items():
        if kname == "plan_scatter" and not fused_fits:
            cells.append(f"{'-':>13} {'-':>5}")
            continue
        us = time_ms(fn, iters, launches=per_graph) * 1e3
        durations = sorted(kernel_durations_us(fn, 20))
        kernel_us = durations[len(durations) // 2]
        frac = nbytes / (kernel_us * 1e-6) / bw
        row[f"{kname}_us"], row[f"{kname}_kernel_us"] = round(us, 2), round(kernel_us, 2)
        row[f"{kname}_bytes"], row[f"{kname}_frac_bw"] = nbytes, round(frac, 3)
        panels_us["kernel time (us)"].setdefault(kname, []).append((num_t, kernel_us))
        panels_frac["fraction of copy bandwidth"].setdefault(kname, []).append((num_t, frac))
        cells.append(f"{kernel_us:6.1f}/{us:6.1f} {100 * frac:5.1f}")

    def two_kernels() -> None:
        kernels["plan"][0]()
        kernels["scatter"][0]()

    two_us = time_ms(two_kernels, iters, launches=per_graph) * 1e3
    row["plan+scatter_us"] = round(two_us, 2)
    panels_us["kernel time (us)"].setdefault("plan+scatter (2 kernels)", []).append((num_t, two_us))
    cells.append(f"{two_us:15.1f}")
    if num_t == 1:
        first = ["plan_scatter"] if plan.fused_plan_scatter else ["plan", "scatter"]
        chain_fns = [kernels[n][0] for n in (*first, "activation", "finalize")]

        def chain() -> None:
            for fn in chain_fns:
                fn()
        row["glue_chain_us_T1"] = round(time_ms(chain, iters, launches=per_graph) * 1e3, 2)
        row["glue_chain_kernels_T1"] = len(chain_fns)
    print(f"{num_t:>6} {launches:>8} {torch_launches:>6} {row['plan_path']:>13} {host:8.1f} " + " ".join(cells))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1,8,32,64,128,1024,8192")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--launches", type=int, default=10,
                        help="calls per CUDA graph in the kernel timings (amortizes the graph's submission latency)")
    parser.add_argument("--glue-only", action="store_true",
                        help="time the glue kernels only (no fused_moe forward: launches and host time not measured)")
    parser.add_argument("--csv", type=Path, default=None, help="CSV path (default: benchmarks/results/<name>.csv)")
    parser.add_argument("--png", type=Path, default=None, help="PNG path (default: next to the CSV)")
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name()
    target = device_facts(dev).target
    print(f"device: {name} (CC {torch.cuda.get_device_capability()}), glue build {target.name}")
    print(f"shapes: E = {NUM_E}, top-{TOP_K}, H = I = {H} (padded 2944), W4A4, hidden bf16, T in {tokens}")
    raw = {k: v.cuda() for k, v in make_weights(NUM_E, H, H).items()}
    w = prepare_gpt_oss_weights(**raw, pad_to=128, act="mxfp4")
    bw = copy_bandwidth()
    print(f"device copy bandwidth (same run): {bw / 1e9:.0f} GB/s")
    module = glue_module(dev, "mxfp4")
    rows, panels_us, panels_frac = [], {"kernel time (us)": {}}, {"fraction of copy bandwidth": {}}
    header = f"{'T':>6} {'kernels':>8} {'torch':>6} {'plan path':>13} {'host us':>8} " + " ".join(
        f"{k + ' us':>13} {'%bw':>5}" for k in ("plan", "scatter", "plan_scatter", "activation", "finalize"))
    print("(each kernel: device duration / per call in a graph of --launches calls, us; %bw of the duration)")
    header += f" {'plan+scatter us':>15}"
    print(header)
    for num_t in tokens:
        rows.append(measure(num_t, w, module, target, bw, args.iters, args.launches, panels_us, panels_frac,
                            args.glue_only))
    for r in rows:
        if "glue_chain_us_T1" in r:
            print(f"glue chain latency at T = 1 ({r['glue_chain_kernels_T1']} kernels, GEMMs excluded): "
                  f"{r['glue_chain_us_T1']} us")
    stem = f"bench_moe_glue_{name.replace(' ', '_').lower()}_{datetime.date.today().isoformat()}"
    csv_path = args.csv or Path(__file__).resolve().parent / "results" / f"{stem}.csv"
    png_path = args.png or csv_path.with_suffix(".png")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("device", "T"), k))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {csv_path}")
    plot_panels({**panels_us, **panels_frac}, png_path,
                f"MoE glue kernels on {name} (E={NUM_E}, top-{TOP_K}, H=I={H})", "tokens T", "", log_y=False)


if __name__ == "__main__":
    main()
