# SPDX-License-Identifier: Apache-2.0
"""mm_fp4's FlashInfer face on the CPU: delegation to the real installed flashinfer.mm_fp4 (intercepted and bound
to its real signature), backend names, and backend="auto"'s candidate runners (fakes for what needs a GPU, the real
FlashInfer for the tuner)."""

from __future__ import annotations

import inspect
import types
from typing import Any

import pytest
import torch

flashinfer = pytest.importorskip("flashinfer")
flashinfer_autotuner = pytest.importorskip("flashinfer.autotuner")

import flashinfer_sm12x as fs  # noqa: E402
from flashinfer_sm12x.formats import mxfp4_quantize  # noqa: E402
from flashinfer_sm12x.integrations import flashinfer_compat as compat  # noqa: E402
from flashinfer_sm12x.integrations import flashinfer_mm_fp4 as integ  # noqa: E402

REAL_MM_FP4 = flashinfer.mm_fp4


@pytest.fixture
def intercepted(monkeypatch: pytest.MonkeyPatch) -> list[inspect.BoundArguments]:
    """flashinfer.mm_fp4 replaced by a recorder that binds each call to the real function's signature (plus the
    `skip_check` keyword FlashInfer's decorator adds), as the real call would."""
    calls: list[inspect.BoundArguments] = []
    signature = inspect.signature(REAL_MM_FP4)

    def record(*args: Any, **kwargs: Any) -> torch.Tensor:
        kwargs.pop("skip_check", None)
        bound = signature.bind(*args, **kwargs)  # TypeError here = a call the real mm_fp4 would refuse
        bound.apply_defaults()
        calls.append(bound)
        return torch.zeros(1)

    monkeypatch.setattr(flashinfer, "mm_fp4", record)
    return calls


def _mxfp4_operands() -> tuple[torch.Tensor, ...]:
    a, a_sf = mxfp4_quantize(torch.randn(4, 128))
    b, b_sf = mxfp4_quantize(torch.randn(16, 128))
    return a, b.T, a_sf, b_sf.T


@pytest.mark.parametrize("backend", compat.mm_fp4_backend_names())
def test_every_flashinfer_backend_is_delegated_by_keyword(intercepted: list, backend: str) -> None:
    a, b, a_sf, b_sf = _mxfp4_operands()
    fs.mm_fp4(a, b, a_sf, b_sf, block_size=32, use_nvfp4=False, backend=backend)
    (call,) = intercepted
    args = call.arguments
    assert args["backend"] == backend and args["use_nvfp4"] is False and args["block_size"] == 32
    assert args["a"] is a and args["b"] is b and args["a_descale"] is a_sf and args["b_descale"] is b_sf
    assert args["enable_pdl"] is True and args["out_dtype"] == torch.bfloat16 and args["alpha"] is None


def test_delegation_passes_every_argument(intercepted: list) -> None:
    a, b, a_sf, b_sf = _mxfp4_operands()
    alpha, out = torch.ones(1), torch.empty(4, 16, dtype=torch.float16)
    fs.mm_fp4(a, b, a_sf, b_sf, alpha, torch.float16, out, 32, False, "cudnn", False, False, skip_check=True)
    args = intercepted[0].arguments
    assert args["alpha"] is alpha and args["out"] is out and args["out_dtype"] == torch.float16
    assert args["enable_pdl"] is False and args["backend"] == "cudnn"


def test_cake_is_a_backend_when_flashinfer_has_it() -> None:
    names = compat.mm_fp4_backend_names()
    assert "auto" not in names and "cudnn" in names
    if compat.installed_version() == "0.7.4":
        assert "cake" in names


def test_batch_invariant_is_passed_when_flashinfer_has_it(intercepted: list) -> None:
    a, b, a_sf, b_sf = _mxfp4_operands()
    if "batch_invariant" in compat.mm_fp4_parameters():
        fs.mm_fp4(a, b, a_sf, b_sf, block_size=32, use_nvfp4=False, backend="cudnn", batch_invariant=True)
        assert intercepted[0].arguments["batch_invariant"] is True
    else:
        with pytest.raises(TypeError, match="batch_invariant"):
            fs.mm_fp4(a, b, a_sf, b_sf, block_size=32, use_nvfp4=False, backend="cudnn", batch_invariant=True)
        assert not intercepted


def test_unknown_backend_names_the_known_ones() -> None:
    a, b, a_sf, b_sf = _mxfp4_operands()
    with pytest.raises(ValueError, match="unknown backend 'marlin'.*'cutlass_sm12x'.*'cudnn'"):
        fs.mm_fp4(a, b, a_sf, b_sf, block_size=32, use_nvfp4=False, backend="marlin")


def test_signature_extends_flashinfers() -> None:
    """Every parameter of the installed flashinfer.mm_fp4 in order, kind and default; `skip_check` (which
    FlashInfer's decorator accepts) and `batch_invariant` (0.7.4) are keyword-only extras."""
    ours = inspect.signature(fs.mm_fp4).parameters
    theirs = inspect.signature(REAL_MM_FP4).parameters
    assert [n for n in ours if n in theirs] == list(theirs)
    assert set(ours) - set(theirs) <= {"skip_check", "batch_invariant"}
    for name, p in theirs.items():
        assert ours[name].kind == p.kind and ours[name].default == p.default, name


# ---- backend="auto": the candidate runners ------------------------------------------------------------------------
class FakeRunner(flashinfer_autotuner.TunableRunner):
    def __init__(self, name: str, calls: list) -> None:
        self.name, self.calls = name, calls

    def get_valid_tactics(self, inputs: list[Any], profile: Any = None) -> list[int]:
        return [0, 1]

    def forward(self, inputs: list[Any], tactic: int = -1, do_preparation: bool = False, **kwargs: Any) -> Any:
        self.calls.append((self.name, tactic))
        inputs[6].fill_(len(self.calls))
        return inputs[6]


def _requirement(result: bool | Exception, cc_ok: bool = True) -> Any:
    def check(*args: Any) -> bool:
        if isinstance(result, Exception):
            raise result
        assert args[9] in compat.FP4_REQUIREMENTS  # the backend argument names the checked backend
        return result

    check.is_compute_capability_supported = lambda cc: cc_ok  # type: ignore[attr-defined]
    return check


def _args(use_nvfp4: bool = False) -> tuple:
    a = torch.zeros(3, 64, dtype=torch.uint8)
    b = torch.zeros(40, 64, dtype=torch.uint8).T
    out = torch.empty(3, 40, dtype=torch.bfloat16)
    return (a, b, torch.zeros(128, 4, dtype=torch.uint8), torch.zeros(4, 128, dtype=torch.uint8), None,
            torch.bfloat16, out, 32, False, "auto", use_nvfp4)


@pytest.fixture
def fake_gemm_base(monkeypatch: pytest.MonkeyPatch) -> dict:
    made: dict[str, Any] = {}
    calls: list = []
    gb = types.SimpleNamespace(
        _cudnn_gemm_fp4_requirement=_requirement(True),
        _b12x_gemm_fp4_requirement=_requirement(ValueError("b12x rejects this shape")),
        _cutlass_gemm_fp4_requirement=_requirement(True, cc_ok=False),
        _cute_dsl_gemm_fp4_requirement=_requirement(False),
        _cudnn_gemm_fp4_runner=lambda cfg: made.setdefault("cudnn", FakeRunner("cudnn", calls)),
        _b12x_gemm_fp4_runner=lambda *a: made.setdefault("b12x", FakeRunner("b12x", calls)),
        _cute_dsl_gemm_fp4_runner=lambda *a: made.setdefault("cute-dsl", FakeRunner("cute-dsl", calls)),
        get_cutlass_fp4_gemm_module=lambda *a: None,
        _MM_FP4_TUNING_CONFIG_128x4=flashinfer_autotuner.TuningConfig(),
        DEFAULT_WORKSPACE_SIZE=16,
    )
    monkeypatch.setattr(compat, "gemm_base", lambda: gb)
    monkeypatch.setattr(integ, "_CANDIDATES", {})
    return {"made": made, "calls": calls}


def test_candidates_keep_ours_first_and_say_why_others_are_left_out(fake_gemm_base: dict) -> None:
    ours = FakeRunner("ours", fake_gemm_base["calls"])
    found = integ.candidates(_args(), (12, 0), ours)
    assert found.names == ["cutlass_sm12x", "cudnn"] and found.runners[0] is ours
    assert "rejects this shape" in found.skipped["b12x"]
    assert "12.0" in found.skipped["cutlass"]
    assert "declined" in found.skipped["cute-dsl"]
    assert integ.candidates(_args(), (12, 0), ours) is found  # cached per problem class


def test_untuned_choice_is_ours_with_the_fallback_tactic(fake_gemm_base: dict) -> None:
    ours = FakeRunner("ours", fake_gemm_base["calls"])
    args = _args()
    name, tactic = integ.choose_and_run(args, (12, 0), ours)
    assert (name, tactic) == ("cutlass_sm12x", -1)
    assert fake_gemm_base["calls"] == [("ours", -1)]
    assert bool((args[6] == 1).all())  # the chosen runner wrote the caller's out


def test_our_runner_is_what_auto_puts_first() -> None:
    assert isinstance(integ.MmFp4Runner(), flashinfer_autotuner.TunableRunner)
    assert integ.MmFp4Runner(enable_pdl=False).enable_pdl is False
