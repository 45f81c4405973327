# SPDX-License-Identifier: Apache-2.0
"""What the benchmarks (benchmarks/*.py) share: device timing (CUDA-graph replay, `launches` calls per graph; median
of `iters`), host time per call, the device banner, GPT-OSS-shaped random weights, the CSV and the PNG plot.

Kept in the package (not beside the scripts) so that each benchmark runs as a plain script,
`python benchmarks/bench_x.py`, importing the installed package only: no `sys.path` edits."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

import torch


def time_ms(fn: Callable[[], object], iters: int, graph: bool = True, launches: int = 1) -> float:
    """Median milliseconds per call of `fn` over `iters` timed runs.

    graph=True times CUDA-graph replays of `launches` back-to-back calls captured in one graph, divided by
    `launches`. Events around the replay of a one-call graph on an idle GPU also hold the graph's submission latency
    (10-20 us on an H200, varying from run to run), which swamps a microsecond kernel; spread over `launches` calls it
    leaves the kernel's device time plus the gap between kernels in a graph, which is how the kernel runs inside a
    captured model. graph=False times eager calls (`launches` must be 1).
    """
    if launches < 1 or (launches > 1 and not graph):
        raise ValueError(f"launches must be >= 1, and 1 without a graph; got {launches} (graph={graph})")
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    run = fn
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(launches):
                fn()
        run = g.replay
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / launches)
    return sorted(times)[len(times) // 2]


def write_csv(rows: list[dict], path: str | Path) -> None:
    """`rows` (dicts with the same keys) as a CSV at `path`, its folder created."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


def plot_panels(panels: dict[str, dict[str, list[tuple[float, float]]]], path: Path, title: str, xlabel: str,
                ylabel: str, log_y: bool = False) -> None:
    """One subplot per panel, one line per series ({panel: {series: [(x, y), ...]}}), log2 x axis; a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG")
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items(), strict=True):
        for name, pts in sorted(series.items()):
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def host_us(fn: Callable[[], object], calls: int, warmup: int = 1) -> float:
    """Host microseconds per call of `fn` over `calls` back-to-back calls after `warmup` calls (the device is drained
    before the clock starts, and after it stops so the next measurement starts idle)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def device_banner() -> tuple[str, tuple[int, int], str] | None:
    """`our_kernels_mode()` after printing the device line; None (after saying so) without a CUDA GPU."""
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to benchmark")
        return None
    device, cc, mode = our_kernels_mode()
    print(f"device: {device} (compute capability {cc[0]}.{cc[1]}); torch {torch.__version__}")
    return device, cc, mode


def checkpoint_weights(num_e: int, hidden: int = 2880, inter: int = 2880, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random GPT-OSS-layout MXFP4 experts (checkpoint layout, linear scales 2^-7..2^-3 that keep activations in
    range) on the GPU: the weights bench_moe times and moe_accuracy's "bench_moe" data set."""
    g = torch.Generator(device="cuda").manual_seed(seed)

    def u8(lo: int, hi: int, *shape: int) -> torch.Tensor:
        return torch.randint(lo, hi, shape, generator=g, device="cuda", dtype=torch.int32).to(torch.uint8)

    return {"w13": u8(0, 256, num_e, 2 * inter, hidden // 2), "w13_scale": u8(120, 125, num_e, 2 * inter, hidden // 32),
            "w13_bias": (torch.randn(num_e, 2 * inter, generator=g, device="cuda") * 0.1).bfloat16(),
            "w2": u8(0, 256, num_e, hidden, inter // 2), "w2_scale": u8(120, 125, num_e, hidden, inter // 32),
            "w2_bias": (torch.randn(num_e, hidden, generator=g, device="cuda") * 0.1).bfloat16()}


def our_kernels_mode() -> tuple[str, tuple[int, int], str]:
    """(device name, compute capability, how our kernels run here): "native" on SM12x, "emulated" on an H100
    with FLASHINFER_SM12X_EMULATE=1 (correctness only, never timed), else "no"."""
    import os

    cc = torch.cuda.get_device_capability()
    mode = ("native" if cc[0] == 12 else
            "emulated" if cc == (9, 0) and os.environ.get("FLASHINFER_SM12X_EMULATE") == "1" else "no")
    return torch.cuda.get_device_name(), cc, mode
