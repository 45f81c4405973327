# SPDX-License-Identifier: Apache-2.0
"""vLLM objects the plugin tests build the way vLLM builds them (imported by test modules that already skipped
without vLLM)."""

from __future__ import annotations

from typing import Any

import torch


def moe_config(num_experts: int, hidden: int, inter: int, top_k: int, num_local: int, *, dp: int = 1, ep: int = 1,
               ep_rank: int = 0, backend: str | None = None, in_dtype: torch.dtype = torch.bfloat16,
               max_num_tokens: int | None = None) -> Any:
    """vLLM's FusedMoEConfig of a GPT-OSS-shaped layer (swiglu_oai, biases, renormalised top-k) on the CPU; dp/ep > 1
    set the parallel config as vLLM's `FusedMoEParallelConfig.make` would; `max_num_tokens` when given (the batched
    formats size their buffers by it)."""
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.config import (
        FusedMoEConfig,
        FusedMoEParallelConfig,
        RoutingMethodType,
    )

    pc = FusedMoEParallelConfig.make_no_parallel()
    if ep > 1:
        pc.use_ep, pc.ep_size, pc.ep_rank = True, ep, ep_rank
    pc.dp_size = dp
    if backend is not None:
        pc.all2all_backend = backend
    extra = {} if max_num_tokens is None else {"max_num_tokens": max_num_tokens}
    return FusedMoEConfig(num_experts=num_experts, experts_per_token=top_k, hidden_dim=hidden,
                          intermediate_size=inter, num_local_experts=num_local, num_logical_experts=num_experts,
                          activation=MoEActivation.SWIGLUOAI, device="cpu",
                          routing_method=RoutingMethodType.Renormalize, moe_parallel_config=pc, in_dtype=in_dtype,
                          has_bias=True, **extra)
