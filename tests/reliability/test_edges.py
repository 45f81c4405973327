# SPDX-License-Identifier: Apache-2.0
"""Edge sizes and the 32-bit line: empty batches return empty results without a launch; sizes past 2^31 - 1 that the
kernels would take as 32-bit ints raise ValueError before any launch (meta tensors: nothing is allocated); the
regressions of the fuzzer's findings."""

from __future__ import annotations

import pytest
import torch

import flashinfer_sm12x as fs
from flashinfer_sm12x.checks import INDEX_LIMIT, check_index_range, check_no_alias, overlaps
from flashinfer_sm12x.formats import quantize as ref
from flashinfer_sm12x.kernels.grouped_mm_fp4 import FAMILY as GROUPED
from flashinfer_sm12x.moe import pipeline
from flashinfer_sm12x.ops import grouped_mm_fp4 as grouped_op
from flashinfer_sm12x.ops import mm_fp4 as op
from flashinfer_sm12x.testing import fuzz


def _meta_gemm(m: int, n: int, k: int, sf_cols: int | None = None) -> tuple[torch.Tensor, ...]:
    """MXFP4 operands of an m x n x k GEMM on the meta device (shapes only)."""
    cols = sf_cols if sf_cols is not None else -(-(k // 32) // 4) * 4
    a = torch.empty(m, k // 2, dtype=torch.uint8, device="meta")
    b = torch.empty(n, k // 2, dtype=torch.uint8, device="meta").T
    sfa = torch.empty(-(-m // 128) * 128 * cols, dtype=torch.uint8, device="meta")
    sfb = torch.empty(-(-n // 128) * 128 * cols, dtype=torch.uint8, device="meta")
    return a, b, sfa, sfb


def _validate(a, b, sfa, sfb, out=None):  # type: ignore[no-untyped-def]
    return op.validate(a, b, sfa, sfb, None, torch.bfloat16, out, 32, False, False)


def test_mm_fp4_m_times_n_past_2_31_passes_validation() -> None:
    # M * N = 2^32 elements: the kernels' element offsets are 64-bit, so only the device check (last) refuses meta.
    m, n = 2**16, 2**16
    assert m * n > INDEX_LIMIT
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        _validate(*_meta_gemm(m, n, 64), out=torch.empty(m, n, dtype=torch.bfloat16, device="meta"))


@pytest.mark.parametrize(("m", "n", "what"), [(2**31, 8, "M"), (INDEX_LIMIT + 1 + 127, 8, "M"),
                                              (128, 2**31 + 8, "N")])
def test_mm_fp4_dimension_past_2_31_is_refused(m: int, n: int, what: str) -> None:
    with pytest.raises(ValueError, match=f"{what} = .* exceeds"):
        _validate(*_meta_gemm(m, n, 64))


def test_mm_fp4_scale_count_on_both_sides_of_the_line() -> None:
    # K = 64: 4 scale columns, so 2^29 - 128 rows hold 2^31 - 512 scale bytes (below) and 2^29 rows 2^31 (above).
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        _validate(*_meta_gemm(2**29 - 128, 8, 64))
    with pytest.raises(ValueError, match="a_descale_elements = 2147483648 exceeds"):
        _validate(*_meta_gemm(2**29, 8, 64))


def test_mm_fp4_scale_count_past_2_31_is_refused() -> None:
    # M = 2^26 rows of K = 4096: 2^26 * 128 scale bytes = 2^33 > the line, while M, N, K stay small.
    with pytest.raises(ValueError, match="a_descale_elements = .* exceeds"):
        _validate(*_meta_gemm(2**26, 8, 4096))
    with pytest.raises(ValueError, match="runs on CUDA tensors"):  # 2^23 rows: 2^30 scale bytes, below it
        _validate(*_meta_gemm(2**23, 8, 4096))


def test_mm_fp4_empty_batch_is_valid_and_n_or_k_zero_is_not() -> None:
    a, a_sf = ref.mxfp4_quantize(torch.empty(0, 64))
    w, w_sf = ref.mxfp4_quantize(torch.randn(16, 64))
    assert a.shape == (0, 32) and a_sf.numel() == 0
    with pytest.raises(ValueError, match="runs on CUDA tensors"):  # accepted up to the device check
        op.validate(a, w.T, a_sf, w_sf.T, None, torch.bfloat16, None, 32, False, False)
    with pytest.raises(ValueError, match="N and K must be positive"):
        op.validate(a, w.T[:, :0], a_sf, w_sf.T[:, :0], None, torch.bfloat16, None, 32, False, False)


def test_run_launches_nothing_for_an_empty_batch() -> None:
    class NoLaunch:
        workspace_bytes = 0
        pdl = False

        @staticmethod
        def launch(*args: object) -> None:
            raise AssertionError("an empty batch must not launch")

    out = torch.empty(0, 16, dtype=torch.bfloat16)
    p = op.Problem("mxfp4", 0, 16, 64, torch.empty(0, 32, dtype=torch.uint8), torch.empty(32, 16, dtype=torch.uint8),
                   torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.uint8), None, out)
    assert op.run(p, NoLaunch()) is out  # type: ignore[arg-type]


def test_grouped_past_2_31_is_refused() -> None:
    tactic = GROUPED.candidates("mxfp4")[0]
    m = (2**31 // tactic.tile_m + 1) * tactic.tile_m
    a = torch.empty(m, 64, dtype=torch.uint8, device="meta")
    b = torch.empty(2, 64, 64, dtype=torch.uint8, device="meta")
    a_sf = torch.empty(-(-m // 128) * 128 * 4, dtype=torch.uint8, device="meta")
    b_sf = torch.empty(2 * 128 * 4, dtype=torch.uint8, device="meta")
    tiles = torch.empty(m // tactic.tile_m, dtype=torch.int32, device="meta")
    with pytest.raises(ValueError, match="m_total = .* exceeds"):
        grouped_op.grouped_mm_fp4(a, a_sf, b, b_sf, tiles, tactic, fmt="mxfp4")


def test_moe_row_plan_line() -> None:
    small = pipeline.row_plan(1024, 4, 128, "mxfp4", None, None)
    pipeline.check_row_plan(small, 2944, 2944)  # GPT-OSS at 1024 tokens: far below the line
    big = pipeline.row_plan(2**29, 4, 128, "mxfp4", None, None)  # T * k = 2^31 pairs
    with pytest.raises(ValueError, match="pairs = .* exceeds"):
        pipeline.check_row_plan(big, 2944, 2944)
    edge = pipeline.row_plan(2**24, 4, 128, "mxfp4", None, None)  # 2^26 pairs: the workspace stays below it
    with pytest.raises(ValueError, match="scale_elements"):  # but the 128x4 scales of 2944 columns do not
        pipeline.check_row_plan(edge, 2944, 2944)
    pipeline.check_row_plan(pipeline.row_plan(2**20, 4, 128, "mxfp4", None, None), 2944, 2944)


def test_check_index_range_names_the_count() -> None:
    check_index_range("f", x=INDEX_LIMIT)
    with pytest.raises(ValueError, match="f: x = 2147483648 exceeds"):
        check_index_range("f", x=INDEX_LIMIT + 1)


def test_overlap_rules() -> None:
    buf = torch.zeros(64, dtype=torch.uint8)
    assert overlaps(buf[:32], buf[16:48]) and not overlaps(buf[:32], buf[32:])
    assert overlaps(buf.view(torch.bfloat16), buf[63:])
    assert not overlaps(buf[:0], buf) and not overlaps(buf, torch.zeros(64, dtype=torch.uint8))
    grid = torch.zeros(8, 8)
    assert overlaps(grid[:, 0], grid[7])  # strided column vs the last row: they share grid[7, 0]
    with pytest.raises(ValueError, match="out overlaps x"):
        check_no_alias(buf[8:], (("x", buf[:16]), ("y", None)), None)


def test_moe_empty_batch_both_faces(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_launch(*args: object, **kwargs: object) -> None:
        raise AssertionError("an empty batch must not launch")

    monkeypatch.setattr(pipeline, "grouped_mm_fp4", no_launch)
    for case in fuzz.cases():
        if case.name.startswith("empty batch") and case.where == "any" and "moe" in case.op:
            args, kwargs = case.build("cpu")
            out = fuzz.function(case.op)(*args, **kwargs)
            assert out.shape[0] == 0 and out.ndim == 2, case.id
    w = fuzz._moe_weights("cpu")
    got = fs.fused_moe(torch.empty(0, fuzz.MH, dtype=torch.bfloat16), torch.empty(0, fuzz.ME), w, top_k=2,
                       impl="reference")
    assert got.shape == (0, fuzz.MH)


@pytest.mark.parametrize("quantize", ["mxfp4", "mxfp8", "nvfp4"])
def test_quantizers_empty_batch(quantize: str) -> None:
    x = torch.empty(0, 64)
    if quantize == "mxfp4":
        q, sf = fs.mxfp4_quantize(x)
    elif quantize == "mxfp8":
        q, sf = fs.mxfp8_quantize(x)
    else:
        q, sf = fs.nvfp4_quantize(x, 1.0)
    assert q.shape[0] == 0 and sf.numel() == 0


# ---- regressions of what the fuzzer found (each also a fuzz case)

def test_out_aliasing_an_input_is_refused() -> None:
    case = next(c for c in fuzz.cases() if c.id == "mm_fp4:out aliases a")
    args, kwargs = case.build("cpu")
    with pytest.raises(ValueError, match="overlaps a"):
        fs.mm_fp4(*args, **kwargs)


@pytest.mark.parametrize("bad", ["bfloat16", "torch.float16"])
def test_out_dtype_as_a_string_is_refused(bad: str) -> None:
    case = next(c for c in fuzz.cases() if c.id == "mm_fp4:valid")
    args, kwargs = case.build("cpu")
    with pytest.raises(ValueError, match="out_dtype"):
        fs.mm_fp4(*args, **{**kwargs, "out_dtype": bad})


@pytest.mark.parametrize("alignment", [True, 32.0, "32"])
def test_mxfp8_alignment_must_be_an_int(alignment: object) -> None:
    with pytest.raises(TypeError, match="alignment must be an int"):
        fs.mxfp8_quantize(torch.randn(4, 64), True, alignment)  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", [True, 0.0])
def test_scale_layout_bool_or_float_is_refused(layout: object) -> None:
    with pytest.raises(TypeError, match="scale-factor layout"):
        fs.mxfp4_quantize(torch.randn(4, 64), sfLayout=layout)  # type: ignore[arg-type]


def test_fused_moe_reference_path_checks_routing_types() -> None:
    # Before: float ids, a bool top_k, an int out_dtype or a string alpha reached the reference pipeline.
    for name in ("ids float", "top_k bool", "out_dtype int32", "alpha string", "routing None", "validate_ids int"):
        case = next(c for c in fuzz.cases() if c.id == f"fused_moe:{name}")
        args, kwargs = case.build("cpu")
        with pytest.raises(TypeError):
            fs.fused_moe(*args, **kwargs)


def test_cutlass_fused_moe_argument_types() -> None:
    # Before: a non-tensor input raised AttributeError, a float ep_rank and a non-contiguous input_sf were accepted.
    for name, exc in (("input list", TypeError), ("ep_rank float", TypeError), ("ep_size bool", TypeError),
                      ("input_sf non-contiguous", ValueError), ("output aliases input", ValueError)):
        case = next(c for c in fuzz.cases() if c.id == f"cutlass_fused_moe:{name}")
        args, kwargs = case.build("cpu")
        with pytest.raises(exc):
            fs.cutlass_fused_moe(*args, **kwargs)
