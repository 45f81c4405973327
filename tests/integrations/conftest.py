# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest

from flashinfer_sm12x.integrations import vllm_plugin as vp


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (vp.ENV_BACKEND, vp.ENV_ENABLE, vp.ENV_ACT, vp.ENV_RELOAD):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch
