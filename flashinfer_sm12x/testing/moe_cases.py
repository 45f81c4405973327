# SPDX-License-Identifier: Apache-2.0
"""Shared inputs for the MoE tests and a per-token loop implementation that is independent of the package.

The loop decodes E2M1/E8M0 with its own table, routes with Python's sorted() and applies the activation
element by element from the formula, so it shares nothing with `flashinfer_sm12x.moe.reference` (nor with
the formats module, except for the optional activation quantizer).
"""

from __future__ import annotations

import math

import torch

from ..formats import SfLayout, mxfp4_dequantize, mxfp4_quantize, mxfp8_dequantize, mxfp8_quantize
from ..integrations.flashinfer_cutlass_fused_moe import cutlass_fused_moe
from ..moe.fused_moe import fused_moe
from ..moe.reference import gpt_oss_moe_reference
from ..moe.weights import prepare_gpt_oss_weights

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


def grouped_gemm_model(a, a_sf, b, b_sf, expert_of_tile, tactic, out=None, out_dtype=torch.bfloat16, *,
                       fmt=None, **_):
    """A torch model of grouped_mm_fp4's contract (float32 out), with the same format rule: uint8 `a` says nothing
    about its format, so the caller must name it."""
    from ..ops.grouped_mm_fp4 import gemm_format_of

    fmt = gemm_format_of(a, fmt)
    x = mxfp8_dequantize(a.view(torch.float8_e4m3fn), a_sf) if fmt == "mxfp8_mxfp4" else mxfp4_dequantize(a, a_sf)
    tm = tactic.tile_m
    assert x.shape[0] % tm == 0 and expert_of_tile.numel() == x.shape[0] // tm
    assert int(expert_of_tile.min()) >= 0 and int(expert_of_tile.max()) < b.shape[0]
    # float32 out (the kernel writes bf16): isolates the glue's logic from bf16 rounding, whose effect through
    # the MXFP4 re-quantization the H100 tests bound separately.
    out = torch.empty(x.shape[0], b.shape[1], dtype=torch.float32)
    for t, e in enumerate(expert_of_tile.tolist()):
        w = mxfp4_dequantize(b[e], b_sf[e]).double()
        out[t * tm:(t + 1) * tm] = (x[t * tm:(t + 1) * tm].double() @ w.T).float()
    return out


# GPT-OSS-sized end-to-end cases (the emulation and the native SM12x tests run the same ones).
H = INTER = 2880
_WEIGHTS: dict[int, tuple] = {}


def weights(num_e: int, act: str = "mxfp4", **layout: bool) -> tuple[dict, object]:
    key = (num_e, act, tuple(sorted(layout.items())))
    if key not in _WEIGHTS:
        _WEIGHTS.clear()  # one expert set on the GPU at a time
        raw = {k: v.cuda() for k, v in make_weights(num_e, H, INTER).items()}
        _WEIGHTS[key] = (raw, prepare_gpt_oss_weights(**raw, pad_to=128, act=act, **layout))
    return _WEIGHTS[key]


def rel_l2(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).norm() / ref.norm())


# bf16 GEMM outputs feed an MXFP4 re-quantization, which flips a few elements against the float64 reference:
# compare in norm (elementwise maxima are dominated by those flips).
TOL = 0.02


def run_fused_case(num_e: int, num_t: int, act: str = "mxfp4") -> None:
    raw, w = weights(num_e, act)
    hidden, logits = make_inputs(num_t, H, num_e)
    got = fused_moe(hidden.cuda(), logits.cuda(), w, top_k=4)
    ref = gpt_oss_moe_reference(hidden.cuda(), logits.cuda(), **raw, top_k=4, act_quant=act)
    assert got.isfinite().all() and rel_l2(got, ref) < TOL


def check_fused_epilogue_matches_unfused(num_e: int, num_t: int, act: str = "mxfp4") -> None:
    """fused_moe with GEMM1's activation epilogue is bit-identical to the unfused pipeline (GEMM1 writes bf16, the
    activation kernel re-quantizes) and within TOL of the float64 reference."""
    raw, w = weights(num_e, act)
    hidden, logits = make_inputs(num_t, H, num_e)
    hidden, logits = hidden.cuda(), logits.cuda()
    fused = fused_moe(hidden, logits, w, top_k=4, fused_epilogue=True)
    unfused = fused_moe(hidden, logits, w, top_k=4, fused_epilogue=False)
    assert torch.equal(fused, unfused)
    ref = gpt_oss_moe_reference(hidden, logits, **raw, top_k=4, act_quant=act)
    assert rel_l2(fused, ref) < TOL


def check_launches_per_forward(num_t: int, fused_epilogue: bool, act: str = "mxfp4") -> int:
    """One fused_moe forward (E = 32, top-4) runs exactly the launches its plan says: plan_scatter or plan + scatter
    (the line depends on the GPU's SM count), GEMM1 (+ the activation kernel when unfused), GEMM2, finalize. Returns
    the count."""
    from ..jit.arch import device_facts
    from ..kernels.grouped_mm_fp4 import gemm_format
    from ..moe.pipeline import row_plan
    from .profiling import device_launches

    _, w = weights(32, act)
    hidden, logits = make_inputs(num_t, H, 32)
    hidden, logits = hidden.cuda(), logits.cuda()
    fused_moe(hidden, logits, w, top_k=4, fused_epilogue=fused_epilogue)  # build, allocate the buffers
    launches = device_launches(lambda: fused_moe(hidden, logits, w, top_k=4, fused_epilogue=fused_epilogue))
    device = hidden.device
    facts = device_facts(device)
    plan = row_plan(num_t, 4, 32, gemm_format(act), None, facts.target, facts.sm_count)
    want = (1 if plan.fused_plan_scatter else 2) + (2 if fused_epilogue else 3) + 1
    assert len(launches) == want, (plan.fused_plan_scatter, launches)
    return want


def check_skewed_routing() -> None:
    """Every token's top-1 is expert 5; 28 of 32 experts get nothing."""
    raw, w = weights(32)
    hidden, _ = make_inputs(300, H, 32)
    ids = torch.tensor([[5, 0, 1, 2]], dtype=torch.int32).repeat(300, 1).cuda()
    topk = torch.full((300, 4), 0.25, device="cuda")
    got = fused_moe(hidden.cuda(), (ids, topk), w)
    ref = gpt_oss_moe_reference(hidden.cuda(), (ids, topk), **raw, act_quant="mxfp4")
    assert rel_l2(got, ref) < TOL


def check_cuda_graph_capture_and_replay() -> None:
    """fused_moe captured in a CUDA graph replays bit-identically and follows new inputs."""
    raw, w = weights(32)
    hidden, logits = make_inputs(3, H, 32)
    hidden, logits = hidden.cuda(), logits.cuda()
    eager = fused_moe(hidden, logits, w, top_k=4)  # builds and warms up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fused_moe(hidden, logits, w, top_k=4, validate_ids=False)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager, rtol=0, atol=0)
    hidden.mul_(-1)  # new inputs in place: the replay follows them
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, fused_moe(hidden, logits, w, top_k=4), rtol=0, atol=0)


def check_cutlass_fused_moe_compat(num_t: int) -> None:
    """cutlass_fused_moe in FlashInfer's calling convention (as vLLM uses it on SM100): W4A8, MXFP8 activations
    quantized by the caller, gate/up halves not interleaved, up first, per-expert swiglu constants."""
    raw, w = weights(32, "mxfp8", interleaved=False, up_first=True)
    hidden, logits = make_inputs(num_t, H, 32)
    hidden, logits = hidden.cuda(), logits.cuda()
    ids = torch.topk(logits, 4, dim=1).indices.to(torch.int32)
    scales = torch.softmax(logits.gather(1, ids.long()), dim=1)
    xq, xsf = mxfp8_quantize(torch.nn.functional.pad(hidden.float(), (0, w.hidden_size_padded - H)), True, 32)
    per_e = {n: torch.full((32,), v, device="cuda") for n, v in (("swiglu_alpha", 1.702), ("swiglu_beta", 1.0),
                                                                  ("swiglu_limit", 7.0))}
    got = cutlass_fused_moe(xq, ids, scales, w.w13, w.w2, torch.bfloat16, w.flashinfer_quant_scales(), w.w13_bias,
                            w.w2_bias, xsf, use_mxfp8_act_scaling=True, **per_e)
    ref = gpt_oss_moe_reference(hidden, (ids, scales), **raw, act_quant="mxfp8")
    assert got.isfinite().all() and rel_l2(got[:, :H], ref) < TOL
