"""Shared inputs for the MoE tests and a per-token loop implementation that is independent of the package.

The loop decodes E2M1/E8M0 with its own table, routes with Python's sorted() and applies the activation
element by element from the formula, so it shares nothing with `flashinfer_sm12x.moe.reference` (nor with
the formats module, except for the optional activation quantizer).
"""

from __future__ import annotations

import math

import torch

from flashinfer_sm12x.formats import SfLayout, mxfp4_dequantize, mxfp4_quantize, mxfp8_dequantize, mxfp8_quantize

_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def make_weights(num_e: int, h: int, inter: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random checkpoint-layout MXFP4 expert weights with scales 2^-7..2^-2 and small bf16 biases."""
    g = torch.Generator().manual_seed(seed)

    def codes(*shape: int) -> torch.Tensor:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.int32).to(torch.uint8)

    def scales(*shape: int) -> torch.Tensor:
        return torch.randint(120, 126, shape, generator=g, dtype=torch.int32).to(torch.uint8)

    return {
        "w13": codes(num_e, 2 * inter, h // 2),
        "w13_scale": scales(num_e, 2 * inter, h // 32),
        "w13_bias": (torch.randn(num_e, 2 * inter, generator=g) * 0.5).bfloat16(),
        "w2": codes(num_e, h, inter // 2),
        "w2_scale": scales(num_e, h, inter // 32),
        "w2_bias": (torch.randn(num_e, h, generator=g) * 0.5).bfloat16(),
    }


def make_inputs(num_t: int, h: int, num_e: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(num_t, h, generator=g) * 2).bfloat16()
    logits = torch.randn(num_t, num_e, generator=g)
    return hidden, logits


def _dequant_row(packed: list[int], scales: list[int]) -> list[float]:
    vals = []
    for j, byte in enumerate(packed):
        s = 2.0 ** (scales[(2 * j) // 32] - 127)
        vals.append(_E2M1[byte & 0xF] * s)
        vals.append(_E2M1[byte >> 4] * s)
    return vals


def _dequant(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    rows = [_dequant_row(p, s) for p, s in zip(packed.tolist(), scales.tolist(), strict=True)]
    return torch.tensor(rows, dtype=torch.float64)


def loop_route(logits: torch.Tensor, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """Top-k by Python sort (ties: lower id), softmax over the chosen logits, in Python floats."""
    ids, weights = [], []
    for row in logits.double().tolist():
        chosen = sorted(range(len(row)), key=lambda e: (-row[e], e))[:k]
        m = max(row[e] for e in chosen)
        ex = [math.exp(row[e] - m) for e in chosen]
        ids.append(chosen)
        weights.append([v / sum(ex) for v in ex])
    return ids, weights


def _qdq_row(v: torch.Tensor, fmt: str) -> torch.Tensor:
    x = v.float().unsqueeze(0)
    if fmt == "mxfp4":
        q, sf = mxfp4_quantize(x, sfLayout=SfLayout.layout_linear)
        return mxfp4_dequantize(q, sf, SfLayout.layout_linear).double()[0]
    q, sf = mxfp8_quantize(x, is_sf_swizzled_layout=False)
    return mxfp8_dequantize(q, sf, is_sf_swizzled_layout=False).double()[0]


def loop_moe(hidden: torch.Tensor, ids: list[list[int]], weights: list[list[float]], w: dict[str, torch.Tensor],
             activation: str, interleaved: bool, up_first: bool = False, act_quant: str | None = None,
             alpha: float = 1.702, beta: float = 1.0, limit: float = 7.0) -> torch.Tensor:
    """One token, one expert at a time."""
    num_e, two_i = w["w13"].shape[0], w["w13"].shape[1]
    inter = two_i // 2
    w13 = [_dequant(w["w13"][e], w["w13_scale"][e]) for e in range(num_e)]
    w2 = [_dequant(w["w2"][e], w["w2_scale"][e]) for e in range(num_e)]
    out = torch.zeros(hidden.shape[0], w["w2"].shape[1], dtype=torch.float64)
    for t in range(hidden.shape[0]):
        x = hidden[t].double()
        if act_quant is not None:
            x = _qdq_row(x, act_quant)
        for e, wt in zip(ids[t], weights[t], strict=True):
            h = w13[e] @ x + w["w13_bias"][e].double()
            a = torch.empty(inter, dtype=torch.float64)
            for i in range(inter):
                if interleaved:
                    g, u = float(h[2 * i]), float(h[2 * i + 1])
                elif up_first:
                    g, u = float(h[inter + i]), float(h[i])
                else:
                    g, u = float(h[i]), float(h[inter + i])
                if activation == "swiglu":
                    a[i] = g / (1.0 + math.exp(-g)) * u
                else:
                    g = min(g, limit)
                    u = max(min(u, limit), -limit)
                    a[i] = (u + beta) * g / (1.0 + math.exp(-alpha * g))
            if act_quant is not None:
                a = _qdq_row(a, act_quant)
            y = w2[e] @ a + w["w2_bias"][e].double()
            out[t] += wt * y
    return out
