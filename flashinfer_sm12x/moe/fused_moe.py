"""GPT-OSS MoE forward on SM12x: routing -> permute into expert-contiguous, tile-padded rows -> MXFP4 grouped GEMM1
-> fc1 bias + activation -> MXFP4 re-quantization -> grouped GEMM2 -> fc2 bias -> weighted finalize.

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

from typing import Literal

import torch

from ..formats.quantize import mxfp4_quantize
from ..ops.grouped_mm_fp4 import Tactic, grouped_mm_fp4, heuristic
from .routing import clamp_expert_ids, finalize, permute, route
from .weights import PreparedMoEWeights

Activation = Literal["swiglu_oai", "swiglu"]


def _swiglu(h: torch.Tensor, w: PreparedMoEWeights, activation: Activation, alpha: float, beta: float,
            limit: float | None) -> torch.Tensor:
    """h [rows, 2*Ip] float32 -> [rows, Ip]: gate/up as the prepared weights order them."""
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
    GPT-OSS) or (topk_ids [T, k] int, topk_weights [T, k] float); weights from prepare_gpt_oss_weights with
    act="mxfp4" (W4A4: activations are quantized to MXFP4 before each GEMM). Returns [T, H] out_dtype.

    validate_ids=True checks precomputed ids on the host (one sync; ValueError on an id outside [0, E)).
    validate_ids=False is for CUDA-graph capture: ids are clamped on the device, nothing syncs."""
    fn = "fused_moe"
    if not isinstance(weights, PreparedMoEWeights):
        raise TypeError(f"{fn}: weights must come from prepare_gpt_oss_weights, got {type(weights).__name__}")
    if weights.act != "mxfp4":
        raise ValueError(f"{fn}: weights were prepared for act={weights.act!r}; this path runs W4A4 (act='mxfp4'). "
                         "W4A8 needs the MXFP8 x MXFP4 grouped kernel, which is not built yet")
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
    k = ids.shape[1]
    offsets, token_of_row, inverse = permute(ids, num_e, validate_ids=validate_ids)

    rows = num_t * k
    tactic = tactic or heuristic(rows, num_e)
    tm = tactic.tile_m
    bound = -(-(rows + min(num_e, rows) * (tm - 1)) // tm) * tm
    padded_start, expert_of_tile = _tile_layout(offsets, bound, tm)
    sorted_expert = torch.searchsorted(offsets[1:], torch.arange(rows, device=offsets.device), right=True)
    dest = padded_start[sorted_expert] + torch.arange(rows, device=offsets.device) - offsets[sorted_expert]
    expert_of_row = expert_of_tile.long().repeat_interleave(tm)

    hp = weights.hidden_size_padded
    x = torch.zeros(bound, hp, dtype=torch.float32, device=hidden.device)
    x[dest, : weights.hidden_size] = hidden.index_select(0, token_of_row.long()).float()
    xq, xsf = mxfp4_quantize(x)
    h = grouped_mm_fp4(xq, xsf, weights.w13, weights.w13_sf, expert_of_tile, tactic).float()
    if weights.w13_bias is not None:
        h += weights.w13_bias.float().index_select(0, expert_of_row)
    a = _swiglu(h, weights, activation, alpha, beta, limit)
    aq, asf = mxfp4_quantize(a.contiguous())
    y = grouped_mm_fp4(aq, asf, weights.w2, weights.w2_sf, expert_of_tile, tactic).float()
    if weights.w2_bias is not None:
        y += weights.w2_bias.float().index_select(0, expert_of_row)
    y_permuted = y.index_select(0, dest)[:, : weights.hidden_size].contiguous()
    return finalize(y_permuted, inverse, topk_weights, out_dtype=out_dtype)
