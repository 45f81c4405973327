"""backend="auto": our runner and FlashInfer's SM12x FP4 runners in one AutoTuner.choose_one (CPU: fakes for
what needs a GPU, the real FlashInfer for names and the tuner)."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

flashinfer_autotuner = pytest.importorskip("flashinfer.autotuner")

from flashinfer_sm12x.integrations import flashinfer_fp4_gemm as integ  # noqa: E402


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
        assert args[9] in integ._FLASHINFER_FP4_BACKENDS  # the backend argument names the checked backend
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
        _cudnn_gemm_fp4_runner=lambda cfg: made.setdefault("cudnn", FakeRunner("cudnn", calls)),
        _b12x_gemm_fp4_runner=lambda *a: made.setdefault("b12x", FakeRunner("b12x", calls)),
        get_cutlass_fp4_gemm_module=lambda *a: None,
        _MM_FP4_TUNING_CONFIG_128x4=flashinfer_autotuner.TuningConfig(),
        _get_cache_buf=lambda name, size, device: torch.empty(16, dtype=torch.uint8),
        DEFAULT_WORKSPACE_SIZE=16,
    )
    monkeypatch.setattr(integ, "_gemm_base", lambda: gb)
    monkeypatch.setattr(integ, "_CACHE", {})
    return {"made": made, "calls": calls}


def test_candidates_keep_ours_first_and_say_why_others_are_left_out(fake_gemm_base: dict) -> None:
    ours = FakeRunner("ours", fake_gemm_base["calls"])
    found = integ.candidates(_args(), (12, 0), ours)
    assert found.names == ["cutlass_sm12x", "cudnn"] and found.runners[0] is ours
    assert "rejects this shape" in found.skipped["b12x"]
    assert "12.0" in found.skipped["cutlass"]
    assert integ.candidates(_args(), (12, 0), ours) is found  # cached per problem class


def test_untuned_choice_is_ours_with_the_fallback_tactic(fake_gemm_base: dict) -> None:
    ours = FakeRunner("ours", fake_gemm_base["calls"])
    args = _args()
    name, tactic = integ.choose_and_run(args, (12, 0), ours)
    assert (name, tactic) == ("cutlass_sm12x", -1)
    assert fake_gemm_base["calls"] == [("ours", -1)]
    assert bool((args[6] == 1).all())  # the chosen runner wrote the caller's out


def test_real_flashinfer_has_the_names_we_use() -> None:
    """The 0.7.x private names this integration relies on; a FlashInfer upgrade that renames them fails here."""
    from flashinfer.gemm import gemm_base

    for check in integ._FLASHINFER_FP4_BACKENDS.values():
        assert hasattr(getattr(gemm_base, check), "is_compute_capability_supported"), check
    for name in ("_cudnn_gemm_fp4_runner", "_b12x_gemm_fp4_runner", "get_cutlass_fp4_gemm_module",
                 "_MM_FP4_TUNING_CONFIG_128x4", "_get_cache_buf", "DEFAULT_WORKSPACE_SIZE"):
        assert hasattr(gemm_base, name), name


def test_our_runner_is_what_auto_puts_first() -> None:
    from flashinfer_sm12x.ops.mm_fp4 import MmFp4Runner

    assert isinstance(MmFp4Runner(), flashinfer_autotuner.TunableRunner)
    assert MmFp4Runner(enable_pdl=False).enable_pdl is False
