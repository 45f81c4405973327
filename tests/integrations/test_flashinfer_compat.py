# SPDX-License-Identifier: Apache-2.0
"""Every FlashInfer name flashinfer_compat looks up exists in the installed release (CI runs this against
FlashInfer 0.7.2.post1 and 0.7.4): a FlashInfer upgrade that renames one fails here, not in a user's call."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flashinfer")

from flashinfer_sm12x.integrations import flashinfer_compat as compat  # noqa: E402


def test_installed_flashinfer_is_a_tested_release() -> None:
    assert compat.installed_version() in compat.TESTED_VERSIONS


@pytest.mark.parametrize("name", [*compat.FP4_REQUIREMENTS.values(), *compat.FP4_RUNNER_FACTORIES.values(),
                                  compat.TUNING_CONFIG_128X4, compat.WORKSPACE_SIZE])
def test_private_names_exist(name: str) -> None:
    value = compat.private(name)
    if name in compat.FP4_REQUIREMENTS.values():
        assert callable(getattr(value, "is_compute_capability_supported", None)), name


def test_missing_name_is_a_clear_error() -> None:
    with pytest.raises(compat.FlashInferNameMissing, match="_no_such_name.*tested with"):
        compat.private("_no_such_name")


def test_public_surface() -> None:
    names = compat.mm_fp4_backend_names()
    assert {"cudnn", "cutlass", "b12x"} <= set(names) and "auto" not in names
    assert {"a", "b", "backend", "use_nvfp4", "enable_pdl"} <= compat.mm_fp4_parameters()


def test_autotuner_workspace_is_cached_per_device() -> None:
    buf = compat.autotuner_workspace(torch.device("cpu"))
    assert buf.dtype == torch.uint8 and buf.numel() >= 16 * 2**20
    assert compat.autotuner_workspace(torch.device("cpu")) is buf
