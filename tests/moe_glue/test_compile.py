# SPDX-License-Identifier: Apache-2.0
"""Compile proofs of the MoE glue modules: every kernel spill-free (no local memory at all), and the kernels that
quantize (scatter, plan_scatter, activation) use the native conversion instruction where the target has one."""

from __future__ import annotations

import re

import pytest

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.jit.compile_proof import FACTS_KERNEL, compile_proof
from flashinfer_sm12x.kernels.moe_glue import MENU, moe_glue_spec, required_instruction
from flashinfer_sm12x.ops.moe_glue import PLAN_SCATTER_CTAS_PER_SM

pytestmark = pytest.mark.compile_proof
MAX_PLAN_INSTRUCTIONS = 2_500  # SASS instructions of plan_kernel (1,640 with logits on sm_120a)
MAX_PLAN_SCATTER_INSTRUCTIONS = 6_000  # plan_scatter_kernel: plan + scatter + padding scales (3,432 on sm_120a,
# 4,408 on sm_90a)


@pytest.mark.parametrize("arch", ["sm_120a", "sm_121a", "sm_90a"])
@pytest.mark.parametrize("act_format", MENU["act_format"])
def test_glue_module_is_spill_free_and_converts_natively(arch: str, act_format: str) -> None:
    target = parse_target(arch)
    report = compile_proof(moe_glue_spec(target, act_format))
    kernels = [k for k in report.kernels if FACTS_KERNEL not in k.name and k.instructions]
    names = " ".join(k.name for k in kernels)
    for role in ("plan_kernel", "scatter_kernel", "plan_scatter_kernel", "activation_kernel", "finalize_kernel"):
        assert role in names, f"{role} missing from the {act_format} module"
    for k in kernels:
        assert k.spill_stores == 0 and k.spill_loads == 0 and k.stack_bytes == 0, (k.name, k.spill_stores,
                                                                                   k.stack_bytes)
    # ops/moe_glue.py sizes plan_scatter's one wave as PLAN_SCATTER_CTAS_PER_SM CTAs of 512 threads per SM (64K
    # registers per SM on sm_90a and sm_12x): every variant must hold at least that many (a variant with fewer
    # registers holding more makes the line conservative for it, never wrong).
    for k in kernels:
        if "plan_scatter_kernel" in k.name:
            assert 65536 // (max(k.registers, 1) * 512) >= PLAN_SCATTER_CTAS_PER_SM, (k.name, k.registers)
    # The routing's top-k selection is one rolled loop over the k slots: unrolled over all 16 it made plan_kernel
    # ~10K and plan_scatter ~12.7K SASS instructions (160-200 KB of code, past the instruction cache), and the
    # plan ran at instruction-fetch speed. Bound the code of both.
    for k in kernels:
        size = sum(k.instructions.values())
        if "plan_scatter_kernel" in k.name:
            assert size <= MAX_PLAN_SCATTER_INSTRUCTIONS, (k.name, size)
        elif "plan_kernel" in k.name:
            assert size <= MAX_PLAN_INSTRUCTIONS, (k.name, size)
    instruction = required_instruction(act_format, target)
    if instruction:
        for k in kernels:
            if re.search(r"scatter_kernelILN\w*?9ActFormatE", k.name) and "Lb1E" in k.name:
                continue  # the pre-quantized copy (scatter_kernel or plan_scatter_kernel) converts nothing
            if "scatter_kernel" in k.name or "activation_kernel" in k.name:
                assert k.count(instruction) > 0, f"no {instruction} in {k.name}"
