# SPDX-License-Identifier: Apache-2.0
"""The MoE's glue kernels as ops (the kernel family is kernels/moe_glue.py; the pipeline that runs them around the
grouped GEMMs is moe/pipeline.py): the loaded module, the layout of its int32 plan workspace, and where plan and
scatter run as one kernel. At decode sizes plan and scatter are one kernel (plan_scatter), beyond them two;
`fused_plan_scatter_serves` draws the line (by T, k, E and the GPU's SM count).
"""

from __future__ import annotations

from typing import Any

from ..jit.arch import Target, device_facts
from ..kernels.moe_glue import (
    FAMILY,
    FUSED_MAX_PAIRS,
    FUSED_MAX_TOKENS,
    MAX_EXPERTS,
    MAX_TOP_K,
    TOKENS_PER_CHUNK,
)

# GEMM1's gate/up row layouts, as the glue kernels' `layout` argument codes them.
LAYOUT_CODE = {"interleaved": 0, "gate_first": 1, "up_first": 2}
# plan_scatter runs T*k CTAs of 512 threads, each repeating the plan: O(T*E) logit reads (O(T*k) with precomputed
# ids) and one plan_kernel CTA's latency. It replaces a launch gap and plan_kernel's own latency, so it wins while the
# grid is one wave and the redundant work stays small. One wave is the SM count: at 65-128 registers per thread
# (84 on sm_120a; tests/moe_glue/test_compile.py checks the bound) an SM holds one such CTA. Measured on an H200, 132
# SMs (benchmarks/bench_moe_glue.py, E = 32, k = 4), before the top-k selection was rolled (an instruction-cache-bound
# plan): plan_scatter 24.8 us vs plan + scatter 27.3 us at T = 32 (128 CTAs, one wave), 53.9 vs 34.1 us at T = 64
# (256 CTAs, two waves); the line is to be re-drawn on the rolled kernels' numbers. Hence: T*k <= the SM count (a DGX
# Spark's 48 SMs: T <= 12 at k = 4), T <= 32 (the largest T measured to win: the redundant routing grows with T) and
# T*E <= 8192 logits (32 KiB of float32 per CTA, from L2).
DECODE_MAX_TOKENS = 32
DECODE_MAX_LOGITS = 8192
DECODE_PAIRS_WITHOUT_DEVICE = 128  # one wave where no device is given (plans for tests and models): the H200's line
PLAN_SCATTER_CTAS_PER_SM = 1


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
        The GPU's SM count (`jit.arch.device_facts`): plan_scatter's T*k CTAs must fit in one wave. None: 128
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


def glue_module(where: Target | Any, act: str) -> Any:
    """The loaded glue module of activation format `act` ("mxfp4" or "mxfp8") for a target, or for a CUDA device's
    target (built on first use, cached by the kernel family)."""
    return FAMILY.load(where if isinstance(where, Target) else device_facts(where).target, act)
