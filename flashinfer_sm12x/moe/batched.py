# SPDX-License-Identifier: Apache-2.0
"""The experts of a MoE on rows already grouped per expert (the "batched" layout of vLLM's BatchedExperts format,
DeepEP low-latency's dispatch output): x [E, M, H] with expert_num_tokens [E]; row m of expert e is a token routed
to e when m < expert_num_tokens[e], padding otherwise.

No routing plan is needed: the layout already is the grouped GEMM's (expert-contiguous rows), once M is padded up to
the tile height TM. With Mp = round_up(M, TM), expert e owns rows [e * Mp, e * Mp + Mp) of the flattened operand,
its M tiles are e * Mp / TM ... (e + 1) * Mp / TM - 1, and the GEMMs' (padded_start, counts) tables are
(e * Mp, expert_num_tokens[e]): A's rows past each expert's count are never read (DeepEP leaves stale rows there).
Everything is built on the device: no host synchronisation (CUDA-graph capturable).

Two implementations, as for `fused_moe`: "kernels" (quantize, GEMM1 with the fused SwiGLU + quantize epilogue,
GEMM2 storing the routed rows, fc2 bias) and "reference" (device-side torch around the pipeline's `run_experts`,
the oracle). The router weights are not applied and nothing is summed: the caller combines (vLLM's finalize).
"""

from __future__ import annotations

import torch

from ..checks import check_index_range, check_tensor, round_up
from ..jit.arch import device_facts
from . import pipeline
from .weights import PreparedMoEWeights

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_FN = "batched_experts"
_ALPHA, _BETA, _LIMIT = 1.702, 1.0, 7.0  # GPT-OSS's swiglu_oai


def batched_experts(x: torch.Tensor, expert_num_tokens: torch.Tensor, weights: PreparedMoEWeights, *,
                    out_dtype: torch.dtype = torch.bfloat16, impl: str | None = None,
                    tactic: pipeline.TacticChoice = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """GPT-OSS experts (swiglu_oai, fc1/fc2 biases) on per-expert batched rows, unweighted.

    Parameters
    ----------
    x : torch.Tensor
        float32 / float16 / bfloat16 [E, M, H], contiguous: expert e's rows (E = weights.num_experts, H its hidden
        size, unpadded or padded).
    expert_num_tokens : torch.Tensor
        int32 or int64 [>= E] on x's device: the valid rows of each expert (its first E entries are read; vLLM's
        BatchedPrepareAndFinalize hands over one count per global expert). Counts are clamped into [0, M] on the
        device.
    weights : PreparedMoEWeights
        The E local experts (`prepare_gpt_oss_weights`).
    out_dtype : torch.dtype
        Keyword-only. The output's dtype (float32 / float16 / bfloat16).
    impl : {"kernels", "reference"}, optional
        Keyword-only. None: the kernels on CUDA, the reference elsewhere.
    tactic : Tactic or (Tactic, Tactic), optional
        Keyword-only. As for `fused_moe` (None: the heuristic's, for E * M rows).
    out : torch.Tensor, optional
        Keyword-only. Contiguous [E, M, H] of `out_dtype` to write into (allocated when None).

    Returns
    -------
    torch.Tensor
        [E, M, H] of `out_dtype`: row m of expert e is expert e's output (fc2 bias included, no router weight)
        for m < expert_num_tokens[e]; the other rows are not defined by the kernels (zeros from the reference).

    Raises
    ------
    TypeError, ValueError
        Bad input (shapes, dtypes, devices, sizes past the kernels' 32-bit indices), before any launch.
    """
    if not isinstance(weights, PreparedMoEWeights):
        raise TypeError(f"{_FN}: weights must come from prepare_gpt_oss_weights, got {type(weights).__name__}")
    num_e, h = weights.num_experts, weights.hidden_size
    check_tensor(x, "x", _FN, _FLOATS, ndim=3)
    if x.shape[0] != num_e or x.shape[2] not in (h, weights.hidden_size_padded):
        raise ValueError(f"{_FN}: x must be [{num_e}, M, {h}] (or hidden {weights.hidden_size_padded}), got "
                         f"{tuple(x.shape)}")
    check_tensor(expert_num_tokens, "expert_num_tokens", _FN, (torch.int32, torch.int64), ndim=1)
    if expert_num_tokens.shape[0] < num_e:
        raise ValueError(f"{_FN}: expert_num_tokens must hold at least one count per local expert ({num_e}), got "
                         f"{expert_num_tokens.shape[0]}")
    if not isinstance(out_dtype, torch.dtype) or out_dtype not in _FLOATS:
        raise TypeError(f"{_FN}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    if impl not in (None, "kernels", "reference"):
        raise ValueError(f"{_FN}: impl must be 'kernels' or 'reference', got {impl!r}")
    devices = {t.device for t in (x, expert_num_tokens, weights.w13)}
    if len(devices) != 1:
        raise ValueError(f"{_FN}: x, expert_num_tokens and weights must share a device, got "
                         f"{sorted(map(str, devices))}")
    if out is None:
        out = x.new_empty(x.shape, dtype=out_dtype)
    else:
        check_tensor(out, "out", _FN, out_dtype, shape=tuple(x.shape))
        if out.device != x.device:
            raise ValueError(f"{_FN}: out is on {out.device}, x on {x.device}")
    if impl is None:
        impl = "kernels" if x.is_cuda else "reference"
    if impl == "kernels" and not x.is_cuda:
        raise ValueError(f"{_FN}: impl='kernels' needs CUDA tensors, got {x.device}")
    if x.numel() == 0:  # no experts or no rows: nothing to launch
        return out
    e = pipeline.Experts.of(weights, True, _ALPHA, _BETA, _LIMIT)
    facts = device_facts(x.device) if impl == "kernels" else None
    t1, t2 = pipeline._checked_tactics(tactic, num_e * x.shape[1], num_e, e.gemm_format,
                                       facts.target if facts else None, facts.sm_count if facts else None,
                                       e.hidden_padded, e.inter_padded)
    if impl == "kernels" and not pipeline.fuses_activation(e, t1):
        raise ValueError(f"{_FN}: impl='kernels' runs the activation in GEMM1's epilogue: it needs interleaved "
                         f"gate/up weights and a GEMM1 tactic with tile_n % 64 == 0; got the {e.layout} layout, "
                         f"tactic {t1.name}")
    # The kernels' 32-bit line (as fused_moe's check_row_plan): padded rows and their 128x4 scale elements.
    rows = num_e * round_up(x.shape[1], t1.tile_m)
    check_index_range(_FN, padded_rows=rows, scale_elements=round_up(rows, 128) * round_up(
        max(e.hidden_padded, e.inter_padded) // 32, 4))
    return _forward(x, expert_num_tokens, e, t1, t2, impl, out)


def _forward(x: torch.Tensor, expert_num_tokens: torch.Tensor, e: pipeline.Experts, t1: pipeline.Tactic,
             t2: pipeline.Tactic, impl: str, out: torch.Tensor) -> torch.Tensor:
    """The layout and one implementation, on validated arguments: the padded rows, the tile and row tables (all
    built on the device), then the kernels' or the reference's GEMMs, written into `out`."""
    num_e, m, cols = x.shape
    mp = round_up(m, t1.tile_m)
    counts = expert_num_tokens[:num_e].clamp(0, m).to(torch.int32)
    # Expert e's rows start at e * Mp; its tiles are [e * Mp / TM, (e + 1) * Mp / TM).
    padded_start = torch.arange(num_e, dtype=torch.int32, device=x.device) * mp
    expert_of_tile = torch.div(torch.arange(num_e * mp // t1.tile_m, dtype=torch.int32, device=x.device),
                               mp // t1.tile_m, rounding_mode="floor")
    hp = e.hidden_padded
    rows = x
    if mp != m or cols != hp:  # pad M to the tile height and H to Hp (zeros: the quantizers' exact padding)
        rows = x.new_zeros((num_e, mp, hp))
        rows[:, :m, :cols] = x
    if impl == "kernels":
        y = _run_kernels(rows.view(num_e * mp, hp), e, t1, t2, expert_of_tile, (padded_start, counts))
        y = y.view(num_e, mp, hp)[:, :m, :cols]
        if e.w2_bias is None:
            out.copy_(y)
        else:  # fc2 bias added in float32, rounded once into out (as the reference and fused_moe's finalize)
            torch.add(y, e.w2_bias.float()[:, None, :cols], out=out)
        return out
    y = _run_reference(rows, e, t1, t2, expert_of_tile, counts)
    out.copy_(y.view(num_e, mp, hp)[:, :m, :cols])
    return out


def _run_kernels(rows: torch.Tensor, e: pipeline.Experts, t1: pipeline.Tactic, t2: pipeline.Tactic,
                 expert_of_tile: torch.Tensor, routed: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """[E * Mp, Hp] float rows -> [E * Mp, Hp] bf16: quantize, GEMM1 + SwiGLU + quantize, GEMM2 (the caller adds
    the fc2 bias). Neither GEMM reads A's rows past an expert's count (`routed`): stale rows never reach a valid
    row, whatever they hold."""
    from ..ops.grouped_mm_fp4 import grouped_mm_fp4, grouped_mm_fp4_swiglu_quantize

    fmt = e.gemm_format
    aq, asf = pipeline._quantize(rows.contiguous(), e.act)
    act, act_sf = grouped_mm_fp4_swiglu_quantize(aq, asf, e.w13, e.w13_sf, expert_of_tile, t1, bias=e.w13_bias,
                                                 activation="swiglu_oai", alpha=e.alpha, beta=e.beta, limit=e.limit,
                                                 fmt=fmt, expert_rows=routed)
    return grouped_mm_fp4(act, act_sf, e.w2, e.w2_sf, expert_of_tile, t2, fmt=fmt, expert_rows=routed)


def _run_reference(rows: torch.Tensor, e: pipeline.Experts, t1: pipeline.Tactic, t2: pipeline.Tactic,
                   expert_of_tile: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The oracle: rows past each expert's count zeroed (the kernels do not read them), the pipeline's reference
    `run_experts` over the same padded layout, rows past the counts zeroed again."""
    num_e, mp, hp = rows.shape
    valid = (torch.arange(mp, device=rows.device).unsqueeze(0) < counts.unsqueeze(1)).unsqueeze(2)  # [E, Mp, 1]
    x = torch.where(valid, rows.float(), torch.zeros((), device=rows.device)).view(num_e * mp, hp)
    aq, asf = pipeline._quantize(x, e.act)
    no_pairs = torch.empty(0, dtype=torch.int64, device=rows.device)  # the rows are the pairs: no permutation
    plan = pipeline.ExpertRows(t1, t2, num_e * mp, no_pairs, no_pairs, no_pairs, expert_of_tile,
                               expert_of_tile.long().repeat_interleave(t1.tile_m))
    y = pipeline.run_experts(aq, asf, plan, e).view(num_e, mp, hp)
    return torch.where(valid, y, torch.zeros((), device=rows.device)).view(num_e * mp, hp)

