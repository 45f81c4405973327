# SPDX-License-Identifier: Apache-2.0
"""Compile proofs of the quantizer modules: the native conversions in SASS, no spills, every input dtype."""

from __future__ import annotations

import pytest

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.jit.compile_proof import compile_proof
from flashinfer_sm12x.kernels.quantize import quantize_spec, required_instruction

pytestmark = pytest.mark.compile_proof

CASES = [("sm_120a", "mxfp4"), ("sm_121a", "nvfp4"), ("sm_121a", "mxfp8")]


@pytest.mark.parametrize(("arch", "fmt"), CASES, ids=[f"{a}-{f}" for a, f in CASES])
def test_module_uses_native_conversion_without_spills(arch: str, fmt: str) -> None:
    target = parse_target(arch)
    report = compile_proof(quantize_spec(target, fmt))
    kernels = [k for k in report.kernels if "quantize_kernel" in k.name]
    assert len(kernels) == 3  # bf16, fp16 and fp32 inputs
    instruction = required_instruction(fmt, target)
    for kernel in kernels:
        assert kernel.count(instruction) >= 4, f"{kernel.name}: no {instruction}"
        assert kernel.spill_stores == 0 and kernel.spill_loads == 0 and kernel.stack_bytes == 0
        assert kernel.count("STL") == 0 and kernel.count("LDL") == 0
    report.require(instruction=instruction, no_spills=True, kernel="quantize_kernel")


def test_software_build_has_no_native_e2m1() -> None:
    report = compile_proof(quantize_spec(parse_target("sm_120a"), "mxfp4", software_cvt=True))
    kernels = [k for k in report.kernels if "quantize_kernel" in k.name]
    assert kernels and all(k.count("F2FP.SATFINITE.E2M1") == 0 for k in kernels)
    assert all(k.spill_stores == 0 and k.spill_loads == 0 for k in kernels)
