# SPDX-License-Identifier: Apache-2.0
"""The quantizer kernels against the torch reference, bit for bit (outputs, scales and every padding byte).

Runs on any GPU the kernels target: SM120/SM121, or SM90 with FLASHINFER_SM12X_EMULATE=1 (there the modules
are native sm_90a builds: E2M1 in the exact software path, E4M3 with the native cvt). Each case runs twice:
with the module a user gets, and with a `software_cvt` build that forces the software conversions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from flashinfer_sm12x.formats import SfLayout, swizzled_sf_size
from flashinfer_sm12x.formats import quantize as reference
from flashinfer_sm12x.jit.module import load_module
from flashinfer_sm12x.kernels.quantize import quantize_spec
from flashinfer_sm12x.ops import quantize as ops
from tests.quantize.cases import blocks_with_amax, e2m1_cases, e4m3_cases, rand_rows, special_rows

pytestmark = pytest.mark.cuda

DEVICE = "cuda"
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
LAYOUTS = [SfLayout.layout_128x4, SfLayout.layout_8x4, SfLayout.layout_linear]
FORMATS = ["mxfp4", "mxfp8", "nvfp4"]


@dataclass
class Kernels:
    software_cvt: bool
    calls: list[str] = field(default_factory=list)


@pytest.fixture(scope="module", params=[False, True], ids=["native_cvt", "software_cvt"])
def kernels(request: pytest.FixtureRequest) -> Iterator[Kernels]:
    """Routes the ops to the module under test and records that the kernel ran."""
    if not torch.cuda.is_available() or ops._target(torch.device(DEVICE)) is None:
        pytest.skip("no quantizer kernels for this GPU (SM120/SM121, or SM90 with FLASHINFER_SM12X_EMULATE=1)")
    state = Kernels(request.param)
    loaded: dict[tuple[str, str], Any] = {}

    def module(target: Any, fmt: str) -> Any:
        state.calls.append(fmt)
        key = (target.name, fmt)
        if key not in loaded:
            loaded[key] = load_module(quantize_spec(target, fmt, software_cvt=state.software_cvt))
        return loaded[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ops, "_module", module)
        yield state


def _to(x: Any, device: str) -> Any:
    return x.to(device) if isinstance(x, torch.Tensor) else x


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.cpu().view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t.cpu()


def check(kernels: Kernels, fmt: str, a: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
    """Kernel on the GPU vs the reference on the CPU: same shapes, strides, dtypes and bytes."""
    before = len(kernels.calls)
    got = getattr(ops, f"{fmt}_quantize")(_to(a, DEVICE), *(_to(x, DEVICE) for x in args), **kwargs)
    assert len(kernels.calls) > before, "the call did not reach the kernel"
    want = getattr(reference, f"{fmt}_quantize")(a.cpu(), *(_to(x, "cpu") for x in args), **kwargs)
    for name, g, w in zip(("x_q", "sf"), got, want, strict=True):
        assert g.device.type == "cuda"
        assert (g.shape, g.dtype, g.stride()) == (w.shape, w.dtype, w.stride()), name
        gb, wb = _bits(g), _bits(w)
        if not torch.equal(gb, wb):
            bad = (gb != wb).nonzero()
            first = tuple(bad[0].tolist())
            raise AssertionError(f"{name}: {len(bad)} bytes differ, first at {first}: kernel {gb[first]:#x}, "
                                 f"reference {wb[first]:#x}")
    return got


# ----------------------------------------------------------------------------------------- random shapes
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda v: v.name)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("m", [1, 7, 128, 300])
@pytest.mark.parametrize("k", [64, 2880])
@pytest.mark.parametrize("fmt", FORMATS)
def test_random_rows(kernels: Kernels, fmt: str, k: int, m: int, dtype: torch.dtype, layout: SfLayout) -> None:
    a = rand_rows((m, k), dtype, seed=m * 7 + k)
    if fmt == "nvfp4":
        check(kernels, fmt, a, torch.tensor([448.0 * 6.0]) / a.float().abs().amax(), layout)
    elif fmt == "mxfp4":
        for recipe in ("rceil", "floor"):
            check(kernels, fmt, a, sfLayout=layout, recipe=recipe)
    else:
        for recipe in ("rceil", "floor"):
            check(kernels, fmt, a, sf_swizzle_layout=layout, recipe=recipe)


# --------------------------------------------------------------------------- every code, ties, saturation
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("recipe", ["rceil", "floor"])
def test_mxfp4_every_code_and_tie(kernels: Kernels, dtype: torch.dtype, recipe: str) -> None:
    blocks = [blocks_with_amax(e2m1_cases(), amax, 32) for amax in (6.0, -6.0, 7.5, 7.99, 4.0)]
    rows = torch.cat(blocks)
    for exponent in (-140, -126, -20, 0, 17, 100):  # fp32 subnormal blocks up to large ones
        a = (rows.double() * 2.0**exponent).float()
        check(kernels, "mxfp4", a.to(dtype), sfLayout="linear", recipe=recipe)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("recipe", ["rceil", "floor"])
def test_mxfp8_every_code_and_tie(kernels: Kernels, dtype: torch.dtype, recipe: str) -> None:
    rows = torch.cat([blocks_with_amax(e4m3_cases(), amax, 32) for amax in (448.0, -448.0, 500.0, 511.0)])
    for exponent in (-140, -8, 0, 60):
        a = (rows.double() * 2.0**exponent).float()
        check(kernels, "mxfp8", a.to(dtype), False, recipe=recipe)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_nvfp4_every_element_and_scale_code(kernels: Kernels, dtype: torch.dtype) -> None:
    elems = blocks_with_amax(e2m1_cases(), 6.0, 16)
    # block maxima that put gs * amax / 6 on every E4M3 value and midpoint (and their neighbours)
    scale_targets = [v for v in e4m3_cases() if v > 0]
    amaxes = torch.tensor(scale_targets, dtype=torch.float64) * 6.0
    scale_rows = torch.zeros(len(scale_targets), 16, dtype=torch.float64)
    scale_rows[:, 0] = amaxes
    scale_rows[:, 5] = -amaxes * 0.3
    a = torch.cat([elems, scale_rows.float().clamp(max=3e38)])  # K = 16: one block per row
    for gs in (448.0, 1.0, 1e-3, 1e30, 2.0**-100):
        check(kernels, "nvfp4", a.to(dtype), torch.tensor([gs]), "linear")


# ------------------------------------------------------------------------------------------ special values
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("fmt", FORMATS)
def test_zero_nan_inf_subnormal_blocks(kernels: Kernels, fmt: str, dtype: torch.dtype) -> None:
    a = special_rows().to(dtype)
    if fmt == "nvfp4":
        for gs in (torch.tensor([1.0]), torch.tensor([1e-3]), 0.0, -2.0, float("inf"), float("nan")):
            check(kernels, fmt, a, gs, "linear")
    else:
        for recipe in ("rceil", "floor"):
            check(kernels, fmt, a, **({"sfLayout": "linear"} if fmt == "mxfp4" else {}), recipe=recipe)


# ------------------------------------------------------------------------------ layouts, shapes and strides
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda v: v.name)
@pytest.mark.parametrize("fmt", FORMATS)
def test_scale_padding_is_written_by_the_kernel(kernels: Kernels, fmt: str, layout: SfLayout) -> None:
    """The kernel writes every scale byte, padding included: a buffer full of 0xAB comes back as the reference."""
    a = rand_rows((300, 2880 if fmt != "mxfp8" else 2848), torch.bfloat16, seed=5).to(DEVICE)
    block = 16 if fmt == "nvfp4" else 32
    target = ops._target(a.device)
    kp = 2880 if fmt == "mxfp8" else a.shape[1]  # MXFP8 with alignment 64 pads 2848 -> 2880
    x_q = torch.full((300, kp * (8 if fmt == "mxfp8" else 4) // 8), 0xAB, dtype=torch.uint8, device=DEVICE)
    n_sf = swizzled_sf_size(300, kp // block, layout)
    sf = torch.full((n_sf,), 0xAB, dtype=torch.uint8, device=DEVICE)
    gs = torch.tensor([3.0], device=DEVICE) if fmt == "nvfp4" else None
    ops._module(target, fmt).run(a, x_q, sf, gs, int(layout), 0)
    torch.cuda.synchronize()
    if fmt == "mxfp4":
        want_q, want_sf = reference.mxfp4_quantize(a.cpu(), sfLayout=layout)
    elif fmt == "mxfp8":
        want_q, want_sf = reference.mxfp8_quantize(a.cpu(), alignment=64, sf_swizzle_layout=layout)
    else:
        want_q, want_sf = reference.nvfp4_quantize(a.cpu(), torch.tensor([3.0]), layout)
    assert torch.equal(x_q.cpu(), want_q.view(torch.uint8).reshape(300, -1))
    assert torch.equal(sf.cpu(), want_sf.reshape(-1))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_leading_dims_column_major_strided_and_misaligned(kernels: Kernels, fmt: str) -> None:
    gs: tuple[Any, ...] = (torch.tensor([5.0]),) if fmt == "nvfp4" else ()
    check(kernels, fmt, rand_rows((2, 3, 50, 96), torch.bfloat16, 1), *gs)  # leading batch dims
    check(kernels, fmt, rand_rows((96, 64), torch.float16, 2).t(), *gs)  # column-major [64, 96]
    check(kernels, fmt, rand_rows((3, 64, 128), torch.float32, 3).transpose(-2, -1), *gs)  # batched column-major
    check(kernels, fmt, rand_rows((40, 256), torch.bfloat16, 4)[:, 64:192], *gs)  # strided rows
    flat = rand_rows((1, 7 * 96 + 1), torch.bfloat16, 5).to(DEVICE)
    misaligned = flat[0, 1:].view(7, 96)  # data pointer 2 bytes past a 16-byte boundary
    assert misaligned.data_ptr() % 16
    check(kernels, fmt, misaligned, *gs)


@pytest.mark.parametrize("alignment", [32, 64, 128, 256])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda v: v.name)
@pytest.mark.parametrize("k", [96, 2880])
def test_mxfp8_alignment_padding(kernels: Kernels, alignment: int, layout: SfLayout, k: int) -> None:
    x_q, _ = check(kernels, "mxfp8", rand_rows((130, k), torch.bfloat16, k + alignment), alignment=alignment,
                   sf_swizzle_layout=layout)
    assert x_q.shape[-1] == (k + alignment - 1) // alignment * alignment
    check(kernels, "mxfp8", rand_rows((2, 5, k), torch.float32, 9), True, alignment)  # leading dims


def test_nvfp4_global_scale_forms(kernels: Kernels) -> None:
    a = rand_rows((300, 160), torch.bfloat16, 11)
    amax_rows = a.float().abs().amax(dim=1)
    check(kernels, "nvfp4", a, 448.0 * 6.0 / a.float().abs().max().item())  # a python float
    check(kernels, "nvfp4", a, 448.0 * 6.0 / amax_rows)  # one per row
    check(kernels, "nvfp4", a, (448.0 * 6.0 / amax_rows).reshape(300, 1), "8x4")
    check(kernels, "nvfp4", a.reshape(3, 100, 160), 448.0 * 6.0 / amax_rows, "linear")  # rows across batches


def test_module_rejects_bad_buffers_without_launching(kernels: Kernels) -> None:
    a = rand_rows((8, 64), torch.bfloat16, 12).to(DEVICE)
    module = ops._module(ops._target(a.device), "mxfp4")
    x_q = torch.empty(8, 32, dtype=torch.uint8, device=DEVICE)
    with pytest.raises(ValueError, match="sf"):
        module.run(a, x_q, torch.empty(10, dtype=torch.uint8, device=DEVICE), None, 0, 0)
    with pytest.raises(TypeError):
        module.run(a.to(torch.int16), x_q, torch.empty(512, dtype=torch.uint8, device=DEVICE), None, 0, 0)
    with pytest.raises(ValueError):
        module.run(a, x_q, torch.empty(512, dtype=torch.uint8, device=DEVICE), None, 7, 0)


def test_errors_on_cuda_match_the_reference(kernels: Kernels) -> None:
    bad = [
        lambda m: m.mxfp4_quantize(torch.zeros(2, 48, device=DEVICE)),
        lambda m: m.mxfp4_quantize(torch.zeros(2, 32, dtype=torch.float64, device=DEVICE)),
        lambda m: m.mxfp8_quantize(torch.zeros(2, 32, device=DEVICE), alignment=48),
        lambda m: m.nvfp4_quantize(torch.ones(2, 32, device=DEVICE), torch.ones(5, device=DEVICE)),
        lambda m: m.mxfp4_quantize(torch.zeros(2, 32, device=DEVICE), recipe="nearest"),
    ]
    for call in bad:
        with pytest.raises(Exception) as ours:  # noqa: PT011  (compared with the reference's below)
            call(ops)
        with pytest.raises(Exception) as theirs:  # noqa: PT011
            call(reference)
        assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))
        assert isinstance(ours.value, (TypeError, ValueError))
