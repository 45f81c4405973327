# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the integration tests."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
import torch

from flashinfer_sm12x.integrations import vllm_plugin as vp


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (vp.ENV_BACKEND, vp.ENV_ENABLE, vp.ENV_ACT, vp.ENV_RELOAD):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def model_gemm(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The vLLM plugin tests on a machine without a GPU: the grouped GEMM is the torch model of its contract, the
    plugin's environment switches are unset, and vLLM's workspace manager (which its GPU model runner starts) lives on
    the CPU for the test. Only tests that already skipped without vLLM use it."""
    from vllm.v1.worker import workspace

    from flashinfer_sm12x.testing.moe_cases import grouped_gemm_model

    pipeline = importlib.import_module("flashinfer_sm12x.moe.pipeline")  # where the MoE calls its grouped GEMM
    monkeypatch.setattr(pipeline, "grouped_mm_fp4", grouped_gemm_model)
    for name in (vp.ENV_BACKEND, vp.ENV_ENABLE, vp.ENV_ACT, vp.ENV_RELOAD):
        monkeypatch.delenv(name, raising=False)
    workspace.init_workspace_manager(torch.device("cpu"))
    yield monkeypatch
    workspace.reset_workspace_manager()
