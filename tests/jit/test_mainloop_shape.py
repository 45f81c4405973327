# SPDX-License-Identifier: Apache-2.0
"""The mainloop-shape reader of the compile proofs on hand-written SASS (no nvcc): which loop is the mainloop, how
many MMAs sit between a barrier try-wait and the branch that checks it, the longest MMA-free run."""

from __future__ import annotations

from collections import Counter

import pytest

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.jit.compile_proof import CompileReport, KernelReport, parse_sass


def _kernel(body: list[str]) -> KernelReport:
    lines = ["        Function : k"]
    for i, text in enumerate(body):
        lines.append(f"        /*{i * 16:04x}*/                   {text} ;")
    code = parse_sass("\n".join(lines))["k"]
    return KernelReport("k", code=code, instructions=Counter(op for _, op, _ in code))


def _loop(between: int, mma_free: int) -> list[str]:
    """A prologue, then a loop: `mma_free` plain instructions, a try-wait, `between` MMAs, the branch on the wait's
    predicate, two MMAs and the backward branch; then EXIT."""
    body = ["MOV R1, c[0x0][0x28]"]
    start = len(body)
    body += ["IADD3 R2, R2, 0x1, RZ"] * mma_free
    body.append("SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R4+URZ], R5")
    body += ["OMMA.SF.16864.F32.E2M1.E2M1.E8 R8, R12, R16, R8, R20, URZ"] * between
    body.append(f"@!P0 BRA 0x{(start + 40) * 16:x}")
    body += ["OMMA.SF.16864.F32.E2M1.E2M1.E8 R8, R12, R16, R8, R20, URZ"] * 2
    body.append(f"BRA 0x{start * 16:x}")
    body.append("EXIT")
    return body


@pytest.mark.parametrize(("between", "mma_free"), [(0, 24), (6, 9), (3, 13)])
def test_shape_counts_mmas_under_the_wait_and_the_longest_gap(between: int, mma_free: int) -> None:
    kernel = _kernel(_loop(between, mma_free))
    assert len(kernel.mainloops("OMMA")) == 1
    shape = kernel.mainloop_shape("OMMA")
    assert shape.waits == [between] and shape.mmas_under_wait == between
    # The gap: the plain instructions and the try-wait, plus the check's branch when no MMA sits between them.
    assert shape.longest_mma_free == mma_free + 1 + (1 if between == 0 else 0)


def test_require_fails_on_an_exposed_wait() -> None:
    report = CompileReport("m", parse_target("sm_120a"), 0.0, [_kernel(_loop(0, 24))], "")
    with pytest.raises(AssertionError, match="hide \\[0\\] MMAs"):
        report.require(instruction="OMMA", min_mmas_under_wait=6)
    with pytest.raises(AssertionError, match="MMA-free run of 26"):
        report.require(instruction="OMMA", max_mma_free=13)
    good = CompileReport("m", parse_target("sm_120a"), 0.0, [_kernel(_loop(6, 9))], "")
    good.require(instruction="OMMA", min_mmas_under_wait=6, max_mma_free=13)


def test_a_loop_without_try_wait_is_not_a_passing_wait() -> None:
    body = ["MOV R1, c[0x0][0x28]", "OMMA.SF R8, R12, R16, R8, R20, URZ", "BRA 0x10", "EXIT"]
    report = CompileReport("m", parse_target("sm_120a"), 0.0, [_kernel(body)], "")
    with pytest.raises(AssertionError, match="hide \\[\\] MMAs"):
        report.require(instruction="OMMA", min_mmas_under_wait=1)
