# SPDX-License-Identifier: Apache-2.0
"""The vLLM plugin's opt-in rules, without vLLM: register() must leave vLLM alone unless asked."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from flashinfer_sm12x.integrations import vllm_plugin as vp


def test_opt_in_rules(clean_env: pytest.MonkeyPatch) -> None:
    assert not vp.enabled()
    clean_env.setenv(vp.ENV_BACKEND, "flashinfer_cutlass")
    assert not vp.enabled()
    clean_env.setenv(vp.ENV_BACKEND, "SM12x")
    assert vp.enabled()
    clean_env.delenv(vp.ENV_BACKEND)
    clean_env.setenv(vp.ENV_ENABLE, "1")
    assert vp.enabled()
    assert vp.act_format() == "mxfp8"
    clean_env.setenv(vp.ENV_ACT, "fp16")
    with pytest.raises(ValueError, match="mxfp8"):
        vp.act_format()
    assert vp.supported_version("0.33.0") and vp.supported_version("0.33.2.dev5")
    assert not vp.supported_version("0.32.1") and not vp.supported_version("dev")


def test_register_without_opt_in_touches_nothing(clean_env: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise AssertionError("install() ran without the opt-in")

    clean_env.setattr(vp, "install", boom)
    clean_env.setattr(vp, "sm12x_gpu", lambda: True)
    vp.register()


def test_supported_versions_and_reload_rule(clean_env: pytest.MonkeyPatch) -> None:
    assert vp.supported_version("0.34.0") and vp.supported_version("0.34.1")
    assert not vp.supported_version("0.35.0")
    clean_env.delenv(vp.ENV_RELOAD, raising=False)
    assert vp.reload_conflict() is None
    clean_env.setenv(vp.ENV_RELOAD, "layerwise")
    assert vp.reload_conflict() is None
    clean_env.setenv(vp.ENV_RELOAD, "direct")
    assert "corrupt" in vp.reload_conflict()


def _map(slots: list[int]) -> torch.Tensor:
    return torch.tensor(slots, dtype=torch.int32)


def test_expert_slice_accepts_contiguous_maps_only() -> None:
    assert vp.expert_slice(None, 8, 8) is None
    assert vp.expert_slice(_map([-1, -1, 0, 1, 2, -1]), 3, 6, torch.device("cpu")) == vp.ExpertSlice(2, 3, 6)
    assert vp.expert_slice(_map([0, 1, -1]), 2, 3) == vp.ExpertSlice(0, 2, 3)
    bad = [
        (_map([0, -1, 1, -1]), 2, 4, "contiguous"),          # a gap
        (_map([1, 0, -1, -1]), 2, 4, "contiguous"),          # out of order
        (_map([0, -1, 1, -1]).long(), 2, 4, "int32"),        # dtype
        (_map([0, 1, -1]), 2, 4, "shape"),                   # size
        (_map([0, 1, -1, -1]), 3, 4, "hold 3"),              # count vs the weights
        (_map([-1, -1, -1, -1]), 1, 4, "0 experts"),         # nothing local
        ([0, 1], 2, 2, "tensor"),
    ]
    for emap, n, g, msg in bad:
        with pytest.raises(vp.ExpertMapError, match=msg):
            vp.expert_slice(emap, n, g)
    with pytest.raises(vp.ExpertMapError, match="meta"):
        vp.expert_slice(_map([0, 1]), 2, 2, torch.device("meta"))
    assert issubclass(vp.ExpertMapError, ValueError)


def _fake_moe(use_ep: bool = False, dp: int = 1, eplb: bool = False, backend: str = "auto") -> SimpleNamespace:
    pc = SimpleNamespace(use_ep=use_ep, enable_eplb=eplb, use_all2all_kernels=use_ep and dp > 1, tp_size=1,
                         ep_size=2 if use_ep else 1)
    return SimpleNamespace(moe_parallel_config=pc, moe_backend=backend, activation=SimpleNamespace(name="SWIGLUOAI"),
                           in_dtype=torch.bfloat16)


def test_which_layers_are_ours() -> None:
    assert vp.why_not_ours(_fake_moe()) is None
    assert vp.why_not_ours(_fake_moe(use_ep=True)) is None
    assert "EPLB" in vp.why_not_ours(_fake_moe(use_ep=True, eplb=True))
    assert "data parallelism" in vp.why_not_ours(_fake_moe(use_ep=True, dp=2))
    assert "placement" in vp.why_not_ours(_fake_moe(use_ep=True), "round_robin")
    assert vp.why_not_ours(_fake_moe(), "round_robin") is None  # placement matters under EP only
    assert "--moe-backend=triton" in vp.why_not_ours(_fake_moe(backend="triton"))


def test_log_once(caplog: pytest.LogCaptureFixture) -> None:
    vp._logged.discard("flashinfer_sm12x: test line")
    with caplog.at_level("INFO", logger=vp.logger.name):
        for _ in range(4):
            vp._log_once(20, "flashinfer_sm12x: test line")
    assert caplog.text.count("test line") == 1
