# SPDX-License-Identifier: Apache-2.0
"""The fused MoE's kernel pipeline: plan -> scatter -> grouped GEMM1 -> activation -> grouped GEMM2 -> finalize
(kernels/moe_glue.py describes the glue kernels; ops/grouped_mm_fp4.py the GEMMs), no host synchronisation
(CUDA-graph capturable). At decode sizes plan and scatter are one kernel (plan_scatter), beyond them two;
`fused_plan_scatter_serves` draws the line (by T, k, E and the GPU's SM count).

Host path, built for repeated calls:
- the target and the loaded module are cached per device; the row plan (tactic, padded bound, tile count) per
  (T, E, k, format, tactic, target, SM count);
- buffers (int32 plan workspace, quantized activations and scales, both GEMM outputs) are cached per device and
  grown geometrically; a call uses prefix views of them, themselves cached per plan. Buffers that were outgrown are
  kept alive, so a CUDA graph captured earlier keeps valid addresses. The cached buffers make calls on one device
  share memory: run one forward at a time per device (one stream), as with FlashInfer's workspace buffer.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from ..checks import round_up
from ..jit.arch import Target, device_target
from ..jit.module import load_module
from ..kernels.family import Tactic
from ..kernels.grouped_mm_fp4 import FAMILY as GROUPED
from ..kernels.grouped_mm_fp4 import heuristic
from ..kernels.moe_glue import (
    FUSED_MAX_PAIRS,
    FUSED_MAX_TOKENS,
    MAX_EXPERTS,
    MAX_TOP_K,
    TOKENS_PER_CHUNK,
    moe_glue_spec,
)
from .grouped_mm_fp4 import grouped_mm_fp4_launcher, grouped_mm_fp4_swiglu_quantize_launcher

GEMM_FORMAT = {"mxfp4": "mxfp4", "mxfp8": "mxfp8_mxfp4"}  # activation format -> grouped GEMM format
LAYOUT_CODE = {"interleaved": 0, "gate_first": 1, "up_first": 2}
_MODULES: dict[tuple[Target, str], Any] = {}
# plan_scatter runs T*k CTAs of 512 threads, each repeating the plan: O(T*E) logit reads (O(T*k) with precomputed
# ids) and one plan_kernel CTA's latency. It replaces a launch gap and plan_kernel's own latency, so it wins while the
# grid is one wave and the redundant work stays small. One wave is the SM count: at 121 registers per thread on
# sm_120a/sm_121a (107 on sm_90a; tests/moe_glue/test_compile.py checks the bound) an SM holds one such CTA. Measured
# on an H200, 132 SMs (benchmarks/bench_moe_glue.py, E = 32, k = 4): plan_scatter 24.8 us vs plan + scatter 27.3 us at
# T = 32 (128 CTAs, one wave), 53.9 vs 34.1 us at T = 64 (256 CTAs, two waves). Hence: T*k <= the SM count (a DGX
# Spark's 48 SMs: T <= 12 at k = 4), T <= 32 (the largest T measured to win: the redundant routing grows with T) and
# T*E <= 8192 logits (32 KiB of float32 per CTA, from L2).
DECODE_MAX_TOKENS = 32
DECODE_MAX_LOGITS = 8192
DECODE_PAIRS_WITHOUT_DEVICE = 128  # one wave where no device is given (plans for tests and models): the H200's line
PLAN_SCATTER_CTAS_PER_SM = 1


@dataclass(frozen=True)
class RowPlan:
    """Host-side sizes of one forward: everything follows from (T, k, E, tile height)."""

    tactic: Tactic
    num_tokens: int
    top_k: int
    num_experts: int
    bound: int        # padded rows: round_up(T*k + min(E, T*k) * (TM - 1), TM)
    tiles: int        # bound / TM
    sf_rows: int      # round_up(bound, 128): rows of the 128x4 scale layout
    workspace_elements: int
    fused_plan_scatter: bool = False  # plan and scatter as one kernel (fused_plan_scatter_serves)


def workspace_offsets(num_tokens: int, top_k: int, num_experts: int, tiles: int) -> dict[str, tuple[int, int]]:
    """(offset, length) in int32 elements of each part of the plan workspace; jit/moe_glue.cu.jinja's order."""
    pairs, chunks = num_tokens * top_k, -(-num_tokens // TOKENS_PER_CHUNK)
    parts = (("state", 4), ("ids", pairs), ("weights", pairs), ("rank", pairs), ("dest", pairs),
             ("chunk_base", chunks * num_experts), ("counts", num_experts), ("padded_start", num_experts),
             ("expert_of_tile", tiles))
    offsets, at = {}, 0
    for name, length in parts:
        offsets[name] = (at, length)
        at += length
    return offsets


def fused_plan_scatter_serves(num_tokens: int, top_k: int, num_experts: int, sm_count: int | None = None) -> bool:
    """Whether one forward runs plan + scatter as one kernel (plan_scatter): decode sizes, see DECODE_MAX_*.

    Parameters
    ----------
    num_tokens, top_k, num_experts : int
        T, k, E.
    sm_count : int, optional
        The GPU's SM count (`jit.arch.device_sm_count`): plan_scatter's T*k CTAs must fit in one wave. None: 128
        (an H200's line).

    Returns
    -------
    bool
        True for 1 <= T <= 32 with T*k <= one wave and T*E <= 8192 (always within the kernel's limits).
    """
    one_wave = DECODE_PAIRS_WITHOUT_DEVICE if sm_count is None else sm_count * PLAN_SCATTER_CTAS_PER_SM
    return (1 <= num_tokens <= min(DECODE_MAX_TOKENS, FUSED_MAX_TOKENS)
            and num_tokens * top_k <= min(one_wave, FUSED_MAX_PAIRS)
            and num_tokens * num_experts <= DECODE_MAX_LOGITS)


def kernels_support(num_experts: int, top_k: int) -> bool:
    """Whether the glue kernels serve this routing shape (E <= 512, k <= 16)."""
    return 1 <= num_experts <= MAX_EXPERTS and 1 <= top_k <= min(MAX_TOP_K, num_experts)


@lru_cache(maxsize=1024)
def row_plan(num_tokens: int, top_k: int, num_experts: int, gemm_format: str, tactic: Tactic | None,
             target: Target | None, sm_count: int | None = None) -> RowPlan:
    """The row plan of one forward (cached: a repeated shape costs a dictionary lookup).

    Parameters
    ----------
    num_tokens, top_k, num_experts : int
        T, k, E.
    gemm_format : str
        "mxfp4" (W4A4) or "mxfp8_mxfp4" (W4A8).
    tactic : Tactic or None
        The grouped GEMM tactic; None picks the heuristic's first for `target`.
    target : Target or None
        The device's build target (None: the emulation menu).
    sm_count : int, optional
        The device's SM count (`jit.arch.device_sm_count`), for `fused_plan_scatter_serves`.

    Returns
    -------
    RowPlan

    Raises
    ------
    ValueError
        A tactic outside the format's candidates.
    """
    if tactic is None:
        tactic = heuristic(num_tokens * top_k, num_experts, gemm_format, target)[0]
    elif tactic not in GROUPED.candidates(gemm_format):
        raise ValueError(f"fused_moe: tactic for {gemm_format} must be one of "
                         f"{[t.name for t in GROUPED.candidates(gemm_format)]}, got {tactic!r}")
    rows, tm = num_tokens * top_k, tactic.tile_m
    bound = round_up(rows + min(num_experts, rows) * (tm - 1), tm)
    tiles = bound // tm
    end = max(stop for stop in (a + n for a, n in workspace_offsets(num_tokens, top_k, num_experts, tiles).values()))
    return RowPlan(tactic, num_tokens, top_k, num_experts, bound, tiles, round_up(bound, 128), end,
                   fused_plan_scatter_serves(num_tokens, top_k, num_experts, sm_count))


def target_of(device: torch.device) -> Target:
    """The build target of a CUDA device (jit.arch.device_target: cached per device)."""
    return device_target(device)


def glue_module(device: torch.device, act_format: str) -> Any:
    """The loaded glue module for `act_format` on `device` (built on first use, then cached per target)."""
    target = device_target(device)
    module = _MODULES.get((target, act_format))
    if module is None:
        module = _MODULES[(target, act_format)] = load_module(moe_glue_spec(target, act_format))
    return module


class _Buffers:
    """Grow-only device buffers of one (device, H, I, activation format), with per-plan prefix views."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.store: dict[str, torch.Tensor] = {}
        self.retired: list[torch.Tensor] = []  # outgrown buffers, kept for CUDA graphs that captured them
        self.views: dict[tuple[RowPlan, bool], GlueViews] = {}

    def take(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self.store.get(name)
        if buf is None or buf.numel() < numel:
            if buf is not None:
                self.retired.append(buf)
            size = max(numel, 2 * buf.numel() if buf is not None else numel)
            # Zeroed: the plan's done counter must start at 0 (the kernel resets it after every launch).
            buf = self.store[name] = torch.zeros(size, dtype=dtype, device=self.device)
            self.views.clear()
        return buf[:numel]


_BUFFERS: dict[tuple, _Buffers] = {}


@dataclass(frozen=True)
class GlueViews:
    """The tensors one forward uses (prefix views of the cached buffers)."""

    workspace: torch.Tensor  # int32 plan workspace
    x: torch.Tensor          # GEMM1 A as bytes: uint8 [bound, Hp/2] (MXFP4) or [bound, Hp] (MXFP8)
    x_sf: torch.Tensor       # uint8, 128x4 over sf_rows rows
    h: torch.Tensor | None   # bf16 [bound, 2*Ip] GEMM1 output (None when GEMM1's epilogue runs the activation)
    a: torch.Tensor          # GEMM2 A as bytes
    a_sf: torch.Tensor
    y: torch.Tensor          # bf16 [bound, Hp]
    expert_of_tile: torch.Tensor  # int32 [tiles], a part of `workspace`
    x_gemm: torch.Tensor     # x with the GEMM's dtype (uint8 or float8_e4m3fn)
    a_gemm: torch.Tensor
    padded_start: torch.Tensor  # int32 [E], parts of `workspace`: which rows are routed (the fused epilogues skip
    counts: torch.Tensor        # the padding rows)


def glue_views(device: torch.device, plan: RowPlan, hp: int, ip: int, act_format: str,
               fused_activation: bool = False) -> GlueViews:
    """The buffers of one forward, cached per (device, sizes, plan).

    Parameters
    ----------
    device : torch.device
        The CUDA device.
    plan : RowPlan
        From `row_plan`.
    hp, ip : int
        Padded hidden and intermediate sizes (multiples of 32).
    act_format : str
        "mxfp4" or "mxfp8".
    fused_activation : bool
        GEMM1's epilogue runs the activation: no [bound, 2*Ip] intermediate is allocated.

    Returns
    -------
    GlueViews
        Prefix views of the device's grow-only buffers (shared by every call on the device).
    """
    key = (device, hp, ip, act_format)
    bufs = _BUFFERS.get(key)
    if bufs is None:
        bufs = _BUFFERS[key] = _Buffers(device)
    views = bufs.views.get((plan, fused_activation))
    if views is not None:
        return views
    per_byte = 2 if act_format == "mxfp4" else 1
    data_dtype = torch.uint8 if act_format == "mxfp4" else torch.float8_e4m3fn
    bound, sf_rows = plan.bound, plan.sf_rows
    ws = bufs.take("workspace", plan.workspace_elements, torch.int32)
    x = bufs.take("x", bound * hp // per_byte, torch.uint8).view(bound, hp // per_byte)
    x_sf = bufs.take("x_sf", sf_rows * round_up(hp // 32, 4), torch.uint8)
    h = None if fused_activation else bufs.take("h", bound * 2 * ip, torch.bfloat16).view(bound, 2 * ip)
    a = bufs.take("a", bound * ip // per_byte, torch.uint8).view(bound, ip // per_byte)
    a_sf = bufs.take("a_sf", sf_rows * round_up(ip // 32, 4), torch.uint8)
    y = bufs.take("y", bound * hp, torch.bfloat16).view(bound, hp)
    offset, length = workspace_offsets(plan.num_tokens, plan.top_k, plan.num_experts, plan.tiles)["expert_of_tile"]
    parts = workspace_offsets(plan.num_tokens, plan.top_k, plan.num_experts, plan.tiles)
    (start_at, n_e), (counts_at, _) = parts["padded_start"], parts["counts"]
    views = GlueViews(ws, x, x_sf, h, a, a_sf, y, ws[offset:offset + length], x.view(data_dtype), a.view(data_dtype),
                      ws[start_at:start_at + n_e], ws[counts_at:counts_at + n_e])
    if len(bufs.views) > 256:
        bufs.views.clear()
    bufs.views[(plan, fused_activation)] = views
    return views


def workspace_part(views: GlueViews, plan: RowPlan, name: str) -> torch.Tensor:
    """One part of the plan workspace (for tests and debugging): ids, weights (float32), rank, dest, counts, ..."""
    offset, length = workspace_offsets(plan.num_tokens, plan.top_k, plan.num_experts, plan.tiles)[name]
    part = views.workspace[offset:offset + length]
    return part.view(torch.float32) if name == "weights" else part


def plan_and_scatter(module: Any, plan: RowPlan, views: GlueViews, routing: torch.Tensor | tuple[torch.Tensor, ...],
                     hidden: torch.Tensor, hidden_cols: int, *, input_sf: torch.Tensor | None = None,
                     swizzled_input_sf: bool = True, id_base: int = 0, id_limit: int | None = None,
                     zero_foreign: bool = False, fused: bool | None = None) -> None:
    """The plan and the scatter of one forward: one kernel (plan_scatter) at decode sizes, else plan then scatter.

    Both write the same workspace (ids, weights, ranks, dest, counts, padded starts, expert_of_tile) and the same
    routed rows and scales of `views.x` / `views.x_sf`; padding rows' scales are zeroed, their data left as it is.

    Parameters
    ----------
    module : the loaded glue module (`glue_module`) of the activation format
    plan : RowPlan
    views : GlueViews
    routing : torch.Tensor or tuple of torch.Tensor
        Router logits [T, E], or (ids [T, k] int32/int64, weights [T, k] float): validated by the caller.
    hidden : torch.Tensor
        [T, H] float to gather and quantize, or with `input_sf` the pre-quantized MXFP8 rows [T, cols] as bytes.
    hidden_cols : int
        The padded width `cols` of the quantized rows (Hp).
    input_sf : torch.Tensor, optional
        E8M0 scales of pre-quantized `hidden` (MXFP8 module only), 128x4 (`swizzled_input_sf`) or linear.
    swizzled_input_sf : bool
        The layout of `input_sf`.
    id_base, id_limit, zero_foreign :
        Precomputed ids: global ids valid in [0, id_limit) (default E), this rank's experts from id_base; other
        ranks' experts weigh 0 when `zero_foreign`.
    fused : bool, optional
        Force (True) or forbid (False) plan_scatter; None follows `plan.fused_plan_scatter`. Forcing it beyond the
        kernel's limits (T <= 128, T*k <= 1024) raises in the module.
    """
    k, num_e, tm = plan.top_k, plan.num_experts, plan.tactic.tile_m
    limit = num_e if id_limit is None else id_limit
    from_logits = isinstance(routing, torch.Tensor)
    if plan.fused_plan_scatter if fused is None else fused:
        ids, weights = (routing, None) if from_logits else routing
        module.plan_scatter(ids, weights, hidden, input_sf, swizzled_input_sf, views.workspace, views.x, views.x_sf,
                            k, num_e, hidden_cols, tm, plan.bound, id_base, limit, zero_foreign)
        return
    if from_logits:
        module.plan_logits(routing, views.workspace, k, tm, plan.tiles)
    else:
        module.plan_ids(routing[0], routing[1], views.workspace, num_e, tm, plan.tiles, id_base, limit, zero_foreign)
    if input_sf is None:
        module.scatter(hidden, views.workspace, views.x, views.x_sf, k, num_e, hidden_cols, tm, plan.bound)
    else:
        module.scatter_prequantized(hidden, input_sf, swizzled_input_sf, views.workspace, views.x, views.x_sf, k,
                                    num_e, tm, plan.bound)


@dataclass(frozen=True)
class ExpertParams:
    """What the two GEMMs and the activation need of the weights, with optional per-expert tensors."""

    w13: torch.Tensor
    w13_sf: torch.Tensor
    w13_bias: torch.Tensor | None
    w2: torch.Tensor
    w2_sf: torch.Tensor
    w2_bias: torch.Tensor | None
    layout: int                      # LAYOUT_CODE value
    swiglu_oai: bool
    alpha: float | torch.Tensor
    beta: float | torch.Tensor
    limit: float | torch.Tensor | None
    g1: torch.Tensor | None = None
    g2: torch.Tensor | None = None


def _scalar_or_tensor(v: float | torch.Tensor | None, default: float) -> tuple[float, torch.Tensor | None]:
    if isinstance(v, torch.Tensor):
        return default, v
    return (default if v is None else float(v)), None


def fuses_activation(p: ExpertParams, plan: RowPlan, gemm_format: str, intermediate_padded: int) -> bool:
    """Whether GEMM1's epilogue can run the activation: gate/up interleaved (a pair in adjacent columns) and a tile
    of whole 32-output scale blocks (tile_n % 64 == 0)."""
    return p.layout == LAYOUT_CODE["interleaved"] and (2 * intermediate_padded) % 64 == 0 and \
        GROUPED.serves("swiglu_quantize", gemm_format, plan.tactic)


def run_pipeline(plan: RowPlan, views: GlueViews, module: Any, p: ExpertParams, out: torch.Tensor) -> torch.Tensor:
    """GEMM1 -> activation -> GEMM2 -> finalize, after `plan_and_scatter` ran on `views`; GEMM1 runs the activation
    in its epilogue when `views` has no intermediate (glue_views(fused_activation=True)).

    Parameters
    ----------
    plan : RowPlan
    views : GlueViews
    module : the loaded glue module (`glue_module`)
    p : ExpertParams
        Weights, activation and per-expert scales (validated by the caller).
    out : torch.Tensor
        [T, H] output (float32 / float16 / bfloat16), written by finalize.

    Returns
    -------
    torch.Tensor
        `out`.
    """
    tactic, k, num_e = plan.tactic, plan.top_k, plan.num_experts
    alpha, alpha_e = _scalar_or_tensor(p.alpha, 1.0)
    beta, beta_e = _scalar_or_tensor(p.beta, 0.0)
    limit, limit_e = _scalar_or_tensor(p.limit, 0.0)
    if views.h is None:  # the fused epilogues: GEMM1 runs the activation, GEMM2 writes the routed rows only
        _gemm1_fused(views, p.w13, p.w13_sf, tactic)(p.w13_bias, p.swiglu_oai, p.g1, alpha_e, beta_e, limit_e, alpha,
                                                     beta, limit, p.limit is not None)
        _gemm2_routed(views, p.w2, p.w2_sf, tactic)()
    else:  # unfused: GEMM1 writes bf16, the activation kernel re-quantizes, GEMM2 writes every row
        _gemm(views.x_gemm, views.x_sf, p.w13, p.w13_sf, views.expert_of_tile, tactic, views.h)
        b1 = p.w13_bias
        if b1 is not None and b1.data_ptr() % 16:
            b1 = b1.clone()  # the activation kernel reads bias rows in 16-byte vectors
        module.activation(views.h, views.workspace, views.a, views.a_sf, plan.num_tokens, k, num_e, tactic.tile_m,
                          p.layout, p.swiglu_oai, p.g1, b1, alpha_e, beta_e, limit_e, alpha, beta, limit,
                          p.limit is not None)
        _gemm(views.a_gemm, views.a_sf, p.w2, p.w2_sf, views.expert_of_tile, tactic, views.y)
    module.finalize(views.y, views.workspace, out, k, num_e, tactic.tile_m, p.g2, p.w2_bias)
    return out


# Validated GEMM launchers per (buffers, weights, tactic): a repeated forward skips grouped_mm_fp4's checks. A
# launcher holds our buffers strongly (so their ids stay unique while it lives) and the weights weakly (checked by
# identity on lookup, so a freed and reused id never hits).
_LAUNCHERS: dict[tuple, tuple[weakref.ref, weakref.ref, Callable[..., Any]]] = {}


def _gemm(a: torch.Tensor, a_sf: torch.Tensor, b: torch.Tensor, b_sf: torch.Tensor, expert_of_tile: torch.Tensor,
          tactic: Tactic, out: torch.Tensor) -> torch.Tensor:
    key = (id(a), id(a_sf), id(b), id(b_sf), id(expert_of_tile), id(out), tactic)
    hit = _LAUNCHERS.get(key)
    if hit is None or hit[0]() is not b or hit[1]() is not b_sf:
        if len(_LAUNCHERS) >= 1024:
            _LAUNCHERS.clear()
        launch = grouped_mm_fp4_launcher(a, a_sf, b, b_sf, expert_of_tile, tactic, out)
        hit = _LAUNCHERS[key] = (weakref.ref(b), weakref.ref(b_sf), launch)
    return hit[2]()


def _gemm1_fused(views: GlueViews, w13: torch.Tensor, w13_sf: torch.Tensor, tactic: Tactic) -> Callable[..., Any]:
    """The cached launcher of GEMM1 with the activation in its epilogue, writing GEMM2's operand `views.a`."""
    key = ("swiglu_quantize", id(views.x), id(views.x_sf), id(w13), id(w13_sf), id(views.expert_of_tile),
           id(views.a), id(views.a_sf), tactic)
    hit = _LAUNCHERS.get(key)
    if hit is None or hit[0]() is not w13 or hit[1]() is not w13_sf:
        if len(_LAUNCHERS) >= 1024:
            _LAUNCHERS.clear()
        launch = grouped_mm_fp4_swiglu_quantize_launcher(views.x_gemm, views.x_sf, w13, w13_sf, views.expert_of_tile,
                                                         tactic, views.a_gemm, views.a_sf,
                                                         routed=(views.padded_start, views.counts))
        hit = _LAUNCHERS[key] = (weakref.ref(w13), weakref.ref(w13_sf), launch)
    return hit[2]


def _gemm2_routed(views: GlueViews, w2: torch.Tensor, w2_sf: torch.Tensor, tactic: Tactic) -> Callable[..., Any]:
    """The cached launcher of GEMM2 writing the routed rows of `views.y` only."""
    key = ("store_routed", id(views.a), id(views.a_sf), id(w2), id(w2_sf), id(views.expert_of_tile), id(views.y),
           tactic)
    hit = _LAUNCHERS.get(key)
    if hit is None or hit[0]() is not w2 or hit[1]() is not w2_sf:
        if len(_LAUNCHERS) >= 1024:
            _LAUNCHERS.clear()
        launch = grouped_mm_fp4_launcher(views.a_gemm, views.a_sf, w2, w2_sf, views.expert_of_tile, tactic, views.y,
                                         routed=(views.padded_start, views.counts))
        hit = _LAUNCHERS[key] = (weakref.ref(w2), weakref.ref(w2_sf), launch)
    return hit[2]
