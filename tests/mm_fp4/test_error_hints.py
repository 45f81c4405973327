# SPDX-License-Identifier: Apache-2.0
"""mm_fp4's errors point at the likely mistake: FlashInfer's NVFP4 defaults on MXFP4 data, a column-major `a`."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.integrations.flashinfer_mm_fp4 import mm_fp4
from tests.mm_fp4.operands import mxfp4_operands as make_operands

M, N, K = 7, 24, 256


@pytest.fixture(scope="module")
def mxfp4_operands() -> dict[str, torch.Tensor]:
    return make_operands(M, N, K, seed=1)


def test_flashinfer_defaults_on_mxfp4_data_hint_block_size_32(mxfp4_operands: dict[str, torch.Tensor]) -> None:
    # FlashInfer's defaults: use_nvfp4=True, block_size=16. MXFP4 scales (uint8) have half NVFP4's scale columns.
    with pytest.raises(ValueError, match=r"block_size=32, use_nvfp4=False") as exc:
        mm_fp4(**mxfp4_operands, backend="cutlass_sm12x")
    assert "a_descale" in str(exc.value)


def test_e8m0_scales_with_nvfp4_defaults_hint_mxfp4(mxfp4_operands: dict[str, torch.Tensor]) -> None:
    ops = dict(mxfp4_operands, a_descale=mxfp4_operands["a_descale"].view(torch.float8_e8m0fnu))
    with pytest.raises(TypeError, match=r"MXFP4 is block_size=32, use_nvfp4=False"):
        mm_fp4(**ops, backend="cutlass_sm12x")


def test_real_nvfp4_scale_errors_carry_no_mxfp4_hint(mxfp4_operands: dict[str, torch.Tensor]) -> None:
    # Scales of neither format's size: the plain 128x4 message, no guess.
    ops = dict(mxfp4_operands, a_descale=torch.zeros(100, dtype=torch.float8_e4m3fn))
    with pytest.raises(ValueError, match="128x4") as exc:
        mm_fp4(**ops, backend="cutlass_sm12x")
    assert "use_nvfp4=False" not in str(exc.value)


def test_column_major_a_is_named_not_a_k_mismatch(mxfp4_operands: dict[str, torch.Tensor]) -> None:
    # a stored column-major as [k/2, m] (its transpose is the row-major operand): K would read as 2*m.
    a_col = mxfp4_operands["a"].T  # shape [k/2, m], column-major
    ops = dict(mxfp4_operands, a=a_col)
    with pytest.raises(ValueError, match="column-major") as exc:
        mm_fp4(**ops, block_size=32, use_nvfp4=False, backend="cutlass_sm12x")
    assert "K mismatch" not in str(exc.value) and "pass a.T" in str(exc.value)


def test_column_major_a_of_the_right_shape_is_named(mxfp4_operands: dict[str, torch.Tensor]) -> None:
    a_col = mxfp4_operands["a"].T.contiguous().T  # shape [m, k/2], column-major
    ops = dict(mxfp4_operands, a=a_col)
    with pytest.raises(ValueError, match="column-major") as exc:
        mm_fp4(**ops, block_size=32, use_nvfp4=False, backend="cutlass_sm12x")
    assert "a.contiguous()" in str(exc.value)
