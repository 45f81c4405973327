# SPDX-License-Identifier: Apache-2.0
"""The vLLM plugin's opt-in rules, without vLLM: register() must leave vLLM alone unless asked."""

from __future__ import annotations

import pytest

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
