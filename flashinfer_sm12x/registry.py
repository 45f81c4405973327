# SPDX-License-Identifier: Apache-2.0
"""What `prebuild` makes: every kernel family's modules for a target, and what a model deployment loads.

Two registries, both keyed by family (op) name, so a new family joins by adding its own entries:
- PREBUILD[op](target) -> every module of the family for `target` (`prebuild --ops`);
- DEPLOYMENT[op](target, deployment) -> only the modules a deployment of a model loads (`prebuild --model`).
The kernel families (flashinfer_sm12x.kernels) import no torch, so the command line lists them without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .jit.arch import Target
from .jit.module import ModuleSpec
from .kernels import FAMILIES
from .kernels.grouped_mm_fp4 import gemm_format


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
DEFAULT_MAX_NUM_TOKENS = 8192


@dataclass(frozen=True)
class Deployment:
    """A model served with one activation format, for batches of 1..max_num_tokens tokens."""

    model: ModelShape
    act: str
    max_num_tokens: int = DEFAULT_MAX_NUM_TOKENS


FAMILY_NAMES = tuple(FAMILIES)


# The SM counts whose tactic choices a deployment's prebuild covers, per target: the per-GEMM heuristic counts waves
# in the device's SMs, so each SM120 part may pick other tiles (RTX 5090: 170, RTX PRO 6000 Blackwell: 188);
# other targets plan for `kernels.family.assumed_sm_count`.
PLANNED_SM_COUNTS: dict[str, tuple[int, ...]] = {"sm_120a": (170, 188), "sm_120f": (170, 188), "sm_121a": (48,),
                                                 "sm_121f": (48,)}
PAD_TO = 128  # prepare_gpt_oss_weights pads H and I to multiples of 128: the GEMMs' N and K


def _grouped_mm_fp4_for(target: Target, deployment: Deployment) -> list[ModuleSpec]:
    """The grouped GEMM modules fused_moe can load: the heuristic's picks for every batch size, as fused_moe calls
    it (rows = tokens * top_k over the model's experts; GEMM1 and GEMM2 each at its own N and K, on each SM count of
    PLANNED_SM_COUNTS), in fused_moe's output dtype (bfloat16), with the MoE epilogues fused_moe runs: GEMM1 with
    the activation fused where the tactic serves it (GPT-OSS checkpoints are interleaved), GEMM2 writing the routed
    rows only. Every picked tactic gets each epilogue it serves (an explicit tactic pins both GEMMs); N and K are
    run-time arguments, so the shapes add no modules."""
    from .kernels.family import assumed_sm_count
    from .kernels.grouped_mm_fp4 import FAMILY, moe_tactics

    fmt = gemm_format(deployment.act)
    model = deployment.model
    hp, ip = (-(-size // PAD_TO) * PAD_TO for size in (model.hidden_size, model.intermediate_size))
    sm_counts = PLANNED_SM_COUNTS.get(target.name, (assumed_sm_count(target),))
    tactics = []
    for tokens in range(1, deployment.max_num_tokens + 1):
        for sms in sm_counts:
            for tactic in moe_tactics(tokens * model.top_k, model.num_experts, fmt, target, sms, hidden_padded=hp,
                                      inter_padded=ip):
                if tactic not in tactics:
                    tactics.append(tactic)
    return [FAMILY.spec(target, fmt, tactic, "bfloat16", epilogue) for tactic in tactics
            for epilogue in ("store", "swiglu_quantize", "store_routed") if FAMILY.serves(epilogue, fmt, tactic)]


PREBUILD: dict[str, Callable[[Target], list[ModuleSpec]]] = {name: family.prebuild for name, family in FAMILIES.items()}


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
