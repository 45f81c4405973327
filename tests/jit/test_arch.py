# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import pytest

from flashinfer_sm12x.errors import ArchError, ToolchainError
from flashinfer_sm12x.jit.arch import Target, check_nvcc_supports, parse_target, target_for_capability


@pytest.mark.parametrize(
    ("text", "name"),
    [("sm_120a", "sm_120a"), ("120a", "sm_120a"), ("12.0a", "sm_120a"), ("sm_121a", "sm_121a"),
     ("12.1a", "sm_121a"), ("sm_120f", "sm_120f"), ("121f", "sm_121f"), ("sm_90a", "sm_90a")],
)
def test_parse_target(text: str, name: str) -> None:
    assert parse_target(text).name == name


@pytest.mark.parametrize("text", ["sm_120", "12.0", "120", "sm_121"])
def test_suffixless_target_is_corrected_with_a_message(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    target = parse_target(text)
    assert target.suffix == "a" and target.name.startswith("sm_12")
    err = capsys.readouterr().err
    assert "suffix" in err and target.name in err


def test_suffixless_target_rejected_when_strict() -> None:
    with pytest.raises(ArchError, match="'a'/'f' suffix"):
        parse_target("sm_120", correct_suffix=False)


@pytest.mark.parametrize("text", ["sm_100a", "sm_89", "sm_120a; rm -rf /", "banana", ""])
def test_unsupported_targets(text: str) -> None:
    with pytest.raises(ArchError):
        parse_target(text)


def test_runs_on_never_loads_sm120_code_on_sm121() -> None:
    assert parse_target("sm_120a").runs_on((12, 0))
    assert not parse_target("sm_120a").runs_on((12, 1))
    assert parse_target("sm_121a").runs_on((12, 1)) and not parse_target("sm_121a").runs_on((12, 0))
    assert parse_target("sm_120f").runs_on((12, 0)) and parse_target("sm_120f").runs_on((12, 1))
    assert not parse_target("sm_121f").runs_on((12, 0))


def test_gencode() -> None:
    assert parse_target("sm_121a").gencode == "-gencode=arch=compute_121a,code=sm_121a"
    assert parse_target("sm_120f").gencode == "-gencode=arch=compute_120f,code=sm_120f"


def test_device_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FLASHINFER_SM12X_ARCH", "FLASHINFER_CUDA_ARCH_LIST", "FLASHINFER_SM12X_EMULATE"):
        monkeypatch.delenv(var, raising=False)
    assert target_for_capability((12, 0)).name == "sm_120a"
    assert target_for_capability((12, 1)).name == "sm_121a"
    with pytest.raises(ArchError, match="emulat"):
        target_for_capability((9, 0))
    with pytest.raises(ArchError):
        target_for_capability((10, 0))
    monkeypatch.setenv("FLASHINFER_SM12X_EMULATE", "1")
    assert target_for_capability((9, 0)).name == "sm_90a"


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLASHINFER_SM12X_ARCH", raising=False)
    monkeypatch.setenv("FLASHINFER_CUDA_ARCH_LIST", "9.0a 10.0a 12.0f")
    assert target_for_capability((12, 1)).name == "sm_120f"
    monkeypatch.setenv("FLASHINFER_SM12X_ARCH", "sm_120a")  # ours wins over FlashInfer's list
    assert target_for_capability((12, 0)).name == "sm_120a"
    with pytest.raises(ArchError, match="never loaded"):
        target_for_capability((12, 1))  # SM120-only code on a DGX Spark


def test_nvcc_version_gates() -> None:
    check_nvcc_supports(Target(12, 0, "a"), (12, 8))
    with pytest.raises(ToolchainError, match="12.9"):
        check_nvcc_supports(Target(12, 1, "a"), (12, 8))
    with pytest.raises(ToolchainError, match="12.9"):
        check_nvcc_supports(Target(12, 0, "f"), (12, 8))
    with pytest.raises(ToolchainError, match=r"12\.8"):
        check_nvcc_supports(Target(12, 0, "a"), (12, 6))
