#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The GPT-OSS MoE split over several processes (one per GPU) and combined over a real collective, against the
single-device layer; and the ops called on a GPU other than the current one.

Sharded runs: every rank builds the same checkpoint from a seed (testing.moe_cases.make_weights), takes its
tensor- or expert-parallel shard as vLLM loads it (testing.moe_shards), runs `fused_moe` on it (float32 out),
and the ranks sum their outputs with all_reduce (float32). Rank 0 compares the sum with the unsharded layer it
computes itself. Modes: "tp" (I split in whole 32-blocks, fc2 bias on rank 0 only), "ep" (contiguous expert
slices, uneven when E % ranks != 0, router logits over all experts) and "ep-skew" (every token routed to the last
top_k experts, so the other ranks, rank 0 included, receive no pair). Each mode runs on every group size in
--ranks (the first r ranks of the world), both activation modes and every T; on GPUs each rank also captures its
fused_moe in a CUDA graph and replays it (bit-equal to the eager call).

    torchrun --nproc-per-node 2 scripts/multi_gpu.py --results benchmarks/results      # NCCL, one GPU per rank
    python scripts/multi_gpu.py --spawn 4 --results benchmarks/results                 # the same, self-launched
    python scripts/multi_gpu.py --device cpu --spawn 3                                 # gloo, impl="reference"
    python scripts/multi_gpu.py --device-checks                                        # one process, >= 2 GPUs
    python scripts/multi_gpu.py --spawn 4 --dry-run                                    # the plan only

On SM90 GPUs set FLASHINFER_SM12X_EMULATE=1 (the SM12x kernels through the emulated MMA atom). On the CPU the
grouped GEMM (a CUDA kernel) is replaced by `testing.moe_cases.grouped_gemm_model`, the float64 model of its
contract, so the glue, the shards and the collective are what is tested there.

Tolerances, relative to max |full layer|: "tp" (r + 1) * 2^-8: each rank's GEMM2 partial product is rounded to
bf16 once (the kernels' GEMM output), as is the full layer's, and a partial may exceed the total, hence 2^-8 and
not the half-ulp 2^-9 per rounding; everything before GEMM2 is bit-identical across ranks (the same 32-blocks,
the same tactic). "ep" / "ep-skew" 2^-8: every (token, expert) pair is computed on exactly one rank from the same
bits as in the full layer, so only the float32 summation order differs (measured ~1e-7); 2^-8 is one bf16 rounding.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

MODES = ("tp", "ep", "ep-skew")
ACTS = ("mxfp4", "mxfp8")
TOKENS = (0, 1, 7, 64, 1024)
# Injected faults (for the self-test that shows the comparison can fail): the fc2 bias loaded on every TP rank,
# rank 0 comparing its own shard's output without the all-reduce, and rank 1's forward raising.
FAULTS = ("bias-every-rank", "no-reduce", "rank1-raises")
SHAPES = {"cuda": (2880, 2880), "cpu": (64, 96)}  # (H, I): GPT-OSS on GPUs, the CPU tests' small layer
CSV_FIELDS = ("mode", "ranks", "act", "tokens", "max_error", "tolerance", "graph", "zero_rows", "passed", "seconds")


@dataclass(frozen=True)
class Case:
    """One comparison: `ranks` processes run `mode` shards of the layer with `act` activations on `tokens` tokens."""

    mode: str
    ranks: int
    act: str
    tokens: int


@dataclass(frozen=True)
class Config:
    """Everything every rank must agree on (passed to each spawned process)."""

    device: str  # "cuda" or "cpu"
    hidden: int
    inter: int
    experts: int
    top_k: int
    seed: int
    cases: tuple[Case, ...]
    graphs: bool
    fault: str | None = None


@dataclass
class Result:
    """Rank 0's verdict on one case. `graph`: "equal" (every rank's replay bit-equal to its eager call), "differs",
    or "-" (CPU, or T = 0: nothing to capture). `zero_rows`: EP ranks' rows of tokens without a local expert are
    exact zeros on every rank ("-" for TP)."""

    case: Case
    max_error: float
    tolerance: float
    graph: str = "-"
    zero_rows: str = "-"
    passed: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        c = asdict(self.case)
        return {**c, "max_error": f"{self.max_error:.3e}", "tolerance": f"{self.tolerance:.3e}", "graph": self.graph,
                "zero_rows": self.zero_rows, "passed": self.passed, "seconds": f"{self.seconds:.3f}"}


def tolerance(case: Case) -> float:
    """The largest max|sum - full| / max|full| accepted (see the module docstring for why)."""
    return (case.ranks + 1) * 2.0**-8 if case.mode == "tp" else 2.0**-8


def plan_cases(modes: Sequence[str], ranks: Sequence[int], acts: Sequence[str], tokens: Sequence[int]) -> list[Case]:
    """Every (mode, group size, act, T), in the order every rank walks them."""
    return [Case(m, r, a, t) for m in modes for r in ranks for a in acts for t in tokens]


def describe_plan(cfg: Config, world: int) -> str:
    """The plan as text: the layer, the shards of each group size, the cases and their tolerances."""
    from flashinfer_sm12x.testing.moe_shards import linear_split, tp_slice

    lines = [f"world {world} on {cfg.device} ({'nccl' if cfg.device == 'cuda' else 'gloo'}); layer H={cfg.hidden} "
             f"I={cfg.inter} E={cfg.experts} top_k={cfg.top_k} seed={cfg.seed}; CUDA graphs "
             f"{'on' if cfg.graphs and cfg.device == 'cuda' else 'off'}; fault {cfg.fault}"]
    for r in sorted({c.ranks for c in cfg.cases}):
        if any(c.mode == "tp" and c.ranks == r for c in cfg.cases):
            lines.append(f"  tp={r}: I columns per rank {[tp_slice(cfg.inter, r, q) for q in range(r)]}, "
                         "fc2 bias on rank 0")
        if any(c.mode != "tp" and c.ranks == r for c in cfg.cases):
            lines.append(f"  ep={r}: (expert offset, count) per rank {linear_split(cfg.experts, r)}")
    lines.append(f"  {len(cfg.cases)} cases:")
    lines += [f"    {c.mode:7s} ranks={c.ranks} act={c.act} T={c.tokens:<5d} tolerance {tolerance(c):.2e}"
              for c in cfg.cases]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------------
# One rank


class _Layer:
    """This rank's view of the layer: the checkpoint, its prepared shards (cached per group size and act) and the
    full layer (rank 0 only)."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        from flashinfer_sm12x.testing.moe_cases import make_weights

        self.cfg, self.device = cfg, device
        self.raw = make_weights(cfg.experts, cfg.hidden, cfg.inter, seed=cfg.seed)
        self.prepared: dict[tuple, Any] = {}

    def weights(self, kind: str, ranks: int, rank: int, act: str) -> tuple[Any, dict[str, int]]:
        """(prepared weights, fused_moe's expert-parallel keywords) of `rank` in a group of `ranks` ("full": the
        unsharded layer)."""
        from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
        from flashinfer_sm12x.testing.moe_shards import ep_shard, linear_split, tp_shard

        kw: dict[str, int] = {}
        if kind == "tp":
            key = ("tp", ranks, rank, act)
        elif kind == "ep":
            offset, count = linear_split(self.cfg.experts, ranks)[rank]
            key, kw = ("ep", ranks, rank, act), {"expert_offset": offset, "num_global_experts": self.cfg.experts}
        else:
            key = ("full", act)
        if key not in self.prepared:
            if kind == "tp":
                raw = tp_shard(self.raw, ranks, rank)
                if self.cfg.fault == "bias-every-rank":
                    raw["w2_bias"] = self.raw["w2_bias"].clone()
            elif kind == "ep":
                raw = ep_shard(self.raw, kw["expert_offset"], linear_split(self.cfg.experts, ranks)[rank][1])
            else:
                raw = self.raw
            raw = {k: v.to(self.device) for k, v in raw.items()}
            self.prepared[key] = prepare_gpt_oss_weights(**raw, pad_to=128, act=act)
        return self.prepared[key], kw


def _inputs(cfg: Config, case: Case) -> tuple[torch.Tensor, Any]:
    """(hidden [T, H] bf16, routing) on the CPU, the same on every rank: router logits over all experts, or for
    ep-skew precomputed ids that send every token to the last top_k experts."""
    from flashinfer_sm12x.testing.moe_cases import make_inputs

    hidden, logits = make_inputs(case.tokens, cfg.hidden, cfg.experts, seed=cfg.seed + 1 + case.tokens)
    if case.mode != "ep-skew":
        return hidden, logits
    ids = torch.arange(cfg.experts - cfg.top_k, cfg.experts, dtype=torch.int32).flip(0).repeat(case.tokens, 1)
    weights = torch.softmax(torch.linspace(1.0, 0.0, cfg.top_k), 0).repeat(case.tokens, 1)
    return hidden, (ids, weights.contiguous())


def _tactic(cfg: Config, case: Case, device: torch.device) -> Any:
    """The full layer's heuristic tactics (GEMM1, GEMM2), pinned on every rank: the same tiles give each pair's GEMMs
    the same float32 accumulation order on every rank (an EP rank's heuristic would see fewer experts and might choose
    other tiles)."""
    from flashinfer_sm12x.checks import round_up
    from flashinfer_sm12x.jit.arch import device_facts
    from flashinfer_sm12x.kernels.grouped_mm_fp4 import gemm_format, moe_tactics

    facts = device_facts(device) if device.type == "cuda" else None
    return moe_tactics(max(case.tokens, 1) * cfg.top_k, cfg.experts, gemm_format(case.act),
                       facts.target if facts else None, facts.sm_count if facts else None,
                       hidden_padded=round_up(cfg.hidden, 128), inter_padded=round_up(cfg.inter, 128))


def _to(routing: Any, device: torch.device) -> Any:
    return routing.to(device) if isinstance(routing, torch.Tensor) else tuple(t.to(device) for t in routing)


def _run_case(cfg: Config, case: Case, layer: _Layer, rank: int, group: Any) -> Result | None:
    """Every rank of the group runs its shard; rank 0 returns the verdict (other ranks None)."""
    from flashinfer_sm12x.moe.fused_moe import fused_moe

    start = time.perf_counter()
    device, cuda = layer.device, layer.device.type == "cuda"
    impl = None if cuda else "reference"  # None: the kernels on CUDA
    hidden, routing = _inputs(cfg, case)
    hidden, routing = hidden.to(device), _to(routing, device)
    tactic = _tactic(cfg, case, device)
    w, kw = layer.weights("tp" if case.mode == "tp" else "ep", case.ranks, rank, case.act)

    def shard_forward(validate_ids: bool = True) -> torch.Tensor:
        if cfg.fault == "rank1-raises" and rank == 1:
            raise RuntimeError("injected fault")
        return fused_moe(hidden, routing, w, top_k=cfg.top_k, out_dtype=torch.float32, impl=impl, tactic=tactic,
                         validate_ids=validate_ids, **kw)

    # Flags every rank contributes, reduced with MIN: 1 = fine, 0 = failed, -1 = not applicable. A rank whose
    # forward raises still joins every collective (with zeros), so the other ranks never wait for it.
    flags = torch.tensor([1, -1, -1], dtype=torch.int32)  # ran, graph, zero rows
    try:
        out = shard_forward()
        if cuda and cfg.graphs and case.tokens > 0:
            graph = torch.cuda.CUDAGraph()
            # thread_local: the NCCL watchdog thread's event queries must not invalidate this thread's capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                captured = shard_forward(validate_ids=False)  # nothing may sync inside a capture
            graph.replay()
            torch.cuda.synchronize(device)
            flags[1] = int(torch.equal(captured, out))
        if case.mode != "tp":
            ids = routing[0] if isinstance(routing, tuple) else _global_ids(routing, cfg.top_k)
            local = ((ids >= kw["expert_offset"]) & (ids < kw["expert_offset"] + w.num_experts)).any(1)
            flags[2] = int(not out[~local].any())
    except Exception as e:
        print(f"rank {rank}: {case}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        out, flags[0] = torch.zeros(case.tokens, cfg.hidden, device=device), 0
    total = out.clone()
    if cfg.fault != "no-reduce":
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)  # float32: the shards' outputs as they are
    flags_dev = flags.to(device)
    dist.all_reduce(flags_dev, op=dist.ReduceOp.MIN, group=group)
    ran, graph_flag, zero_flag = (int(f) for f in flags_dev.cpu())
    if rank != 0:
        return None
    tol = tolerance(case)
    verdict = {-1: "-", 0: "differs", 1: "equal"}[graph_flag]
    zero_rows = {-1: "-", 0: "nonzero", 1: "zero"}[zero_flag]
    try:
        full_w, _ = layer.weights("full", case.ranks, 0, case.act)
        full = fused_moe(hidden, routing, full_w, top_k=cfg.top_k, out_dtype=torch.float32, impl=impl,
                         tactic=tactic)
    except Exception as e:
        return Result(case, math.inf, tol, verdict, zero_rows, False, time.perf_counter() - start,
                      [f"the full layer raised {type(e).__name__}: {e}"])
    scale = float(full.abs().max()) if full.numel() else 0.0
    diff = float((total - full).abs().max()) if full.numel() else 0.0
    err = diff / scale if scale else diff
    notes = [] if ran else ["a rank's forward raised (its stderr says which)"]
    passed = (ran == 1 and total.shape == full.shape and bool(total.isfinite().all()) and err <= tol
              and verdict != "differs" and zero_rows != "nonzero")
    return Result(case, err, tol, verdict, zero_rows, passed, time.perf_counter() - start, notes)


def _global_ids(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    from flashinfer_sm12x.moe.routing import route

    return route(logits, top_k)[0]


def run_rank(rank: int, world: int, cfg: Config, init_method: str, log: Callable[[str], None] | None = None,
             local_rank: int | None = None) -> list[Result]:
    """One process: join the group, walk every case (those of groups it belongs to), leave. Returns rank 0's
    results (an empty list elsewhere)."""
    if cfg.device == "cuda":
        device = torch.device("cuda", rank if local_rank is None else local_rank)
        torch.cuda.set_device(device)  # NCCL and the current stream follow the current device
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        torch.set_num_threads(1)  # one core per rank: ranks oversubscribing the host's cores only slow each other
        _use_gemm_model()
    kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world, **kwargs)
    try:
        # new_group is collective over the whole world: every rank creates every group, in the same order.
        sizes = sorted({c.ranks for c in cfg.cases})
        groups = {r: (None if r == world else dist.new_group(list(range(r)))) for r in sizes}
        layer = _Layer(cfg, device)
        results = []
        for case in cfg.cases:
            if rank >= case.ranks:
                continue
            result = _run_case(cfg, case, layer, rank, groups[case.ranks])
            if result is not None:
                results.append(result)
                if log is not None:
                    log(_line(result))
        dist.barrier()
        return results
    finally:
        dist.destroy_process_group()


def _use_gemm_model() -> None:
    """CPU ranks: the grouped GEMM's float64 contract model in place of the CUDA kernel (the reference pipeline calls
    it through moe.pipeline)."""
    import importlib

    from flashinfer_sm12x.testing.moe_cases import grouped_gemm_model

    importlib.import_module("flashinfer_sm12x.moe.pipeline").grouped_mm_fp4 = grouped_gemm_model


def _line(r: Result) -> str:
    c = r.case
    return (f"{'PASS' if r.passed else 'FAIL'} {c.mode:7s} ranks={c.ranks} act={c.act} T={c.tokens:<5d} "
            f"max_err={r.max_error:.3e} (tol {r.tolerance:.2e}) graph={r.graph} zero_rows={r.zero_rows} "
            f"{r.seconds:.2f}s" + "".join(f"; {n}" for n in r.notes))


# ------------------------------------------------------------------------------------------------------------------
# Launching


def _spawned(rank: int, world: int, cfg: Config, init_method: str, result_file: str) -> None:
    results = run_rank(rank, world, cfg, init_method, print if rank == 0 else None)
    if rank == 0:
        Path(result_file).write_text(json.dumps([asdict(r) for r in results]))


def spawn(world: int, cfg: Config, start_method: str = "spawn") -> list[Result]:
    """Run `world` ranks as child processes (torch.multiprocessing) and return rank 0's results. "fork" is for the
    CPU (a forked child cannot use CUDA); rendezvous is through a file, so no port is needed."""
    import torch.multiprocessing as mp

    if start_method == "fork":  # import once here, not in every child (moe_cases pulls in FlashInfer: seconds)
        import flashinfer_sm12x.moe.fused_moe  # noqa: F401
        import flashinfer_sm12x.testing.moe_cases  # noqa: F401
        import flashinfer_sm12x.testing.moe_shards  # noqa: F401
    with tempfile.TemporaryDirectory() as tmp:
        init_method = f"file://{os.path.join(tmp, 'rendezvous')}"
        result_file = os.path.join(tmp, "results.json")
        mp.start_processes(_spawned, args=(world, cfg, init_method, result_file), nprocs=world, join=True,
                           start_method=start_method)
        rows = json.loads(Path(result_file).read_text())
    return [Result(Case(**r.pop("case")), **r) for r in rows]


# ------------------------------------------------------------------------------------------------------------------
# Device-index checks: one process, two GPUs


@dataclass
class DeviceCheck:
    name: str
    passed: bool
    detail: str


def device_index_checks(log: Callable[[str], None] = print) -> list[DeviceCheck]:
    """Every public op called with all its tensors on cuda:1 while the current device is cuda:0, interleaved with the
    same call on cuda:0 (cuda:1, cuda:0, cuda:1): results bit-equal, on the arguments' device, the current device
    untouched. Then mixed-device arguments: a typed error (ValueError / TypeError) before any launch, and both
    devices still healthy afterwards. Needs >= 2 GPUs."""
    if torch.cuda.device_count() < 2:
        raise RuntimeError(f"device-index checks need >= 2 CUDA devices, found {torch.cuda.device_count()}")
    torch.cuda.set_device(0)
    d0, d1 = torch.device("cuda", 0), torch.device("cuda", 1)
    checks: list[DeviceCheck] = []
    for name, call in _op_calls().items():
        checks.append(_same_results(name, call, d0, d1))
        log(f"{'PASS' if checks[-1].passed else 'FAIL'} {name} on cuda:1 (current cuda:0): {checks[-1].detail}")
    for name, call in _mixed_calls().items():
        checks.append(_typed_error(name, call, d0, d1))
        log(f"{'PASS' if checks[-1].passed else 'FAIL'} {name}: {checks[-1].detail}")
    return checks


def _cpu_operands() -> dict[str, Any]:
    """Seeded CPU inputs for every op (the torch reference quantizers make the packed operands)."""
    from flashinfer_sm12x.formats import mxfp4_quantize as ref_mxfp4
    from flashinfer_sm12x.testing.moe_cases import make_inputs, make_weights

    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, 256, generator=g) * 3
    w = torch.randn(200, 256, generator=g)
    a, a_sf = ref_mxfp4(x)
    b, b_sf = ref_mxfp4(w)
    experts = [ref_mxfp4(torch.randn(256, 256, generator=g)) for _ in range(3)]
    hidden, logits = make_inputs(37, 256, 8, seed=3)
    return {"x": x, "gs": (448 * 6 / x.abs().amax()).reshape(1), "a": a, "a_sf": a_sf, "b": b, "b_sf": b_sf,
            "eb": torch.stack([e[0] for e in experts]), "eb_sf": torch.stack([e[1] for e in experts]),
            "moe": make_weights(8, 256, 256, seed=5), "hidden": hidden, "logits": logits}


_OPERANDS: dict[str, Any] = {}
_MOE_WEIGHTS: dict[tuple[torch.device, str], Any] = {}


def _ops() -> dict[str, Any]:
    if not _OPERANDS:
        _OPERANDS.update(_cpu_operands())
    return _OPERANDS


def _moe_weights(d: torch.device, act: str) -> Any:
    import flashinfer_sm12x as fs

    if (d, act) not in _MOE_WEIGHTS:
        _MOE_WEIGHTS[(d, act)] = fs.prepare_gpt_oss_weights(**{k: v.to(d) for k, v in _ops()["moe"].items()}, act=act)
    return _MOE_WEIGHTS[(d, act)]


def _grouped_args(d: torch.device, tiles_on: torch.device | None = None) -> tuple:
    """grouped_mm_fp4's arguments on `d` (expert_of_tile on `tiles_on` if given): two M tiles, experts 2 and 0."""
    from flashinfer_sm12x.formats import mxfp4_quantize as ref_mxfp4
    from flashinfer_sm12x.jit.arch import device_facts
    from flashinfer_sm12x.kernels.grouped_mm_fp4 import heuristic

    o = _ops()
    target = device_facts(d).target if d.type == "cuda" else None  # None: the emulation menu (CPU self-test)
    tactic = heuristic(128, 0, 0, "mxfp4", target, groups=3)[0]
    rows = 2 * tactic.tile_m
    a, a_sf = ref_mxfp4(torch.cat([o["x"]] * (-(-rows // o["x"].shape[0])))[:rows])
    tiles = torch.tensor([2, 0], dtype=torch.int32)
    return (a.to(d), a_sf.to(d), o["eb"].to(d), o["eb_sf"].to(d), tiles.to(tiles_on or d), tactic)


def _op_calls() -> dict[str, Callable[[torch.device], Any]]:
    import flashinfer_sm12x as fs

    o = _ops()
    return {
        "mxfp4_quantize": lambda d: fs.mxfp4_quantize(o["x"].to(d)),
        "mxfp8_quantize": lambda d: fs.mxfp8_quantize(o["x"].to(d)),
        "nvfp4_quantize": lambda d: fs.nvfp4_quantize(o["x"].to(d), o["gs"].to(d)),
        "mm_fp4": lambda d: fs.mm_fp4(o["a"].to(d), o["b"].to(d).T, o["a_sf"].to(d), o["b_sf"].to(d).T, None,
                                      torch.bfloat16, block_size=32, use_nvfp4=False, backend="cutlass_sm12x"),
        "grouped_mm_fp4": lambda d: fs.grouped_mm_fp4(*_grouped_args(d), fmt="mxfp4"),
        "fused_moe mxfp4": lambda d: fs.fused_moe(o["hidden"].to(d), o["logits"].to(d), _moe_weights(d, "mxfp4"),
                                                  top_k=4, impl="kernels"),
        "fused_moe mxfp8": lambda d: fs.fused_moe(o["hidden"].to(d), o["logits"].to(d), _moe_weights(d, "mxfp8"),
                                                  top_k=4, impl="kernels"),
    }


def _mixed_calls() -> dict[str, Callable[[torch.device, torch.device], Any]]:
    """Calls with one argument on `d0` and the rest on `d1` (the quantizers' single tensor cannot be mixed; the
    NVFP4 global scale can)."""
    import flashinfer_sm12x as fs

    o = _ops()
    return {
        "nvfp4_quantize global scale on cuda:0": lambda d0, d1: fs.nvfp4_quantize(o["x"].to(d1), o["gs"].to(d0)),
        "mm_fp4 a on cuda:0": lambda d0, d1: fs.mm_fp4(
            o["a"].to(d0), o["b"].to(d1).T, o["a_sf"].to(d1), o["b_sf"].to(d1).T, None, torch.bfloat16,
            block_size=32, use_nvfp4=False, backend="cutlass_sm12x"),
        "grouped_mm_fp4 expert_of_tile on cuda:0": lambda d0, d1: fs.grouped_mm_fp4(*_grouped_args(d1, d0),
                                                                                     fmt="mxfp4"),
        "fused_moe logits on cuda:0": lambda d0, d1: fs.fused_moe(o["hidden"].to(d1), o["logits"].to(d0),
                                                                  _moe_weights(d1, "mxfp4"), top_k=4, impl="kernels"),
        "fused_moe weights on cuda:0": lambda d0, d1: fs.fused_moe(o["hidden"].to(d1), o["logits"].to(d1),
                                                                   _moe_weights(d0, "mxfp4"), top_k=4, impl="kernels"),
    }


def _flat(out: Any) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]


def _same_results(name: str, call: Callable[[torch.device], Any], d0: torch.device,
                  d1: torch.device) -> DeviceCheck:
    try:
        first = _flat(call(d1))
        if torch.cuda.current_device() != 0:
            return DeviceCheck(name, False, f"the call moved the current device to {torch.cuda.current_device()}")
        ref = _flat(call(d0))
        again = _flat(call(d1))
        torch.cuda.synchronize(d0)
        torch.cuda.synchronize(d1)
    except Exception as e:  # a launch on the wrong device surfaces here (invalid handle, illegal address)
        return DeviceCheck(name, False, f"{type(e).__name__}: {e}")
    if any(t.device != d1 for t in first + again):
        return DeviceCheck(name, False, f"results on {sorted({str(t.device) for t in first + again})}, not cuda:1")
    equal = all(torch.equal(x.cpu(), r.cpu()) and torch.equal(y.cpu(), r.cpu())
                for x, y, r in zip(first, again, ref, strict=True))
    return DeviceCheck(name, equal, "bit-equal to cuda:0" if equal else "differs from the same call on cuda:0")


def _typed_error(name: str, call: Callable[[torch.device, torch.device], Any], d0: torch.device,
                 d1: torch.device) -> DeviceCheck:
    try:
        call(d0, d1)
        outcome, passed = "no error raised", False
    except (TypeError, ValueError) as e:
        outcome, passed = f"{type(e).__name__}: {e}", True
    except Exception as e:
        outcome, passed = f"untyped {type(e).__name__}: {e}", False
    try:  # nothing was launched with the wrong pointers: both devices are still healthy
        torch.cuda.synchronize(d0)
        torch.cuda.synchronize(d1)
    except Exception as e:
        outcome, passed = f"{outcome}; then {type(e).__name__}: {e}", False
    return DeviceCheck(name, passed, outcome)


# ------------------------------------------------------------------------------------------------------------------
# Results


def write_results(directory: Path, results: Sequence[Result], log_lines: Sequence[str], device: str,
                  checks: Sequence[DeviceCheck] = ()) -> tuple[Path, Path]:
    """multi_gpu_<device>_<date>.csv (one row per case, device-index checks as mode "device-index") and the log."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"multi_gpu_{device}_{datetime.date.today().isoformat()}"
    csv_path, log_path = directory / f"{stem}.csv", directory / "logs" / f"{stem}.log"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in results:
            writer.writerow(r.row())
        for c in checks:
            writer.writerow({"mode": "device-index", "ranks": 1, "act": c.name, "tokens": "", "max_error": "",
                             "tolerance": "", "graph": "", "zero_rows": "", "passed": c.passed, "seconds": ""})
    log_path.parent.mkdir(exist_ok=True)
    log_path.write_text("\n".join(log_lines) + "\n")
    return csv_path, log_path


def _device_label(device: str) -> str:
    if device == "cpu":
        return "cpu_gloo"
    name = torch.cuda.get_device_name(0).lower()
    for short in ("h200", "h100", "rtx 5090", "rtx pro 6000", "gb10"):
        if short in name:
            return short.replace(" ", "")
    return "gpu"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--spawn", type=int, metavar="N", help="launch N ranks here (default: torchrun's environment)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda: NCCL, one GPU per rank; cpu: gloo")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--ranks", nargs="+", type=int, help="group sizes (default: 2 .. world)")
    p.add_argument("--acts", nargs="+", choices=ACTS, default=list(ACTS))
    p.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--hidden", type=int, help="H (default 2880 on cuda, 64 on cpu)")
    p.add_argument("--inter", type=int, help="I (default 2880 on cuda, 96 on cpu)")
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-graphs", action="store_true", help="skip the CUDA graph capture and replay")
    p.add_argument("--fault", choices=FAULTS, help="inject a fault (the comparisons must then fail)")
    p.add_argument("--device-checks", action="store_true", help="one process: the ops on cuda:1 (needs >= 2 GPUs)")
    p.add_argument("--results", type=Path, metavar="DIR", help="write the CSV and the log under DIR")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p.parse_args(argv)


def _modes(cfg: Config) -> list[str]:
    return list(dict.fromkeys(c.mode for c in cfg.cases))


def make_config(args: argparse.Namespace, world: int) -> Config:
    """The Config every rank runs, from the command line (SystemExit on group sizes or T out of range)."""
    hidden, inter = SHAPES[args.device]
    ranks = tuple(args.ranks or range(2, world + 1))
    if not ranks or any(not 2 <= r <= world for r in ranks):
        raise SystemExit(f"group sizes must lie in [2, world = {world}], got {list(ranks) or 'none'}")
    if any(t < 0 for t in args.tokens):
        raise SystemExit("token counts must be >= 0")
    return Config(args.device, args.hidden or hidden, args.inter or inter, args.experts, args.top_k, args.seed,
                  tuple(plan_cases(args.modes, ranks, args.acts, args.tokens)), not args.no_graphs, args.fault)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    if args.device_checks:
        if args.dry_run:
            print("device-index checks (one process, cuda:1 while cuda:0 is current):\n  "
                  + "\n  ".join([*_op_calls(), *_mixed_calls()]))
            return 0
        checks = device_index_checks(log)
        if args.results:
            for p in write_results(args.results, [], lines, _device_label("cuda") + "_device_index", checks):
                log(f"wrote {p}")
        return 0 if all(c.passed for c in checks) else 1
    torchrun = args.spawn is None
    world = int(os.environ.get("WORLD_SIZE", "1")) if torchrun else args.spawn
    if world < 2:
        raise SystemExit("run under torchrun with >= 2 processes, or pass --spawn N (N >= 2)")
    cfg = make_config(args, world)
    if args.dry_run:
        print(describe_plan(cfg, world))
        return 0
    if args.device == "cuda" and torch.cuda.device_count() < (int(os.environ.get("LOCAL_WORLD_SIZE", world))):
        raise SystemExit(f"{world} ranks on this host need as many GPUs, found {torch.cuda.device_count()}")
    rank = int(os.environ["RANK"]) if torchrun else 0
    if rank == 0:
        log(describe_plan(cfg, world).split("\n")[0])
    if torchrun:
        results = run_rank(rank, world, cfg, "env://", log if rank == 0 else None,
                           local_rank=int(os.environ.get("LOCAL_RANK", rank)))
        if rank != 0:
            return 0
    else:
        results = spawn(world, cfg, "spawn" if args.device == "cuda" else "fork")
        lines += [_line(r) for r in results]  # printed by rank 0's process
    failed = [r for r in results if not r.passed]
    worst = {m: max((r.max_error for r in results if r.case.mode == m), default=math.nan) for m in _modes(cfg)}
    log(f"{len(results) - len(failed)}/{len(results)} comparisons passed; worst max_err per mode "
        + ", ".join(f"{m} {e:.3e}" for m, e in worst.items()))
    if args.results:
        for p in write_results(args.results, results, lines, _device_label(args.device)):
            log(f"wrote {p}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
