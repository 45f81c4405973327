# SPDX-License-Identifier: Apache-2.0
"""GPT-OSS MoE forward on SM12x: routing -> permute into expert-contiguous, tile-padded rows -> grouped GEMM1
-> fc1 bias + activation -> re-quantization -> grouped GEMM2 -> fc2 bias -> weighted finalize.

Activation modes: W4A4 (activations quantized to MXFP4, the e2m1 x e2m1 kernel) and W4A8 (MXFP8 activations,
the e4m3 x e2m1 kernel, native SM12x only), chosen by the weights' `act`. W4A16 (bf16 activations) is not
offered: SM12x has no bf16 x e2m1 MMA, so it would mean a mixed-input mainloop that widens every weight to bf16
in registers and runs at the bf16 MMA rate; W4A8 keeps MXFP8's accuracy (8-bit elements, a scale per 32) at
the FP8 rate.

The two GEMMs (all of the FLOPs) are the grouped block-scaled kernel (ops/grouped_mm_fp4.py). The glue between
them has two implementations, both sync-free and CUDA-graph capturable: impl="kernels" (the default on CUDA),
glue kernels (ops/moe_glue.py: plan + scatter with quantization, one kernel at decode sizes; finalize) with the
activation and re-quantization in GEMM1's epilogue and GEMM2 writing the routed rows only (the MoE epilogues): 4
launches per forward at decode sizes (T <= 32 with T*k within one wave of the GPU's SMs), 5 beyond; unfused
(fused_epilogue=False, or weights not interleaved: a standalone activation kernel) 5 / 6; impl="reference",
device-side torch (about 185 launches), kept as the oracle.

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

from ..jit.arch import device_sm_count, device_target
from ..kernels.family import Tactic
from ..kernels.grouped_mm_fp4 import FAMILY as GROUPED
from ..kernels.grouped_mm_fp4 import heuristic
from ..ops.grouped_mm_fp4 import grouped_mm_fp4
from ..ops.moe_glue import (
    LAYOUT_CODE,
    ExpertParams,
    fuses_activation,
    glue_module,
    glue_views,
    kernels_support,
    plan_and_scatter,
    row_plan,
    run_pipeline,
    target_of,
)
from ..ops.quantize import mxfp4_quantize, mxfp8_quantize
from .routing import clamp_expert_ids, finalize, permute, route
from .weights import PreparedMoEWeights

Activation = Literal["swiglu_oai", "swiglu"]
Impl = Literal["kernels", "reference"]
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
    impl: Impl | None = None,
    fused_epilogue: bool | None = None,
    expert_offset: int = 0,
    num_global_experts: int | None = None,
) -> torch.Tensor:
    """GPT-OSS mixture-of-experts layer on SM120/SM121: routing, both grouped MXFP4 GEMMs and the glue between.

    Parameters
    ----------
    hidden : torch.Tensor
        [T, H] bf16/fp16/fp32 on CUDA (H unpadded, as the model's hidden size).
    routing : torch.Tensor or tuple of torch.Tensor
        Router logits [T, E] (top-k, softmax over the k chosen, as GPT-OSS), or (topk_ids [T, k] int,
        topk_weights [T, k] float) used as given.
    weights : PreparedMoEWeights
        From `prepare_gpt_oss_weights`: act="mxfp4" runs W4A4, act="mxfp8" W4A8 (activations are quantized to that
        format before each GEMM).
    top_k : int, optional
        k, required with router logits.
    activation : {"swiglu_oai", "swiglu"}
        GPT-OSS's clamped SwiGLU, (up + beta) * g * sigmoid(alpha * g) with g = min(gate, limit) and up clamped to
        [-limit, limit]; or plain silu(gate) * up.
    alpha, beta, limit : float
        swiglu_oai's parameters (GPT-OSS: 1.702, 1.0, 7.0); limit None: no clamping.
    validate_ids : bool
        Keyword-only. True checks precomputed ids on the host (one sync; ValueError on an id outside [0, E)); False
        is for CUDA-graph capture: ids are clamped on the device and nothing syncs.
    tactic : Tactic, optional
        Keyword-only. The grouped GEMM tile (default: the heuristic's pick for T * k rows over E experts).
    out_dtype : torch.dtype
        Keyword-only. The output's dtype.
    impl : {"kernels", "reference"}, optional
        Keyword-only. "kernels" (the default on CUDA when E <= 512 and k <= 16) runs the glue kernels
        (ops/moe_glue.py: plan + scatter in one kernel at decode sizes, GEMM1 with the activation fused: four to
        six launches per forward); "reference" the device-side torch pipeline, kept as the oracle.
    fused_epilogue : bool, optional
        Keyword-only, impl="kernels". GEMM1 runs fc1 bias + activation + quantization for GEMM2 in its epilogue
        (gemm/epilogues/swiglu_quantize.cuh), so the [rows, 2I] intermediate never reaches memory. None (default):
        wherever it applies (interleaved gate/up weights, a tactic with tile_n % 64 == 0); False: the unfused
        pipeline (GEMM1 writes bf16, a separate activation kernel), bit-identical; True: fused or ValueError.
    expert_offset : int
        Keyword-only. Expert parallelism: `weights` holds the global experts [expert_offset, expert_offset +
        weights.num_experts). Default 0.
    num_global_experts : int, optional
        Keyword-only. Expert parallelism: routing ids (and router logits' columns) are global, in
        [0, num_global_experts); pairs routed to experts outside this rank's slice contribute nothing (fc2 bias
        included: it is applied per routed local pair, so a sum over EP ranks counts each pair's bias once);
        a token with no local expert gives a zero row. None: expert_offset + weights.num_experts.

    Returns
    -------
    torch.Tensor
        [T, H] of `out_dtype`.

    Raises
    ------
    TypeError, ValueError
        Bad input, before any kernel launch.
    """
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
    num_g = _check_expert_slice(expert_offset, num_global_experts, num_e, fn)
    ep = num_g != num_e
    if impl not in (None, "kernels", "reference"):
        raise ValueError(f"{fn}: impl must be 'kernels' or 'reference', got {impl!r}")
    if isinstance(routing, torch.Tensor):
        if routing.ndim != 2 or routing.shape != (num_t, num_g):
            raise ValueError(f"{fn}: router logits must be [T, E] = {(num_t, num_g)}, got {tuple(routing.shape)}")
        if top_k is None or not 1 <= top_k <= num_g:
            raise ValueError(f"{fn}: top_k must be in [1, {num_g}] with router logits, got {top_k}")
        k = top_k
    else:
        ids, topk_weights = routing
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[0] != num_t:
            raise ValueError(f"{fn}: topk_ids must be [T, k] with T = {num_t}")
        if ids.shape[1] > num_g:
            raise ValueError(f"{fn}: top_k = {ids.shape[1]} exceeds the {num_g} experts")
        if not isinstance(topk_weights, torch.Tensor) or topk_weights.shape != ids.shape:
            raise ValueError(f"{fn}: topk_weights must have topk_ids' shape {tuple(ids.shape)}")
        k = ids.shape[1]
    if impl is None:
        impl = "kernels" if hidden.is_cuda and kernels_support(num_e, k) else "reference"
    if impl == "kernels":
        if ep:
            raise NotImplementedError(f"{fn}: expert_offset / num_global_experts (expert parallelism) run with "
                                      "impl='reference' only so far")
        return _fused_moe_kernels(hidden, routing, k, weights, activation, alpha, beta, limit, validate_ids, tactic,
                                  out_dtype, fused_epilogue)
    if fused_epilogue:
        raise ValueError(f"{fn}: fused_epilogue=True needs impl='kernels'")
    if isinstance(routing, torch.Tensor):
        ids, topk_weights = route(routing, top_k)
    elif not validate_ids:
        ids, _ = clamp_expert_ids(ids, num_g)
    elif ep and ids.numel() and bool(((ids < 0) | (ids >= num_g)).any()):  # the one sync, as permute's
        raise ValueError(f"{fn}: topk_ids holds expert ids outside [0, {num_g})")
    if ep:  # global ids -> local; a pair of another rank's expert gets weight 0 on local expert 0 (sync-free)
        local = ids.long() - expert_offset
        mine = (local >= 0) & (local < num_e)
        ids = torch.where(mine, local, 0).to(ids.dtype)
        topk_weights = torch.where(mine, topk_weights, torch.zeros_like(topk_weights))
    devices = {t.device for t in (hidden, ids, topk_weights, weights.w13)}
    if len(devices) != 1:  # (grouped_mm_fp4 checks for CUDA before its first launch)
        raise ValueError(f"{fn}: hidden, routing and weights must be on one device, got {sorted(map(str, devices))}")
    if num_t == 0:  # e.g. an idle data-parallel rank: nothing to launch
        return hidden.new_zeros((0, weights.hidden_size), dtype=out_dtype)
    # EP: a rank may hold fewer experts than top_k, so plan the T*k pairs as rows of one choice each (the
    # expanded order t*k + slot, hence inverse, is the same); a pair's token is then its row // k.
    r = plan_expert_rows(ids.reshape(-1, 1) if ep else ids, num_e, _GEMM_FORMAT[weights.act], tactic, hidden.device,
                         validate_ids)
    token_of_row = torch.div(r.token_of_row.long(), k, rounding_mode="floor") if ep else r.token_of_row.long()

    x = torch.zeros(r.bound, weights.hidden_size_padded, dtype=torch.float32, device=hidden.device)
    x[r.dest, : weights.hidden_size] = hidden.index_select(0, token_of_row).float()
    aq, asf = _quantize(x, weights.act)
    y = run_experts(aq, asf, r, weights, activation, alpha, beta, limit)
    y_permuted = y.index_select(0, r.dest)[:, : weights.hidden_size].contiguous()
    return finalize(y_permuted, r.inverse, topk_weights, out_dtype=out_dtype)


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _check_expert_slice(expert_offset: object, num_global_experts: object, num_e: int, fn: str) -> int:
    """Checks the expert-parallel slice arguments; returns the global expert count."""
    if not isinstance(expert_offset, int) or isinstance(expert_offset, bool):
        raise TypeError(f"{fn}: expert_offset must be an int, got {type(expert_offset).__name__}")
    if num_global_experts is None:
        num_global_experts = expert_offset + num_e
    if not isinstance(num_global_experts, int) or isinstance(num_global_experts, bool):
        raise TypeError(f"{fn}: num_global_experts must be an int or None, got {type(num_global_experts).__name__}")
    if expert_offset < 0 or expert_offset + num_e > num_global_experts:
        raise ValueError(f"{fn}: the local experts [{expert_offset}, {expert_offset + num_e}) must lie in "
                         f"[0, num_global_experts = {num_global_experts})")
    return num_global_experts


def _fused_moe_kernels(hidden: torch.Tensor, routing: torch.Tensor | tuple[torch.Tensor, torch.Tensor], k: int,
                       w: PreparedMoEWeights, activation: Activation, alpha: Scalar, beta: Scalar,
                       limit: Scalar | None, validate_ids: bool, tactic: Tactic | None,
                       out_dtype: torch.dtype, fused_epilogue: bool | None = None) -> torch.Tensor:
    """fused_moe's kernel pipeline (arguments already checked for shape; dtypes, devices and limits here)."""
    fn = "fused_moe"
    num_e, num_t = w.num_experts, hidden.shape[0]
    if not kernels_support(num_e, k):
        raise ValueError(f"{fn}: impl='kernels' serves E <= 512 experts and top_k <= 16; got E = {num_e}, k = {k} "
                         "(use impl='reference')")
    if out_dtype not in _FLOATS:
        raise TypeError(f"{fn}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    tensors = [hidden, w.w13] + ([routing] if isinstance(routing, torch.Tensor) else list(routing))
    devices = {t.device for t in tensors}
    if len(devices) != 1 or hidden.device.type != "cuda":
        raise ValueError(f"{fn}: impl='kernels' needs hidden, routing and weights on one CUDA device, got "
                         f"{sorted(map(str, devices))}")
    if isinstance(routing, torch.Tensor):
        if routing.dtype not in _FLOATS:
            raise TypeError(f"{fn}: router logits must be float32/float16/bfloat16, got {routing.dtype}")
        if not routing.is_contiguous():
            raise ValueError(f"{fn}: router logits must be contiguous")
    else:
        ids, topk_weights = routing
        if ids.dtype not in (torch.int32, torch.int64) or topk_weights.dtype not in _FLOATS:
            raise TypeError(f"{fn}: topk_ids must be int32/int64 and topk_weights float, got {ids.dtype} and "
                            f"{topk_weights.dtype}")
        if not (ids.is_contiguous() and topk_weights.is_contiguous()):
            raise ValueError(f"{fn}: topk_ids and topk_weights must be contiguous")
        if validate_ids and ids.numel() and bool(((ids < 0) | (ids >= num_e)).any()):  # the one sync
            raise ValueError(f"{fn}: topk_ids holds expert ids outside [0, {num_e})")
    for name, v in (("alpha", alpha), ("beta", beta), ("limit", limit)):
        if isinstance(v, torch.Tensor) and (v.numel() != num_e or v.device != hidden.device):
            raise ValueError(f"{fn}: {name} as a tensor must hold one value per expert ({num_e}) on {hidden.device}")
    if num_t == 0:
        return hidden.new_zeros((0, w.hidden_size), dtype=out_dtype)

    device = hidden.device
    plan = row_plan(num_t, k, num_e, _GEMM_FORMAT[w.act], tactic, target_of(device), device_sm_count(device))
    params = ExpertParams(
        w.w13, w.w13_sf, w.w13_bias, w.w2, w.w2_sf, w.w2_bias,
        LAYOUT_CODE["interleaved" if w.interleaved else ("up_first" if w.up_first else "gate_first")],
        activation == "swiglu_oai", _per_expert(alpha), _per_expert(beta), _per_expert(limit))
    hp, ip = w.hidden_size_padded, w.intermediate_size_padded
    fusable = fuses_activation(params, plan, _GEMM_FORMAT[w.act], ip)
    if fused_epilogue and not fusable:
        raise ValueError(f"{fn}: fused_epilogue=True needs interleaved gate/up weights and a tactic with tile_n % 64 "
                         f"== 0; got interleaved={w.interleaved}, tactic {plan.tactic.name}")
    module = glue_module(device, w.act)
    views = glue_views(device, plan, hp, ip, w.act, fusable if fused_epilogue is None else fused_epilogue)
    plan_and_scatter(module, plan, views, routing, hidden, hp)
    out = torch.empty(num_t, w.hidden_size, dtype=out_dtype, device=device)
    return run_pipeline(plan, views, module, params, out)


def _per_expert(v: Scalar | None) -> Scalar | None:
    if isinstance(v, torch.Tensor) and (v.dtype != torch.float32 or not v.is_contiguous()):
        return v.float().contiguous().reshape(-1)
    return v.reshape(-1) if isinstance(v, torch.Tensor) else v
