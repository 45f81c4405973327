# SPDX-License-Identifier: Apache-2.0
"""The MoE pipeline, one for every public face (`fused_moe`, FlashInfer's `cutlass_fused_moe`, the vLLM plugin):

    plan -> scatter (+ quantization) -> grouped GEMM1 (+ fc1 bias, activation, re-quantization) -> grouped GEMM2
    (+ fc2 bias) -> weighted finalize

The faces only translate their arguments into three descriptions — `Tokens` (the input rows), `Routing` (logits or
precomputed ids, with the expert-parallel id range) and `Experts` (weights, activation, per-expert scales) — and call
`run_moe`, which runs one of two implementations, both free of host synchronisation (CUDA-graph capturable):

- "kernels": the glue kernels (ops/moe_glue.py) around the grouped GEMMs (ops/grouped_mm_fp4.py). At decode sizes
  plan and scatter are one kernel (plan_scatter); GEMM1's epilogue runs the activation and GEMM2 writes the routed
  rows only (the MoE epilogues): 4 launches per forward at decode sizes, 5 beyond; unfused 5 / 6.
- "reference": device-side torch (about 185 launches), kept as the oracle the kernels are tested against.

Padding without a host sync: expert e's rows are padded to a multiple of the tile height TM, so every M tile belongs to
one expert. The host sizes the buffers by the bound  sum_e ceil(c_e / TM) * TM <= T*k + min(E, T*k) * (TM - 1)  and the
device writes which expert each tile belongs to; tiles past the last used one compute rows nobody reads.

Concurrency: the kernels' buffers (plan workspace, quantized activations, GEMM outputs) belong to one
(device, stream): calls on different streams never share them, and calls on one stream from several threads take
that workspace's lock for the whole launch sequence, so one call's kernels never read a workspace another call has
rewritten. Buffers that were outgrown are kept alive, so a CUDA graph captured earlier keeps valid addresses.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import torch

from ..checks import check_index_range, round_up
from ..formats import SfLayout, swizzle_sf, unswizzle_sf
from ..jit.arch import DeviceFacts, Target, device_facts
from ..kernels.family import Tactic
from ..kernels.grouped_mm_fp4 import FAMILY as GROUPED
from ..kernels.grouped_mm_fp4 import gemm_format, moe_tactics
from ..ops.device_guard import on_device
from ..ops.grouped_mm_fp4 import (
    grouped_mm_fp4,
    grouped_mm_fp4_launcher,
    grouped_mm_fp4_swiglu_quantize_launcher,
)
from ..ops.moe_glue import LAYOUT_CODE, fused_plan_scatter_serves, glue_module, workspace_offsets
from ..ops.quantize import mxfp4_quantize, mxfp8_quantize
from .routing import clamp_expert_ids, permute, route

Impl = Literal["kernels", "reference"]
Scalar = float | torch.Tensor  # a float, or a per-expert tensor [E]
# What a caller may pin: one tactic for both GEMMs, or a (GEMM1, GEMM2) pair of equal tile_m; None: the heuristic's.
TacticChoice = Tactic | tuple[Tactic, Tactic] | None


@dataclass(slots=True)  # made per call: a plain slotted init is the cheapest
class Tokens:
    """The input rows: float activations [T, H] the pipeline quantizes, or rows already quantized to MXFP8
    (`data` uint8 bytes [T, Hp] with E8M0 `scales`, 128x4-swizzled over T rows or linear)."""

    data: torch.Tensor
    scales: torch.Tensor | None = None
    swizzled_scales: bool = True

    @property
    def num_tokens(self) -> int:
        return self.data.shape[0]


@dataclass(slots=True)  # made per call: a plain slotted init is the cheapest
class Routing:
    """Router logits [T, E] (top_k softmax-renormalised, as GPT-OSS), or precomputed (ids [T, k], weights [T, k]).

    Expert parallelism: ids are global in [0, id_limit); the experts held are [id_base, id_base + E); pairs routed
    elsewhere get no row in the plan (nothing computes them) and contribute nothing. `validate_ids` checks ids on
    the host (one sync); otherwise they are clamped on the device."""

    logits: torch.Tensor | None
    ids: torch.Tensor | None
    weights: torch.Tensor | None
    top_k: int
    id_base: int = 0
    id_limit: int | None = None
    validate_ids: bool = True

    def foreign(self, num_experts: int) -> bool:
        """Whether some valid ids name experts not held here."""
        return self.id_base != 0 or (self.id_limit is not None and self.id_limit != num_experts)


@dataclass(slots=True)  # made per call: a plain slotted init is the cheapest
class Experts:
    """What the two GEMMs and the activation need: MXFP4 weights with 128x4 scales, biases, the gate/up layout of
    GEMM1's rows, the activation and its parameters (floats or per-expert float32 [E]), optional per-expert scales
    of each GEMM's product (g1, g2), and the activation format both GEMMs read ("mxfp4" or "mxfp8")."""

    act: str
    w13: torch.Tensor
    w13_sf: torch.Tensor
    w13_bias: torch.Tensor | None
    w2: torch.Tensor
    w2_sf: torch.Tensor
    w2_bias: torch.Tensor | None
    layout: str  # a LAYOUT_CODE key: "interleaved", "gate_first" or "up_first"
    swiglu_oai: bool
    alpha: Scalar
    beta: Scalar
    limit: Scalar | None
    g1: torch.Tensor | None = None
    g2: torch.Tensor | None = None

    @classmethod
    def of(cls, weights: Any, swiglu_oai: bool, alpha: Scalar, beta: Scalar, limit: Scalar | None) -> Experts:
        """The experts of `weights` (moe.weights.PreparedMoEWeights) with this activation."""
        layout = "interleaved" if weights.interleaved else ("up_first" if weights.up_first else "gate_first")
        return cls(weights.act, weights.w13, weights.w13_sf, weights.w13_bias, weights.w2, weights.w2_sf,
                   weights.w2_bias, layout, swiglu_oai, alpha, beta, limit)

    @property
    def num_experts(self) -> int:
        return self.w13.shape[0]

    @property
    def hidden_padded(self) -> int:
        return self.w2.shape[1]

    @property
    def inter_padded(self) -> int:
        return self.w2.shape[2] * 2

    @property
    def gemm_format(self) -> str:
        return gemm_format(self.act)


def run_moe(tokens: Tokens, routing: Routing, experts: Experts, out: torch.Tensor, *, device: DeviceFacts | None,
            impl: Impl, tactic: TacticChoice = None, fused_epilogue: bool | None = None) -> torch.Tensor:
    """One MoE forward into `out` [T, cols] (cols = the unpadded or the padded hidden size); arguments are validated
    by the caller. `device` (from `jit.arch.device_facts`, looked up once by the caller) is required for "kernels".
    tactic: None lets the heuristic choose each GEMM's tactic (`kernels.grouped_mm_fp4.moe_tactics`), one Tactic
    pins both GEMMs, a (GEMM1, GEMM2) pair of equal tile_m pins each.
    fused_epilogue: None fuses where it applies, True requires it (ValueError), False never."""
    if tokens.num_tokens == 0:
        return out
    if impl == "kernels":
        assert device is not None
        return _run_kernels(tokens, routing, experts, out, device, tactic, fused_epilogue)
    return _run_reference(tokens, routing, experts, out, tactic, device)


# ------------------------------------------------------------------------------------------------------------------
# The kernel implementation


@dataclass(frozen=True)
class RowPlan:
    """Host-side sizes of one forward: everything follows from (T, k, E, tile height), and the tactic of each GEMM
    (equal tile_m: GEMM2 reads GEMM1's output rows, padded per expert to the tile height)."""

    gemm1: Tactic     # GEMM1 (fc1, with the fused activation where it applies), N = 2 * Ip
    gemm2: Tactic     # GEMM2 (fc2, the routed-rows store), N = Hp
    num_tokens: int
    top_k: int
    num_experts: int
    bound: int        # padded rows: round_up(T*k + min(E, T*k) * (TM - 1), TM)
    tiles: int        # bound / TM
    sf_rows: int      # round_up(bound, 128): rows of the 128x4 scale layout
    workspace_elements: int
    fused_plan_scatter: bool = False  # plan and scatter as one kernel (ops.moe_glue.fused_plan_scatter_serves)

    @property
    def tile_m(self) -> int:
        """The tile height both GEMMs and the glue kernels pad every expert's rows to."""
        return self.gemm1.tile_m

    @property
    def tactic(self) -> Tactic:
        """GEMM1's tactic (the one whose tile_m the plan pads to), for callers that read a single tactic."""
        return self.gemm1


def _checked_tactics(tactic: TacticChoice, rows: int, num_experts: int, fmt: str, target: Target | None,
                     sm_count: int | None, hp: int, ip: int) -> tuple[Tactic, Tactic]:
    """(GEMM1, GEMM2) tactics: the heuristic's for each GEMM (tactic None), one pinned tactic for both, or a pinned
    pair. ValueError for a tactic outside the format's candidates or a pair of unequal tile_m."""
    if tactic is None:
        return moe_tactics(rows, num_experts, fmt, target, sm_count, hidden_padded=hp, inter_padded=ip)
    pair = tactic if isinstance(tactic, tuple) else (tactic, tactic)
    if len(pair) != 2:
        raise ValueError(f"fused_moe: tactic must be a Tactic or a (GEMM1, GEMM2) pair, got {tactic!r}")
    for t in pair:
        if t not in GROUPED.candidates(fmt):
            raise ValueError(f"fused_moe: tactic for {fmt} must be one of "
                             f"{[c.name for c in GROUPED.candidates(fmt)]}, got {t!r}")
    if pair[0].tile_m != pair[1].tile_m:
        raise ValueError(f"fused_moe: the two GEMMs' tactics must share tile_m (GEMM2 reads GEMM1's padded rows), got "
                         f"{pair[0].name} and {pair[1].name}")
    return pair[0], pair[1]


@lru_cache(maxsize=1024)
def row_plan(num_tokens: int, top_k: int, num_experts: int, gemm_fmt: str, tactic: TacticChoice,
             target: Target | None, sm_count: int | None = None, hidden_padded: int = 0,
             inter_padded: int = 0) -> RowPlan:
    """The row plan of one forward (cached: a repeated shape costs a dictionary lookup).

    Parameters
    ----------
    num_tokens, top_k, num_experts : int
        T, k, E.
    gemm_fmt : str
        The grouped GEMM format, "mxfp4" (W4A4) or "mxfp8_mxfp4" (W4A8).
    tactic : Tactic, (Tactic, Tactic) or None
        One grouped GEMM tactic for both GEMMs, a (GEMM1, GEMM2) pair of equal tile_m, or None: the heuristic's
        choice per GEMM for `target` (`kernels.grouped_mm_fp4.moe_tactics`).
    target : Target or None
        The device's build target (None: the emulation menu).
    sm_count : int, optional
        The device's SM count, for `fused_plan_scatter_serves` and the tactics' wave rule (None: the target's
        assumed count for the tactics).
    hidden_padded, inter_padded : int
        Hp and Ip: the GEMMs' N and K for the heuristic (0: not known; both GEMMs then get the m-based choice).

    Returns
    -------
    RowPlan

    Raises
    ------
    ValueError
        A tactic outside the format's candidates, or a pair of unequal tile_m.
    """
    rows = num_tokens * top_k
    gemm1, gemm2 = _checked_tactics(tactic, rows, num_experts, gemm_fmt, target, sm_count, hidden_padded,
                                    inter_padded)
    tm = gemm1.tile_m
    bound = round_up(rows + min(num_experts, rows) * (tm - 1), tm)
    tiles = bound // tm
    end = max(a + n for a, n in workspace_offsets(num_tokens, top_k, num_experts, tiles).values())
    return RowPlan(gemm1, gemm2, num_tokens, top_k, num_experts, bound, tiles, round_up(bound, 128), end,
                   fused_plan_scatter_serves(num_tokens, top_k, num_experts, sm_count))


def check_row_plan(plan: RowPlan, hp: int, ip: int) -> None:
    """The 32-bit line of the kernel pipeline: the glue kernels keep pair and row indices (T*k, the padded rows) and
    the int32 plan workspace's offsets in 32-bit ints, and the grouped GEMMs take the padded rows and their scale
    counts as ints; element offsets (rows times columns) are 64-bit. ValueError before any launch above the line."""
    sf_cols = round_up(max(hp, ip) // 32, 4)
    check_index_range("fused_moe", pairs=plan.num_tokens * plan.top_k, padded_rows=plan.bound,
                      workspace_elements=plan.workspace_elements, scale_elements=plan.sf_rows * sf_cols)


@dataclass(frozen=True)
class GlueViews:
    """The tensors one forward uses (prefix views of a workspace's buffers)."""

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
    padded_start: torch.Tensor  # int32 [E], parts of `workspace`: which rows are routed (both GEMMs read only those
    counts: torch.Tensor        # rows of A; the fused epilogues skip the padding rows)


class Workspace:
    """Grow-only device buffers of one (device, stream, Hp, Ip, activation format), the prefix views of each plan,
    and the validated GEMM launchers over them. `lock` is held for a forward's whole launch sequence."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.lock = threading.Lock()
        self.store: dict[str, torch.Tensor] = {}
        self.retired: list[torch.Tensor] = []  # outgrown buffers, kept for CUDA graphs that captured them
        self.views: dict[tuple[RowPlan, bool], GlueViews] = {}
        # Launchers per (epilogue, buffers, weights, tactic): a repeated forward skips grouped_mm_fp4's checks. The
        # weights are held weakly (checked by identity on lookup, so a freed and reused id never hits).
        self.launchers: dict[tuple, tuple[weakref.ref, weakref.ref, Callable[..., Any]]] = {}

    def take(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self.store.get(name)
        if buf is None or buf.numel() < numel:
            size = max(numel, 2 * buf.numel() if buf is not None else numel)
            # Zeroed: the plan's done counter must start at 0 (the kernel resets it after every launch). An
            # out-of-memory error here leaves the store as it was: nothing is retired or replaced before the
            # allocation succeeds.
            grown = torch.zeros(size, dtype=dtype, device=self.device)
            if buf is not None:
                self.retired.append(buf)
            buf = self.store[name] = grown
            self.views.clear()
            self.launchers.clear()
        return buf[:numel]

    def views_for(self, plan: RowPlan, hp: int, ip: int, act: str, fused_activation: bool) -> GlueViews:
        """The buffers of one forward (cached per plan)."""
        views = self.views.get((plan, fused_activation))
        if views is not None:
            return views
        per_byte = 2 if act == "mxfp4" else 1
        data_dtype = torch.uint8 if act == "mxfp4" else torch.float8_e4m3fn
        bound, sf_rows = plan.bound, plan.sf_rows
        ws = self.take("workspace", plan.workspace_elements, torch.int32)
        x = self.take("x", bound * hp // per_byte, torch.uint8).view(bound, hp // per_byte)
        x_sf = self.take("x_sf", sf_rows * round_up(hp // 32, 4), torch.uint8)
        h = None if fused_activation else self.take("h", bound * 2 * ip, torch.bfloat16).view(bound, 2 * ip)
        a = self.take("a", bound * ip // per_byte, torch.uint8).view(bound, ip // per_byte)
        a_sf = self.take("a_sf", sf_rows * round_up(ip // 32, 4), torch.uint8)
        y = self.take("y", bound * hp, torch.bfloat16).view(bound, hp)
        parts = workspace_offsets(plan.num_tokens, plan.top_k, plan.num_experts, plan.tiles)
        (tiles_at, n_tiles), (start_at, n_e), (counts_at, _) = (parts["expert_of_tile"], parts["padded_start"],
                                                                parts["counts"])
        views = GlueViews(ws, x, x_sf, h, a, a_sf, y, ws[tiles_at:tiles_at + n_tiles], x.view(data_dtype),
                          a.view(data_dtype), ws[start_at:start_at + n_e], ws[counts_at:counts_at + n_e])
        if len(self.views) > 256:
            self.views.clear()
        self.views[(plan, fused_activation)] = views
        return views

    def launcher(self, key: tuple, w: torch.Tensor, w_sf: torch.Tensor,
                 make: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
        """The cached launcher under `key` for weights (w, w_sf), made on a miss."""
        hit = self.launchers.get(key)
        if hit is None or hit[0]() is not w or hit[1]() is not w_sf:
            if len(self.launchers) >= 1024:
                self.launchers.clear()
            hit = self.launchers[key] = (weakref.ref(w), weakref.ref(w_sf), make())
        return hit[2]


_WORKSPACES: dict[tuple, Workspace] = {}
_WORKSPACES_LOCK = threading.Lock()


def workspace(device: torch.device, hp: int, ip: int, act: str) -> Workspace:
    """The workspace of the current stream on `device` for these sizes (made on first use)."""
    key = (device, torch.cuda.current_stream(device).cuda_stream, hp, ip, act)
    ws = _WORKSPACES.get(key)
    if ws is None:
        with _WORKSPACES_LOCK:
            ws = _WORKSPACES.setdefault(key, Workspace(device))
    return ws


def glue_views(device: torch.device, plan: RowPlan, hp: int, ip: int, act: str,
               fused_activation: bool = False) -> GlueViews:
    """The buffers of one forward in the current stream's workspace on `device` (tests, benchmarks, sanitizer
    workloads; the pipeline uses its workspace directly, under the workspace's lock)."""
    return workspace(device, hp, ip, act).views_for(plan, hp, ip, act, fused_activation)


def workspace_part(views: GlueViews, plan: RowPlan, name: str) -> torch.Tensor:
    """One part of the plan workspace (for tests and debugging): ids, weights (float32), rank, dest, counts, ..."""
    offset, length = workspace_offsets(plan.num_tokens, plan.top_k, plan.num_experts, plan.tiles)[name]
    part = views.workspace[offset:offset + length]
    return part.view(torch.float32) if name == "weights" else part


def plan_and_scatter(module: Any, plan: RowPlan, views: GlueViews, routing: torch.Tensor | tuple[torch.Tensor, ...],
                     hidden: torch.Tensor, hidden_cols: int, *, input_sf: torch.Tensor | None = None,
                     swizzled_input_sf: bool = True, id_base: int = 0, id_limit: int | None = None,
                     skip_foreign: bool = False, fused: bool | None = None) -> None:
    """The plan and the scatter of one forward: one kernel (plan_scatter) at decode sizes, else plan then scatter.

    Both write the same workspace (ids, weights, ranks, dest, counts, padded starts, expert_of_tile) and the same
    routed rows and scales of `views.x` / `views.x_sf`; padding rows' scales are zeroed, their data left as it is.

    Parameters
    ----------
    module : the loaded glue module (`ops.moe_glue.glue_module`) of the activation format
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
    id_base, id_limit, skip_foreign :
        Precomputed ids: global ids valid in [0, id_limit) (default E), this rank's experts from id_base. With
        `skip_foreign` a pair routed to another rank's expert gets local id -1, weight 0 and no row (dest -1): the
        scatter, the GEMMs, the activation and finalize never compute it.
    fused : bool, optional
        Force (True) or forbid (False) plan_scatter; None follows `plan.fused_plan_scatter`. Forcing it beyond the
        kernel's limits (T <= 128, T*k <= 1024) raises in the module.
    """
    k, num_e, tm = plan.top_k, plan.num_experts, plan.tile_m
    limit = num_e if id_limit is None else id_limit
    from_logits = isinstance(routing, torch.Tensor)
    if plan.fused_plan_scatter if fused is None else fused:
        ids, weights = (routing, None) if from_logits else routing
        module.plan_scatter(ids, weights, hidden, input_sf, swizzled_input_sf, views.workspace, views.x, views.x_sf,
                            k, num_e, hidden_cols, tm, plan.bound, id_base, limit, skip_foreign)
        return
    if from_logits:
        module.plan_logits(routing, views.workspace, k, tm, plan.tiles)
    else:
        module.plan_ids(routing[0], routing[1], views.workspace, num_e, tm, plan.tiles, id_base, limit, skip_foreign)
    if input_sf is None:
        module.scatter(hidden, views.workspace, views.x, views.x_sf, k, num_e, hidden_cols, tm, plan.bound)
    else:
        module.scatter_prequantized(hidden, input_sf, swizzled_input_sf, views.workspace, views.x, views.x_sf, k,
                                    num_e, tm, plan.bound)


def _scalar_or_tensor(v: Scalar | None, default: float) -> tuple[float, torch.Tensor | None]:
    if isinstance(v, torch.Tensor):
        return default, v
    return (default if v is None else float(v)), None


def fuses_activation(experts: Experts, tactic: Tactic) -> bool:
    """Whether GEMM1's epilogue can run the activation: gate/up interleaved (a pair in adjacent columns) and a tile
    of whole 32-output scale blocks (tile_n % 64 == 0)."""
    return experts.layout == "interleaved" and (2 * experts.inter_padded) % 64 == 0 and \
        GROUPED.serves("swiglu_quantize", experts.gemm_format, tactic)


def _run_kernels(tokens: Tokens, routing: Routing, experts: Experts, out: torch.Tensor, device: DeviceFacts,
                 tactic: TacticChoice, fused_epilogue: bool | None) -> torch.Tensor:
    num_e = experts.num_experts
    plan = row_plan(tokens.num_tokens, routing.top_k, num_e, experts.gemm_format, tactic, device.target,
                    device.sm_count, experts.hidden_padded, experts.inter_padded)
    check_row_plan(plan, experts.hidden_padded, experts.inter_padded)
    fusable = fuses_activation(experts, plan.gemm1)
    if fused_epilogue and not fusable:
        raise ValueError(f"fused_moe: fused_epilogue=True needs interleaved gate/up weights and a GEMM1 tactic with "
                         f"tile_n % 64 == 0; got the {experts.layout} layout, tactic {plan.gemm1.name}")
    module = glue_module(device.target, experts.act)
    hp, ip = experts.hidden_padded, experts.inter_padded
    ws = workspace(out.device, hp, ip, experts.act)
    with on_device(out.device.index), ws.lock:
        views = ws.views_for(plan, hp, ip, experts.act, fusable if fused_epilogue is None else fused_epilogue)
        plan_and_scatter(module, plan, views, routing.logits if routing.logits is not None else
                         (routing.ids, routing.weights), tokens.data, hp, input_sf=tokens.scales,
                         swizzled_input_sf=tokens.swizzled_scales, id_base=routing.id_base, id_limit=routing.id_limit,
                         skip_foreign=routing.foreign(num_e))
        _gemms_and_finalize(ws, plan, views, module, experts, out, device.target)
    return out


def _gemms_and_finalize(ws: Workspace, plan: RowPlan, views: GlueViews, module: Any, e: Experts,
                        out: torch.Tensor, target: Target) -> None:
    """GEMM1 -> activation -> GEMM2 -> finalize, after `plan_and_scatter` ran on `views`; GEMM1 runs the activation
    in its epilogue when `views` has no intermediate. GEMM1 runs `plan.gemm1`, GEMM2 `plan.gemm2`; each launcher is
    cached under its own tactic."""
    t1, t2, k, num_e, fmt = plan.gemm1, plan.gemm2, plan.top_k, plan.num_experts, e.gemm_format
    alpha, alpha_e = _scalar_or_tensor(e.alpha, 1.0)
    beta, beta_e = _scalar_or_tensor(e.beta, 0.0)
    limit, limit_e = _scalar_or_tensor(e.limit, 0.0)
    layout = LAYOUT_CODE[e.layout]
    b1 = e.w13_bias
    if b1 is not None and b1.data_ptr() % 16:
        b1 = b1.clone()  # the activation kernel and GEMM1's fused epilogue read bias rows in 16-byte vectors
    # The plan's per-expert rows: both GEMMs read only the routed rows of their A (ops/grouped_mm_fp4.py).
    routed = (views.padded_start, views.counts)
    if views.h is None:  # the fused epilogues: GEMM1 runs the activation, GEMM2 writes the routed rows only
        gemm1 = ws.launcher(("swiglu_quantize", id(views.x), id(e.w13), id(e.w13_sf), id(views.a), t1), e.w13,
                            e.w13_sf, lambda: grouped_mm_fp4_swiglu_quantize_launcher(
                                views.x_gemm, views.x_sf, e.w13, e.w13_sf, views.expert_of_tile, t1,
                                views.a_gemm, views.a_sf, routed=routed, fmt=fmt, target=target))
        gemm1(b1, e.swiglu_oai, e.g1, alpha_e, beta_e, limit_e, alpha, beta, limit, e.limit is not None)
        gemm2 = ws.launcher(("store_routed", id(views.a), id(e.w2), id(e.w2_sf), id(views.y), t2), e.w2, e.w2_sf,
                            lambda: grouped_mm_fp4_launcher(views.a_gemm, views.a_sf, e.w2, e.w2_sf,
                                                            views.expert_of_tile, t2, views.y, routed=routed,
                                                            fmt=fmt, target=target))
        gemm2()
    else:  # unfused: GEMM1 writes bf16, the activation kernel re-quantizes, GEMM2 writes every row
        ws.launcher(("store", id(views.x), id(e.w13), id(e.w13_sf), id(views.h), t1), e.w13, e.w13_sf,
                    lambda: grouped_mm_fp4_launcher(views.x_gemm, views.x_sf, e.w13, e.w13_sf, views.expert_of_tile,
                                                    t1, views.h, fmt=fmt, target=target, expert_rows=routed))()
        module.activation(views.h, views.workspace, views.a, views.a_sf, plan.num_tokens, k, num_e, plan.tile_m,
                          layout, e.swiglu_oai, e.g1, b1, alpha_e, beta_e, limit_e, alpha, beta, limit,
                          e.limit is not None)
        ws.launcher(("store", id(views.a), id(e.w2), id(e.w2_sf), id(views.y), t2), e.w2, e.w2_sf,
                    lambda: grouped_mm_fp4_launcher(views.a_gemm, views.a_sf, e.w2, e.w2_sf, views.expert_of_tile,
                                                    t2, views.y, fmt=fmt, target=target, expert_rows=routed))()
    module.finalize(views.y, views.workspace, out, k, num_e, plan.tile_m, e.g2, e.w2_bias)


# ------------------------------------------------------------------------------------------------------------------
# The reference implementation (device-side torch; the oracle)


@dataclass(frozen=True)
class ExpertRows:
    """Where the T*k (token, expert) pairs live in the padded, expert-contiguous GEMM rows, and the tactic of each
    GEMM (equal tile_m)."""

    gemm1: Tactic
    gemm2: Tactic
    bound: int                    # padded row count the buffers are sized by
    dest: torch.Tensor            # [T*k] padded row of permuted pair i
    token_of_row: torch.Tensor    # [T*k] source token of permuted pair i
    inverse: torch.Tensor         # [T*k] permuted position of expanded row t*k + slot
    expert_of_tile: torch.Tensor  # int32 [bound / TM]
    expert_of_row: torch.Tensor   # int64 [bound]

    @property
    def tactic(self) -> Tactic:
        """GEMM1's tactic (its tile_m pads the rows), for callers that read a single tactic."""
        return self.gemm1


def tile_layout(offsets: torch.Tensor, num_rows_bound: int, tile_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From expert_offsets [E+1] (permuted, unpadded): (padded_start [E] int64, expert_of_tile int32 [tiles])."""
    counts = offsets[1:] - offsets[:-1]
    padded = (counts + tile_m - 1) // tile_m * tile_m
    padded_end = torch.cumsum(padded, 0)
    tile_rows = torch.arange(num_rows_bound // tile_m, device=offsets.device, dtype=torch.int64) * tile_m
    expert_of_tile = torch.searchsorted(padded_end, tile_rows, right=True)
    # Unused trailing tiles: the last expert (a valid index; their rows are never read).
    return padded_end - padded, expert_of_tile.clamp(max=counts.numel() - 1).to(torch.int32)


def plan_expert_rows(ids: torch.Tensor, num_e: int, fmt: str, tactic: TacticChoice,
                     target: Target | torch.device | None, validate_ids: bool, *, sm_count: int | None = None,
                     hidden_padded: int = 0, inter_padded: int = 0) -> ExpertRows:
    """The reference's row plan: the pairs sorted by expert, each expert's segment padded to the tile height. The
    heuristic's tactics (tactic None; per GEMM, as `row_plan` chooses them from Hp, Ip and `sm_count`) are the ones
    for `target` (a CUDA device: its target and SM count; CPU or None: the emulation menu); one Tactic pins both
    GEMMs, a pair pins each."""
    if isinstance(target, torch.device):
        if target.type == "cuda":
            facts = device_facts(target)
            target, sm_count = facts.target, sm_count if sm_count is not None else facts.sm_count
        else:
            target = None
    # Pairs are permuted as one column, so a rank may hold fewer experts than top_k (expert parallelism).
    offsets, pair_of_row, inverse = permute(ids.reshape(-1, 1), num_e, validate_ids=validate_ids)
    token_of_row = torch.div(pair_of_row, ids.shape[1], rounding_mode="floor")
    rows = ids.numel()
    gemm1, gemm2 = _checked_tactics(tactic, rows, num_e, fmt, target, sm_count, hidden_padded, inter_padded)
    tm = gemm1.tile_m
    bound = round_up(rows + min(num_e, rows) * (tm - 1), tm)
    padded_start, expert_of_tile = tile_layout(offsets, bound, tm)
    pair = torch.arange(rows, device=offsets.device)
    sorted_expert = torch.searchsorted(offsets[1:], pair, right=True)
    dest = padded_start[sorted_expert] + pair - offsets[sorted_expert]
    expert_of_row = expert_of_tile.long().repeat_interleave(tm)
    return ExpertRows(gemm1, gemm2, bound, dest, token_of_row, inverse, expert_of_tile, expert_of_row)


def swiglu(h: torch.Tensor, layout: str, inter_padded: int, swiglu_oai: bool, alpha: Scalar, beta: Scalar,
           limit: Scalar | None) -> torch.Tensor:
    """h [rows, 2*Ip] float32 -> [rows, Ip]: gate/up as `layout` orders them. alpha/beta/limit are floats or per-row
    tensors [rows, 1]."""
    if layout == "interleaved":
        gate, up = h[:, 0::2], h[:, 1::2]
    elif layout == "up_first":
        up, gate = h[:, :inter_padded], h[:, inter_padded:]
    else:
        gate, up = h[:, :inter_padded], h[:, inter_padded:]
    if not swiglu_oai:
        return gate * torch.sigmoid(gate) * up
    if limit is not None:
        gate = gate.clamp(max=limit)
        up = up.clamp(-limit, limit)
    return (up + beta) * gate * torch.sigmoid(alpha * gate)


def _quantize(x: torch.Tensor, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    return mxfp4_quantize(x) if act == "mxfp4" else mxfp8_quantize(x, True, 32)


def _per_row(v: Scalar | None, r: ExpertRows) -> Scalar | None:
    return v.float().index_select(0, r.expert_of_row).unsqueeze(1) if isinstance(v, torch.Tensor) else v


def run_experts(aq: torch.Tensor, asf: torch.Tensor, r: ExpertRows, e: Experts) -> torch.Tensor:
    """GEMM1 input (quantized padded rows) -> GEMM2 output + fc2 bias, float32 [bound, Hp]."""
    h = grouped_mm_fp4(aq, asf, e.w13, e.w13_sf, r.expert_of_tile, r.gemm1, fmt=e.gemm_format).float()
    if e.g1 is not None:
        h *= _per_row(e.g1, r)
    if e.w13_bias is not None:
        h += e.w13_bias.float().index_select(0, r.expert_of_row)
    a = swiglu(h, e.layout, e.inter_padded, e.swiglu_oai, _per_row(e.alpha, r), _per_row(e.beta, r),
               _per_row(e.limit, r))
    aq2, asf2 = _quantize(a.contiguous(), e.act)
    y = grouped_mm_fp4(aq2, asf2, e.w2, e.w2_sf, r.expert_of_tile, r.gemm2, fmt=e.gemm_format).float()
    if e.g2 is not None:
        y *= _per_row(e.g2, r)
    if e.w2_bias is not None:
        y += e.w2_bias.float().index_select(0, r.expert_of_row)
    return y


def local_routing(ids: torch.Tensor, weights: torch.Tensor, routing: Routing,
                  num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global ids -> this rank's (clamped into [0, E)), with other ranks' pairs weighted 0 (device ops only)."""
    local = ids.long() - routing.id_base
    mine = (local >= 0) & (local < num_experts)
    weights = torch.where(mine, weights.float(), torch.zeros((), device=weights.device))
    return local.clamp(0, num_experts - 1).to(torch.int32).contiguous(), weights


def _run_reference(tokens: Tokens, routing: Routing, e: Experts, out: torch.Tensor, tactic: TacticChoice,
                   device: DeviceFacts | None) -> torch.Tensor:
    num_e, num_t, hp = e.num_experts, tokens.num_tokens, e.hidden_padded
    if routing.logits is not None:
        ids, weights = route(routing.logits, routing.top_k)
    else:
        ids, weights = routing.ids, routing.weights
    validate = routing.validate_ids and routing.logits is None
    if routing.foreign(num_e):
        ids, weights = local_routing(ids, weights, routing, num_e)
        validate = False  # checked against the global range by the caller
    elif not routing.validate_ids and routing.logits is None:
        ids, _ = clamp_expert_ids(ids, num_e)
    r = plan_expert_rows(ids, num_e, e.gemm_format, tactic, device.target if device is not None else None, validate,
                         sm_count=device.sm_count if device is not None else None, hidden_padded=hp,
                         inter_padded=e.inter_padded)
    tok = r.token_of_row.long()
    if tokens.scales is None:  # float rows: gather, then quantize the padded rows
        x = torch.zeros(r.bound, hp, dtype=torch.float32, device=out.device)
        x[r.dest, : tokens.data.shape[1]] = tokens.data.index_select(0, tok).float()
        aq, asf = _quantize(x, e.act)
    else:  # MXFP8 rows and their scale rows, gathered into the padded layout
        sf_rows = (unswizzle_sf(tokens.scales, num_t, hp // 32, SfLayout.layout_128x4) if tokens.swizzled_scales
                   else tokens.scales).reshape(num_t, hp // 32)
        xq = torch.zeros(r.bound, hp, dtype=torch.uint8, device=out.device)
        xq[r.dest] = tokens.data.index_select(0, tok)
        xsf = torch.zeros(r.bound, hp // 32, dtype=torch.uint8, device=out.device)
        xsf[r.dest] = sf_rows.index_select(0, tok)
        aq, asf = xq.view(torch.float8_e4m3fn), swizzle_sf(xsf, SfLayout.layout_128x4)
    y = run_experts(aq, asf, r, e)
    # One gather from the padded rows straight into expanded (token-major) order, then the weighted sum in slot order.
    rows = r.dest.index_select(0, r.inverse.long())
    k = routing.top_k
    gathered = y.index_select(0, rows)[:, : out.shape[1]].reshape(num_t, k, out.shape[1])
    out.copy_((gathered * weights.float().unsqueeze(2)).sum(dim=1))
    return out
