# SPDX-License-Identifier: Apache-2.0
"""GPT-OSS MoE forward on SM12x: routing -> permute into expert-contiguous, tile-padded rows -> grouped GEMM1
-> fc1 bias + activation -> re-quantization -> grouped GEMM2 -> fc2 bias -> weighted finalize.

Activation modes: W4A4 (activations quantized to MXFP4, the e2m1 x e2m1 kernel) and W4A8 (MXFP8 activations,
the e4m3 x e2m1 kernel, native SM12x only), chosen by the weights' `act`. W4A16 (bf16 activations) is not
offered: SM12x has no bf16 x e2m1 MMA, so it would mean a mixed-input mainloop that widens every weight to bf16
in registers and runs at the bf16 MMA rate; W4A8 keeps MXFP8's accuracy (8-bit elements, a scale per 32) at
the FP8 rate.

The two GEMMs (all of the FLOPs) are the grouped block-scaled kernel (ops/grouped_mm_fp4.py). The glue between
them (gather, quantize, bias, activation, finalize) is device-side torch: sync-free and CUDA-graph capturable,
but not yet fused into the GEMM prologue/epilogue; that fusion is the next step for speed, not for correctness.

Padding without a host sync: expert e's rows are padded to a multiple of the tile height TM, so every M tile
belongs to one expert. The host cannot know the per-expert counts without a sync, so it sizes the buffers by
the bound  sum_e ceil(c_e / TM) * TM <= T*k + min(E, T*k) * (TM - 1)  and the device writes which expert each
tile belongs to. Tiles past the last used one compute rows nobody reads (they are named after the last expert:
its weights are the ones most recently in L2). At decode (T*k rows, a handful of experts) that is one tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..jit.arch import device_target
from ..kernels.family import Tactic
from ..kernels.grouped_mm_fp4 import FAMILY as GROUPED
from ..kernels.grouped_mm_fp4 import heuristic
from ..ops.grouped_mm_fp4 import grouped_mm_fp4
from ..ops.quantize import mxfp4_quantize, mxfp8_quantize
from .routing import clamp_expert_ids, finalize, permute, route
from .weights import PreparedMoEWeights

Activation = Literal["swiglu_oai", "swiglu"]
_GEMM_FORMAT = {"mxfp4": "mxfp4", "mxfp8": "mxfp8_mxfp4"}  # weights.act -> grouped GEMM format
Scalar = float | torch.Tensor  # a float, or a per-expert tensor [E]


def _swiglu(h: torch.Tensor, w: PreparedMoEWeights, activation: Activation, alpha: Scalar, beta: Scalar,
            limit: Scalar | None) -> torch.Tensor:
    """h [rows, 2*Ip] float32 -> [rows, Ip]: gate/up as the prepared weights order them. alpha/beta/limit are
    floats or per-row tensors [rows, 1]."""
    ip = w.intermediate_size_padded
    if w.interleaved:
        gate, up = h[:, 0::2], h[:, 1::2]
    elif w.up_first:
        up, gate = h[:, :ip], h[:, ip:]
    else:
        gate, up = h[:, :ip], h[:, ip:]
    if activation == "swiglu":
        return gate * torch.sigmoid(gate) * up
    if limit is not None:
        gate = gate.clamp(max=limit)
        up = up.clamp(-limit, limit)
    return (up + beta) * gate * torch.sigmoid(alpha * gate)


def _tile_layout(offsets: torch.Tensor, num_rows_bound: int, tile_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From expert_offsets [E+1] (permuted, unpadded): (padded_start [E] int64, expert_of_tile int32 [tiles])."""
    counts = offsets[1:] - offsets[:-1]
    padded = (counts + tile_m - 1) // tile_m * tile_m
    padded_end = torch.cumsum(padded, 0)
    tiles = num_rows_bound // tile_m
    tile_rows = torch.arange(tiles, device=offsets.device, dtype=torch.int64) * tile_m
    expert_of_tile = torch.searchsorted(padded_end, tile_rows, right=True)
    # Unused trailing tiles: the last expert (a valid index; their rows are never read).
    return padded_end - padded, expert_of_tile.clamp(max=counts.numel() - 1).to(torch.int32)


@dataclass(frozen=True)
class ExpertRows:
    """Where the T*k (token, expert) pairs live in the padded, expert-contiguous GEMM rows."""

    tactic: Tactic
    bound: int                    # padded row count the buffers are sized by
    dest: torch.Tensor            # [T*k] padded row of permuted pair i
    token_of_row: torch.Tensor    # [T*k] source token of permuted pair i
    inverse: torch.Tensor         # [T*k] permuted position of expanded row t*k + slot
    expert_of_tile: torch.Tensor  # int32 [bound / TM]
    expert_of_row: torch.Tensor   # int64 [bound]


def plan_expert_rows(ids: torch.Tensor, num_e: int, fmt: str, tactic: Tactic | None, device: torch.device,
                     validate_ids: bool) -> ExpertRows:
    offsets, token_of_row, inverse = permute(ids, num_e, validate_ids=validate_ids)
    rows = ids.numel()
    if tactic is None:
        target = device_target(device) if device.type == "cuda" else None
        tactic = heuristic(rows, num_e, fmt, target)[0]
    elif tactic not in GROUPED.candidates(fmt):
        raise ValueError(f"fused_moe: tactic for {fmt} must be one of {[t.name for t in GROUPED.candidates(fmt)]}, "
                         f"got {tactic!r}")
    tm = tactic.tile_m
    bound = -(-(rows + min(num_e, rows) * (tm - 1)) // tm) * tm
    padded_start, expert_of_tile = _tile_layout(offsets, bound, tm)
    pair = torch.arange(rows, device=offsets.device)
    sorted_expert = torch.searchsorted(offsets[1:], pair, right=True)
    dest = padded_start[sorted_expert] + pair - offsets[sorted_expert]
    expert_of_row = expert_of_tile.long().repeat_interleave(tm)
    return ExpertRows(tactic, bound, dest, token_of_row, inverse, expert_of_tile, expert_of_row)


def _quantize(x: torch.Tensor, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    return mxfp4_quantize(x) if act == "mxfp4" else mxfp8_quantize(x, True, 32)


def _per_row(v: Scalar | None, r: ExpertRows) -> Scalar | None:
    return v.float().index_select(0, r.expert_of_row).unsqueeze(1) if isinstance(v, torch.Tensor) else v


def run_experts(aq: torch.Tensor, asf: torch.Tensor, r: ExpertRows, w: PreparedMoEWeights, activation: Activation,
             alpha: Scalar, beta: Scalar, limit: Scalar | None, fc1_scale: torch.Tensor | None = None,
             fc2_scale: torch.Tensor | None = None) -> torch.Tensor:
    """GEMM1 input (quantized padded rows) -> GEMM2 output + fc2 bias, float32 [bound, Hp].
    fc*_scale: optional per-expert output scales [E] applied to each GEMM's product before its bias."""
    h = grouped_mm_fp4(aq, asf, w.w13, w.w13_sf, r.expert_of_tile, r.tactic).float()
    if fc1_scale is not None:
        h *= _per_row(fc1_scale, r)
    if w.w13_bias is not None:
        h += w.w13_bias.float().index_select(0, r.expert_of_row)
    a = _swiglu(h, w, activation, _per_row(alpha, r), _per_row(beta, r), _per_row(limit, r))
    aq2, asf2 = _quantize(a.contiguous(), w.act)
    y = grouped_mm_fp4(aq2, asf2, w.w2, w.w2_sf, r.expert_of_tile, r.tactic).float()
    if fc2_scale is not None:
        y *= _per_row(fc2_scale, r)
    if w.w2_bias is not None:
        y += w.w2_bias.float().index_select(0, r.expert_of_row)
    return y


def fused_moe(
    hidden: torch.Tensor,
    routing: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    weights: PreparedMoEWeights,
    top_k: int | None = None,
    activation: Activation = "swiglu_oai",
    alpha: float = 1.702,
    beta: float = 1.0,
    limit: float | None = 7.0,
    *,
    validate_ids: bool = True,
    tactic: Tactic | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """hidden [T, H] bf16/fp16/fp32 on CUDA; routing = router logits [T, E] (softmax top-k, renormalised, as
    GPT-OSS) or (topk_ids [T, k] int, topk_weights [T, k] float); weights from prepare_gpt_oss_weights: act="mxfp4"
    runs W4A4, act="mxfp8" W4A8 (activations are quantized to that format before each GEMM). Returns [T, H].

    validate_ids=True checks precomputed ids on the host (one sync; ValueError on an id outside [0, E)).
    validate_ids=False is for CUDA-graph capture: ids are clamped on the device, nothing syncs."""
    fn = "fused_moe"
    if not isinstance(weights, PreparedMoEWeights):
        raise TypeError(f"{fn}: weights must come from prepare_gpt_oss_weights, got {type(weights).__name__}")
    if weights.act not in _GEMM_FORMAT:
        raise ValueError(f"{fn}: weights were prepared for act={weights.act!r}; expected 'mxfp4' or 'mxfp8'")
    if not isinstance(hidden, torch.Tensor) or hidden.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"{fn}: hidden must be a bf16/fp16/fp32 tensor")
    if hidden.ndim != 2 or hidden.shape[1] != weights.hidden_size:
        raise ValueError(f"{fn}: hidden must be [T, {weights.hidden_size}], got {tuple(hidden.shape)}")
    if not hidden.is_contiguous():
        raise ValueError(f"{fn}: hidden must be contiguous")
    if activation not in ("swiglu_oai", "swiglu"):
        raise ValueError(f"{fn}: activation must be 'swiglu_oai' or 'swiglu', got {activation!r}")
    num_e, num_t = weights.num_experts, hidden.shape[0]
    if isinstance(routing, torch.Tensor):
        if routing.ndim != 2 or routing.shape != (num_t, num_e):
            raise ValueError(f"{fn}: router logits must be [T, E] = {(num_t, num_e)}, got {tuple(routing.shape)}")
        if top_k is None or not 1 <= top_k <= num_e:
            raise ValueError(f"{fn}: top_k must be in [1, {num_e}] with router logits, got {top_k}")
        ids, topk_weights = route(routing, top_k)
    else:
        ids, topk_weights = routing
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[0] != num_t:
            raise ValueError(f"{fn}: topk_ids must be [T, k] with T = {num_t}")
        if ids.shape[1] > num_e:
            raise ValueError(f"{fn}: top_k = {ids.shape[1]} exceeds the {num_e} experts")
        if not isinstance(topk_weights, torch.Tensor) or topk_weights.shape != ids.shape:
            raise ValueError(f"{fn}: topk_weights must have topk_ids' shape {tuple(ids.shape)}")
        if not validate_ids:
            ids, _ = clamp_expert_ids(ids, num_e)
    devices = {t.device for t in (hidden, ids, topk_weights, weights.w13)}
    if len(devices) != 1:  # (grouped_mm_fp4 checks for CUDA before its first launch)
        raise ValueError(f"{fn}: hidden, routing and weights must be on one device, got {sorted(map(str, devices))}")
    if num_t == 0:  # e.g. an idle data-parallel rank: nothing to launch
        return hidden.new_zeros((0, weights.hidden_size), dtype=out_dtype)
    r = plan_expert_rows(ids, num_e, _GEMM_FORMAT[weights.act], tactic, hidden.device, validate_ids)

    x = torch.zeros(r.bound, weights.hidden_size_padded, dtype=torch.float32, device=hidden.device)
    x[r.dest, : weights.hidden_size] = hidden.index_select(0, r.token_of_row.long()).float()
    aq, asf = _quantize(x, weights.act)
    y = run_experts(aq, asf, r, weights, activation, alpha, beta, limit)
    y_permuted = y.index_select(0, r.dest)[:, : weights.hidden_size].contiguous()
    return finalize(y_permuted, r.inverse, topk_weights, out_dtype=out_dtype)
