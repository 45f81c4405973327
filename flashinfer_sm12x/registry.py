# SPDX-License-Identifier: Apache-2.0
"""What `prebuild` makes: every kernel family's modules for a target, and what a model deployment loads.

Two registries, both keyed by family (op) name, so a new family joins by adding its own entries:
- PREBUILD[op](target) -> every module of the family for `target` (`prebuild --ops`);
- DEPLOYMENT[op](target, deployment) -> only the modules a deployment of a model loads (`prebuild --model`).
The kernel families (flashinfer_sm12x.kernels) are imported only when a plan is made: the command line lists the
names without importing torch (tests check FAMILY_NAMES against kernels.FAMILIES).
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


# The families of flashinfer_sm12x.kernels.FAMILIES, by name, without importing them.
FAMILY_NAMES = ("mma_probe", "mm_fp4", "grouped_mm_fp4", "quantize", "moe_glue")


def _family_prebuild(name: str) -> Callable[[Target], list[ModuleSpec]]:
    def plan(target: Target) -> list[ModuleSpec]:
        from .kernels import FAMILIES

        return FAMILIES[name].prebuild(target)

    plan.__name__ = f"prebuild_{name}"
    return plan


def _grouped_mm_fp4_for(target: Target, deployment: Deployment) -> list[ModuleSpec]:
    """The grouped GEMM modules fused_moe can load: the heuristic's pick for every batch size, as fused_moe calls
    it (rows = tokens * top_k over the model's experts), in fused_moe's output dtype (bfloat16), with the MoE
    epilogues fused_moe runs: GEMM1 with the activation fused where the tactic serves it (GPT-OSS checkpoints are
    interleaved), GEMM2 writing the routed rows only.
    Both MoE GEMMs of a layer run the same tactic, and N/K are run-time arguments, so the shapes add no modules."""
    import torch

    from .kernels.grouped_mm_fp4 import FAMILY, heuristic

    fmt = GEMM_FORMAT_OF_ACT[deployment.act]
    model = deployment.model
    tactics = []
    for tokens in range(1, deployment.max_num_tokens + 1):
        tactic = heuristic(tokens * model.top_k, model.num_experts, fmt, target)[0]
        if tactic not in tactics:
            tactics.append(tactic)
    return [FAMILY.spec(target, fmt, tactic, torch.bfloat16, epilogue) for tactic in tactics
            for epilogue in ("store", "swiglu_quantize", "store_routed") if FAMILY.serves(epilogue, fmt, tactic)]


PREBUILD: dict[str, Callable[[Target], list[ModuleSpec]]] = {name: _family_prebuild(name) for name in FAMILY_NAMES}

def _quantize_for(target: Target, deployment: Deployment) -> list[ModuleSpec]:
    """fused_moe quantizes its activations (both GEMM inputs) to the deployment's activation format."""
    from .kernels.quantize import quantize_spec

    return [quantize_spec(target, deployment.act)]


def _moe_glue_for(target: Target, deployment: Deployment) -> list[ModuleSpec]:
    """fused_moe's glue kernels (plan, scatter, activation, finalize) for the deployment's activation format."""
    from .kernels.moe_glue import moe_glue_spec

    return [moe_glue_spec(target, deployment.act)]


# A family whose kernels a model deployment loads adds (target, deployment) -> its modules here.
DEPLOYMENT: dict[str, Callable[[Target, Deployment], list[ModuleSpec]]] = {
    "grouped_mm_fp4": _grouped_mm_fp4_for,
    "quantize": _quantize_for,
    "moe_glue": _moe_glue_for,
}
