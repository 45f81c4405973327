# SPDX-License-Identifier: Apache-2.0
"""GPT-OSS style mixture of experts: the fused MoE (fused_moe.py), routing, weight preparation and a float64
reference.

The reference (`reference.py`) shares no code with `routing.py` / `weights.py`, which the fused kernels use:
tests compare the two sides, so a bug on one side cannot hide in a helper both call.
"""

from __future__ import annotations

from .batched import batched_experts
from .fused_moe import fused_moe
from .reference import gpt_oss_moe_reference
from .routing import clamp_expert_ids, finalize, permute, route
from .weights import CheckpointMoEWeights, PreparedMoEWeights, prepare_gpt_oss_weights, unprepare_gpt_oss_weights

__all__ = [
    "CheckpointMoEWeights",
    "PreparedMoEWeights",
    "batched_experts",
    "clamp_expert_ids",
    "finalize",
    "fused_moe",
    "gpt_oss_moe_reference",
    "permute",
    "prepare_gpt_oss_weights",
    "route",
    "unprepare_gpt_oss_weights",
]
