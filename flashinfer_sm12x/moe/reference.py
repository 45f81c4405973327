# SPDX-License-Identifier: Apache-2.0
"""Float64 reference of the GPT-OSS MoE layer, the yardstick for the fused kernels.

Pure torch, any device. It shares no code with `routing.py` or `weights.py` (its routing, activation and
expert loop are written out here, by other means than the kernel-side helpers use); from the package it
only uses the formats module's dequantizers and quantizers.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..checks import require_tensor
from ..formats import SfLayout, mxfp4_dequantize, mxfp4_quantize, mxfp8_dequantize, mxfp8_quantize

Activation = Literal["swiglu_oai", "swiglu"]
ActQuant = Literal["mxfp4", "mxfp8"]
_ACTIVATIONS = ("swiglu_oai", "swiglu")
_ACT_QUANTS = (None, "mxfp4", "mxfp8")
def _tensor_arg(x: object, name: str) -> torch.Tensor:
    return require_tensor(name, x, "gpt_oss_moe_reference")


_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _shape(x: torch.Tensor, want: tuple[int, ...], name: str) -> None:
    if tuple(x.shape) != want:
        raise ValueError(f"gpt_oss_moe_reference: {name} must have shape {want}, got {tuple(x.shape)}")


def _select_experts(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT-OSS routing in float64: the k largest logits (ties: lower expert id first), softmax over those k.

    Written as an explicit rank count rather than a sort or topk, so it cross-checks `routing.route`:
    rank(e) = #{e' : x[e'] > x[e]} + #{e' < e : x[e'] == x[e]}; expert e fills slot rank(e) if rank(e) < k.
    """
    x = logits.double()
    num_e = x.shape[1]
    idx = torch.arange(num_e, device=x.device)
    earlier = (idx.unsqueeze(0) < idx.unsqueeze(1)).unsqueeze(0)  # [1, e, e'] : e' < e
    ranks = []
    for c in x.split(1024):  # bounds the [chunk, E, E] comparison tensors
        greater = (c.unsqueeze(1) > c.unsqueeze(2)).sum(dim=2)  # [t, e, e'] -> count of e' beating e
        ties = ((c.unsqueeze(1) == c.unsqueeze(2)) & earlier).sum(dim=2)
        ranks.append(greater + ties)  # a permutation of 0..E-1 per token
    rank = torch.cat(ranks) if ranks else torch.zeros_like(x, dtype=torch.int64)
    ids = torch.argsort(rank, dim=1)[:, :k]
    top = x.gather(1, ids)
    e = torch.exp(top - top.amax(dim=1, keepdim=True))
    return ids, e / e.sum(dim=1, keepdim=True)


def _quant_dequant(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Round rows of x through MXFP4 or MXFP8 (blocks of 32 along the last dim, rceil E8M0 scales).

    x is first rounded to float32: the formats module's quantizers, like the kernels, take fp32 at most.
    """
    xf = x.float()
    if fmt == "mxfp4":
        q, sf = mxfp4_quantize(xf, sfLayout=SfLayout.layout_linear)
        return mxfp4_dequantize(q, sf, SfLayout.layout_linear).double()
    q, sf = mxfp8_quantize(xf, is_sf_swizzled_layout=False)
    return mxfp8_dequantize(q, sf, is_sf_swizzled_layout=False).double()


def _activation(h: torch.Tensor, activation: str, interleaved: bool, up_first: bool, alpha: float, beta: float,
                limit: float | None) -> torch.Tensor:
    inter = h.shape[1] // 2
    if interleaved:
        gate, up = h[:, 0::2], h[:, 1::2]
    else:
        first, second = h[:, :inter], h[:, inter:]
        gate, up = (second, first) if up_first else (first, second)
    if activation == "swiglu":
        return gate * torch.sigmoid(gate) * up
    if limit is not None:
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
    return (up + beta) * gate * torch.sigmoid(alpha * gate)


def gpt_oss_moe_reference(
    hidden: torch.Tensor,
    routing: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w13_bias: torch.Tensor | None,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    w2_bias: torch.Tensor | None,
    top_k: int | None = None,
    activation: Activation = "swiglu_oai",
    interleaved: bool = True,
    alpha: float = 1.702,
    beta: float = 1.0,
    limit: float | None = 7.0,
    act_quant: ActQuant | None = None,
    *,
    up_first: bool = False,
    quantize_hidden: bool = True,
    out_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """GPT-OSS MoE forward in float64 on MXFP4 weights. Returns [T, H_out] in `out_dtype` (rounded once).

    Shapes (E experts, T tokens, H hidden, I intermediate, k = top_k):
      hidden [T, H] (any float dtype); routing: router logits [T, E], or (topk_ids [T, k] int, topk_weights
      [T, k] float) used as given; w13 uint8 [E, 2I, H/2] packed E2M1 (element 2j in the low nibble);
      w13_scale uint8 E8M0 [E, 2I, H/32], linear (row-major) layout as the checkpoint stores it;
      w13_bias [E, 2I] or None; w2 uint8 [E, H_out, I/2]; w2_scale [E, H_out, I/32]; w2_bias [E, H_out] or None.

    Steps (all float64 unless stated):
    1. Routing (logits only): ids = the k largest logits per token, in descending order, equal logits taken
       lower expert id first; weights w[t, j] = softmax over the k selected logits, i.e.
       exp(x_j - max) / sum_j' exp(x_j' - max). This equals softmax over all E then renormalising the k
       selected (vLLM's topk_softmax with renormalize=True; TRT-LLM's RoutingMethodType.Renormalize).
    2. Dequantize: W[e, n, k] = e2m1(code) * 2^(scale - 127) per block of 32 along k (0xFF scale -> NaN).
    3. If act_quant and quantize_hidden: x = dequant(quant(fp32(x))) per row, blocks of 32 along H
       (the block-scaled MMA needs both operands quantized; a pre-quantized input is unchanged by it).
    4. GEMM1: h = x @ W13[e]^T + b13[e], h in [.., 2I].
    5. Gate/up split: interleaved -> gate = h[:, 0::2], up = h[:, 1::2] (checkpoint rows g0,u0,g1,u1..);
       else halves [gate; up] (or [up; gate] with up_first, the order FlashInfer's CUTLASS MoE reads).
    6. Activation: swiglu_oai -> g = min(gate, limit); u = clamp(up, -limit, limit);
       a = (u + beta) * g * sigmoid(alpha * g)  (limit None: no clamping);
       swiglu -> a = silu(gate) * up = gate * sigmoid(gate) * up (alpha, beta, limit unused).
    7. If act_quant: a = dequant(quant(fp32(a))) per row, blocks of 32 along I: the kernels' re-quantization
       between the GEMMs (MXFP4: E2M1 elements; MXFP8: E4M3; both with rceil E8M0 scales).
    8. GEMM2: y = a @ W2[e]^T + b2[e].
    9. Combine: out[t] = sum_j w[t, j] * y[t, j], back in token order.
    """
    hidden = _tensor_arg(hidden, "hidden")
    for name, t in (("w13", w13), ("w13_scale", w13_scale), ("w2", w2), ("w2_scale", w2_scale)):
        if _tensor_arg(t, name).dtype != torch.uint8:
            raise TypeError(f"gpt_oss_moe_reference: {name} must be uint8, got {t.dtype}")
    if hidden.dtype not in _FLOATS:
        raise TypeError(f"gpt_oss_moe_reference: hidden must be a float tensor, got {hidden.dtype}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"gpt_oss_moe_reference: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if act_quant not in _ACT_QUANTS:
        raise ValueError(f"gpt_oss_moe_reference: act_quant must be one of {_ACT_QUANTS}, got {act_quant!r}")
    if hidden.dim() != 2 or w13.dim() != 3 or w2.dim() != 3:
        raise ValueError("gpt_oss_moe_reference: hidden must be 2-D, w13 and w2 3-D")
    num_e, two_i, h_in = w13.shape[0], w13.shape[1], 2 * w13.shape[2]
    h_out, inter = w2.shape[1], 2 * w2.shape[2]
    if two_i != 2 * inter:
        raise ValueError(f"gpt_oss_moe_reference: w13 has {two_i} rows, expected 2 * I = {2 * inter} (from w2)")
    if h_in % 32 or inter % 32:
        raise ValueError(f"gpt_oss_moe_reference: H = {h_in} and I = {inter} must be multiples of 32")
    _shape(hidden, (hidden.shape[0], h_in), "hidden")
    _shape(w13_scale, (num_e, two_i, h_in // 32), "w13_scale")
    _shape(w2, (num_e, h_out, inter // 2), "w2")
    _shape(w2_scale, (num_e, h_out, inter // 32), "w2_scale")
    if w13_bias is not None:
        _shape(_tensor_arg(w13_bias, "w13_bias"), (num_e, two_i), "w13_bias")
    if w2_bias is not None:
        _shape(_tensor_arg(w2_bias, "w2_bias"), (num_e, h_out), "w2_bias")
    num_t = hidden.shape[0]

    # 1. routing
    if isinstance(routing, tuple):
        if len(routing) != 2:
            raise ValueError("gpt_oss_moe_reference: routing tuple must be (topk_ids, topk_weights)")
        ids, weights = _tensor_arg(routing[0], "topk_ids"), _tensor_arg(routing[1], "topk_weights")
        if ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"gpt_oss_moe_reference: topk_ids must be int32 or int64, got {ids.dtype}")
        if not weights.is_floating_point():
            raise TypeError(f"gpt_oss_moe_reference: topk_weights must be float, got {weights.dtype}")
        if ids.dim() != 2 or ids.shape[0] != num_t or weights.shape != ids.shape:
            raise ValueError("gpt_oss_moe_reference: topk_ids and topk_weights must both be [T, k]")
        if top_k is not None and top_k != ids.shape[1]:
            raise ValueError(f"gpt_oss_moe_reference: top_k = {top_k} but topk_ids has {ids.shape[1]} columns")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_e):
            raise ValueError(f"gpt_oss_moe_reference: expert ids must lie in [0, {num_e})")
        ids, weights = ids.long(), weights.double()
    else:
        logits = _tensor_arg(routing, "router_logits")
        if not logits.is_floating_point():
            raise TypeError(f"gpt_oss_moe_reference: router_logits must be float, got {logits.dtype}")
        _shape(logits, (num_t, num_e), "router_logits")
        if not isinstance(top_k, int) or not 1 <= top_k <= num_e:
            raise ValueError(f"gpt_oss_moe_reference: top_k must be an int in [1, {num_e}], got {top_k!r}")
        ids, weights = _select_experts(logits, top_k)

    # 3. input quantization
    x = hidden.double()
    if act_quant is not None and quantize_hidden and num_t:
        x = _quant_dequant(x, act_quant)

    out = torch.zeros(num_t, h_out, dtype=torch.float64, device=hidden.device)
    for e in range(num_e):
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        # 2. dequantize one expert at a time (exact in fp32, widened): all 128 GPT-OSS experts would be 17 GB
        w13_f = mxfp4_dequantize(w13[e].contiguous(), w13_scale[e].contiguous(), SfLayout.layout_linear).double()
        w2_f = mxfp4_dequantize(w2[e].contiguous(), w2_scale[e].contiguous(), SfLayout.layout_linear).double()
        h = x[tok] @ w13_f.T  # 4
        if w13_bias is not None:
            h = h + w13_bias[e].double()
        a = _activation(h, activation, interleaved, up_first, alpha, beta, limit)  # 5, 6
        if act_quant is not None:  # 7
            a = _quant_dequant(a, act_quant)
        y = a @ w2_f.T  # 8
        if w2_bias is not None:
            y = y + w2_bias[e].double()
        out.index_add_(0, tok, y * weights[tok, slot].unsqueeze(1))  # 9
    return out.to(out_dtype)
