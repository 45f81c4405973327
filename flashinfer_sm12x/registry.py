# SPDX-License-Identifier: Apache-2.0
"""What `prebuild` makes: every kernel family's modules for a target, and what a model deployment loads.

Two registries, both keyed by family (op) name, so a new family joins by adding its own entries:
- PREBUILD[op](target) -> every module of the family for `target` (`prebuild --ops`);
- DEPLOYMENT[op](target, deployment) -> only the modules a deployment of a model loads (`prebuild --model`).
Family functions import their op modules lazily (torch is imported only when a plan is made).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .jit.arch import Target
from .jit.module import ModuleSpec


@dataclass(frozen=True)
class ModelShape:
    """The MoE layer shape of a model: what decides which kernels it runs."""

    name: str
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int


MODELS: dict[str, ModelShape] = {
    "gpt-oss-120b": ModelShape("gpt-oss-120b", num_experts=128, top_k=4, hidden_size=2880, intermediate_size=2880),
    "gpt-oss-20b": ModelShape("gpt-oss-20b", num_experts=32, top_k=4, hidden_size=2880, intermediate_size=2880),
}
# fused_moe's `act` (the activation format its kernels quantize to) -> the grouped GEMM format it runs
GEMM_FORMAT_OF_ACT = {"mxfp8": "mxfp8_mxfp4", "mxfp4": "mxfp4"}
ACTIVATIONS = tuple(GEMM_FORMAT_OF_ACT)
DEFAULT_MAX_NUM_TOKENS = 8192


@dataclass(frozen=True)
class Deployment:
    """A model served with one activation format, for batches of 1..max_num_tokens tokens."""

    model: ModelShape
    act: str
    max_num_tokens: int = DEFAULT_MAX_NUM_TOKENS


def _mma_probe(target: Target) -> list[ModuleSpec]:
    from .ops.mma_probe import MENU, mma_probe_spec

    return [] if target.emulated else [mma_probe_spec(target, k) for k in MENU["k_tiles"]]


def _mm_fp4(target: Target) -> list[ModuleSpec]:
    import torch

    from .ops.mm_fp4 import EMULATED_FORMATS, MENU, mm_fp4_spec, shipped

    formats = EMULATED_FORMATS if target.emulated else MENU["format"]
    return [mm_fp4_spec(target, fmt, tactic, out) for fmt in formats for out in (torch.bfloat16, torch.float16)
            for tactic in shipped(fmt, target)]


def _grouped_mm_fp4(target: Target) -> list[ModuleSpec]:
    import torch

    from .ops.grouped_mm_fp4 import FORMATS, grouped_mm_fp4_spec, shipped

    # W4A8 has no emulated (SM90) build.
    formats = ("mxfp4",) if target.emulated else FORMATS
    return [grouped_mm_fp4_spec(target, tactic, out, fmt) for fmt in formats
            for out in (torch.bfloat16, torch.float16) for tactic in shipped(target, fmt)]


def _grouped_mm_fp4_for(target: Target, deployment: Deployment) -> list[ModuleSpec]:
    """The grouped GEMM modules fused_moe can load: the heuristic's pick for every batch size, as fused_moe calls
    it (rows = tokens * top_k over the model's experts), in fused_moe's output dtype (bfloat16). Both MoE GEMMs
    of a layer run the same tactic, and N/K are run-time arguments, so the GEMM shapes add no modules."""
    import torch

    from .ops.grouped_mm_fp4 import grouped_mm_fp4_spec, heuristic

    fmt = GEMM_FORMAT_OF_ACT[deployment.act]
    model = deployment.model
    tactics = []
    for tokens in range(1, deployment.max_num_tokens + 1):
        tactic = heuristic(tokens * model.top_k, model.num_experts, target, fmt)
        if tactic not in tactics:
            tactics.append(tactic)
    return [grouped_mm_fp4_spec(target, tactic, torch.bfloat16, fmt) for tactic in tactics]


PREBUILD: dict[str, Callable[[Target], list[ModuleSpec]]] = {
    "mma_probe": _mma_probe,
    "mm_fp4": _mm_fp4,
    "grouped_mm_fp4": _grouped_mm_fp4,
}

# A family whose kernels a model deployment loads adds (target, deployment) -> its modules here.
DEPLOYMENT: dict[str, Callable[[Target, Deployment], list[ModuleSpec]]] = {
    "grouped_mm_fp4": _grouped_mm_fp4_for,
}
