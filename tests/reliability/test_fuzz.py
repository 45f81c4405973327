# SPDX-License-Identifier: Apache-2.0
"""Malformed-call fuzzing (flashinfer_sm12x/testing/fuzz.py): every case gives its typed error before any launch, or
passes every check when it is legal, and never changes an input tensor.

CPU: kernel launches are replaced by a stub that raises LaunchReached (the MoE's grouped GEMM, the module loaders), so
a malformed call that reached a launch fails its case. GPU (marks cuda + emulation, FLASHINFER_SM12X_EMULATE=1 on an
SM90 GPU): every case on CUDA tensors, legal ones run for real and the device is synchronised after each call (a
launch error would surface there)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from flashinfer_sm12x.moe import pipeline
from flashinfer_sm12x.ops import grouped_mm_fp4 as grouped_op
from flashinfer_sm12x.ops import mm_fp4 as mm_op
from flashinfer_sm12x.testing import fuzz

CASES = fuzz.cases()
CPU_CASES = [c for c in CASES if c.where == "any"]


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    def reached(*args: object, **kwargs: object) -> None:
        raise fuzz.LaunchReached

    monkeypatch.setattr(pipeline, "grouped_mm_fp4", reached)
    for op in (mm_op, grouped_op):  # a module load is the step before a launch
        monkeypatch.setattr(op, "FAMILY", _NoLoad(op.FAMILY, reached))


class _NoLoad:
    """A kernel family whose `load` raises LaunchReached; everything else is the real family's."""

    def __init__(self, family: object, reached: object) -> None:
        self._family, self.load = family, reached

    def __getattr__(self, name: str) -> object:
        return getattr(self._family, name)


def test_at_least_40_cases_per_op() -> None:
    table = fuzz.counts()
    assert set(table) == set(fuzz.OPS)
    short = {op: row["cases"] for op, row in table.items() if row["cases"] < 40}
    assert not short, short
    assert all(row["malformed"] >= 30 and row["legal"] >= 3 for row in table.values()), table
    assert len({c.id for c in CASES}) == len(CASES), "case names must be unique per op"


@pytest.mark.parametrize("case", CPU_CASES, ids=[c.id for c in CPU_CASES])
def test_fuzz_case_cpu(no_launch: None, case: fuzz.Case) -> None:
    args, kwargs = case.build("cpu")
    legal = case.expect == fuzz.LEGAL
    taken = fuzz.snapshot(args, kwargs, fuzz.OUTPUT_NAMES if legal else ())
    f = fuzz.function(case.op)
    if not legal:
        with pytest.raises(case.expect, match=case.match or None):  # type: ignore[arg-type]
            f(*args, **kwargs)
    elif case.op in fuzz.NEEDS_CUDA:  # every other check passed: the device check is the last one
        with pytest.raises(ValueError, match=fuzz.NEEDS_CUDA[case.op]):
            f(*args, **kwargs)
    else:
        with contextlib.suppress(fuzz.LaunchReached):
            f(*args, **kwargs)
    assert not fuzz.changed(taken), f"inputs changed: {fuzz.changed(taken)}"


@pytest.mark.cuda
@pytest.mark.emulation
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fuzz_case_gpu(emulate: None, case: fuzz.Case) -> None:
    args, kwargs = case.build("cuda")
    legal = case.expect == fuzz.LEGAL
    taken = fuzz.snapshot(args, kwargs, fuzz.OUTPUT_NAMES if legal else ())
    torch.cuda.synchronize()
    f = fuzz.function(case.op)
    if legal:
        f(*args, **kwargs)
    else:
        with pytest.raises(case.expect, match=case.match or None):  # type: ignore[arg-type]
            f(*args, **kwargs)
    torch.cuda.synchronize()  # an asynchronous launch error would surface here
    assert not fuzz.changed(taken), f"inputs changed: {fuzz.changed(taken)}"


def test_fuzz_calls_the_exported_functions() -> None:
    import flashinfer_sm12x

    assert all(fuzz.function(op) is getattr(flashinfer_sm12x, op) for op in fuzz.OPS)
