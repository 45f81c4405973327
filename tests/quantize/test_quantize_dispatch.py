# SPDX-License-Identifier: Apache-2.0
"""CPU tests of the quantizer ops: signatures, CPU tensors take the torch reference (no module built), and bad
input raises exactly the reference's errors."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

import flashinfer_sm12x
from flashinfer_sm12x.errors import ConfigError
from flashinfer_sm12x.formats import SfLayout, e2m1_encode, e4m3_encode
from flashinfer_sm12x.formats import quantize as reference
from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels import family
from flashinfer_sm12x.kernels.quantize import FORMATS, prebuild, quantize_spec, required_instruction
from flashinfer_sm12x.ops import quantize as ops
from tests.quantize.cases import e2m1_cases, e4m3_cases, special_rows

NAMES = ("mxfp4_quantize", "mxfp8_quantize", "nvfp4_quantize")


@pytest.fixture
def no_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to build or load a quantizer module fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a CPU call must not build or load a kernel module")

    monkeypatch.setattr(family, "load_module", refuse)


@pytest.mark.parametrize("name", NAMES)
def test_signatures_match_the_reference(name: str) -> None:
    assert inspect.signature(getattr(ops, name)) == inspect.signature(getattr(reference, name))


def test_package_and_fused_moe_use_the_ops() -> None:
    for name in NAMES:
        assert getattr(flashinfer_sm12x, name) is getattr(ops, name)
    pipeline = importlib.import_module("flashinfer_sm12x.moe.pipeline")  # fused_moe's reference implementation
    assert pipeline.mxfp4_quantize is ops.mxfp4_quantize and pipeline.mxfp8_quantize is ops.mxfp8_quantize
    assert flashinfer_sm12x.mxfp4_dequantize is reference.mxfp4_dequantize


def _inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(3, 50, 96, generator=g) * 4).to(torch.bfloat16)


CALLS: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
    ("mxfp4", lambda f, a: f(a), {}),
    ("mxfp4", lambda f, a: f(a, sfLayout=SfLayout.layout_8x4, recipe="floor"), {}),
    ("mxfp4", lambda f, a: f(a[0, :32].t().contiguous().t()), {}),  # column-major
    ("mxfp8", lambda f, a: f(a, alignment=128), {}),
    ("mxfp8", lambda f, a: f(a, False, 32), {}),
    ("nvfp4", lambda f, a: f(a, torch.tensor([17.0])), {}),
    ("nvfp4", lambda f, a: f(a, torch.arange(1.0, 151.0), "linear"), {}),
]


@pytest.mark.parametrize(("fmt", "call", "unused"), CALLS)
def test_cpu_tensors_take_the_reference(no_builds: None, fmt: str, call: Callable[..., Any], unused: dict) -> None:
    a = _inputs()
    got = call(getattr(ops, f"{fmt}_quantize"), a)
    want = call(getattr(reference, f"{fmt}_quantize"), a)
    for g, w in zip(got, want, strict=True):
        assert g.device.type == "cpu" and g.dtype == w.dtype and g.shape == w.shape and g.stride() == w.stride()
        assert torch.equal(g.view(torch.uint8), w.view(torch.uint8))


BAD: list[tuple[str, Callable[[Callable[..., Any]], Any]]] = [
    ("float64 input", lambda f: f(torch.zeros(2, 32, dtype=torch.float64))),
    ("int input", lambda f: f(torch.zeros(2, 32, dtype=torch.int32))),
    ("K not a block multiple", lambda f: f(torch.zeros(2, 48))),
    ("1-D input", lambda f: f(torch.zeros(64))),
    ("unknown backend", lambda f: f(torch.zeros(2, 32), backend="triton")),
    ("not a tensor", lambda f: f([[1.0] * 32])),
]



def _raised(thunk: Callable[[], Any]) -> tuple[type, str]:
    with pytest.raises(Exception) as info:  # noqa: PT011  (the type is compared with the reference's)
        thunk()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("name", ["mxfp4_quantize", "mxfp8_quantize"])
@pytest.mark.parametrize(("what", "call"), BAD, ids=[b[0] for b in BAD])
def test_mx_errors_match_the_reference(name: str, what: str, call: Callable[..., Any]) -> None:
    ours = _raised(lambda: call(getattr(ops, name)))
    theirs = _raised(lambda: call(getattr(reference, name)))
    assert ours == theirs and ours[0] in (TypeError, ValueError)


MORE_BAD: list[tuple[str, Callable[[Any], Any]]] = [
    ("mxfp4 layout 9", lambda m: m.mxfp4_quantize(torch.zeros(2, 32), sfLayout=9)),
    ("mxfp4 recipe", lambda m: m.mxfp4_quantize(torch.zeros(2, 32), recipe="nearest")),
    ("mxfp8 recipe", lambda m: m.mxfp8_quantize(torch.zeros(2, 32), recipe="nearest")),
    ("mxfp8 alignment 48", lambda m: m.mxfp8_quantize(torch.zeros(2, 32), alignment=48)),
    ("mxfp8 alignment 0", lambda m: m.mxfp8_quantize(torch.zeros(2, 32), alignment=0)),
    ("mxfp8 layout", lambda m: m.mxfp8_quantize(torch.zeros(2, 32), sf_swizzle_layout="16x4")),
    ("nvfp4 K 24", lambda m: m.nvfp4_quantize(torch.ones(2, 24), torch.tensor([1.0]))),
    ("nvfp4 gs count", lambda m: m.nvfp4_quantize(torch.ones(2, 32), torch.ones(5))),
    ("nvfp4 sf_vec_size", lambda m: m.nvfp4_quantize(torch.ones(2, 32), 1.0, sf_vec_size=32)),
    ("nvfp4 shuffle", lambda m: m.nvfp4_quantize(torch.ones(2, 32), 1.0, do_shuffle=True)),
    ("nvfp4 4over6", lambda m: m.nvfp4_quantize(torch.ones(2, 32), 1.0, nvfp4_4over6=object())),
    ("nvfp4 backend", lambda m: m.nvfp4_quantize(torch.ones(2, 32), 1.0, backend="triton")),
    ("nvfp4 dtype", lambda m: m.nvfp4_quantize(torch.ones(2, 32, dtype=torch.float64), 1.0)),
    # meta stands in for another GPU: a global scale on neither the input's device nor the CPU
    ("nvfp4 gs device", lambda m: m.nvfp4_quantize(torch.ones(2, 32), torch.ones(1, device="meta"))),
]


@pytest.mark.parametrize(("what", "call"), MORE_BAD, ids=[b[0] for b in MORE_BAD])
def test_option_errors_match_the_reference(what: str, call: Callable[[Any], Any]) -> None:
    ours = _raised(lambda: call(ops))
    theirs = _raised(lambda: call(reference))
    assert ours == theirs and issubclass(ours[0], (TypeError, ValueError, NotImplementedError))


class _Elsewhere(torch.Tensor):
    """A meta tensor that reports another device (a GPU this machine may not have): the device rule reads only
    `.device`."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self._where


def _tensor_on(device: str | torch.device) -> torch.Tensor:
    t = torch.Tensor._make_subclass(_Elsewhere, torch.empty(1, device="meta"))
    t._where = torch.device(device)
    return t


def test_nvfp4_global_scale_on_another_device_is_refused() -> None:
    with pytest.raises(ValueError, match=r"a_global_sf must be on the input's device \(cpu\) or the CPU, got meta"):
        ops.nvfp4_quantize(torch.ones(2, 32), torch.ones(1, device="meta"))
    check = reference.check_global_scale_device
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)
    for gs, data_device in ((_tensor_on(cuda0), cuda1), (_tensor_on("meta"), cuda1), (_tensor_on(cuda1), "cpu")):
        with pytest.raises(ValueError, match="a_global_sf must be on"):
            check(gs, torch.device(data_device), "nvfp4_quantize")
    # The input's own device and the CPU (a host value) are served.
    for gs in (_tensor_on(cuda1), torch.ones(1), 1.0):
        check(gs, cuda1, "nvfp4_quantize")
    x_q, sf = ops.nvfp4_quantize(torch.ones(2, 32), torch.ones(1))
    assert x_q.shape == (2, 16) and sf.dtype == torch.uint8


def test_nvfp4_4over6_none_is_served() -> None:
    a = _inputs()[0]
    got = ops.nvfp4_quantize(a, 2.0, nvfp4_4over6=None)
    want = reference.nvfp4_quantize(a, 2.0, nvfp4_4over6=None)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_generated_cases_hit_every_code() -> None:
    """The kernel tests' hand-built inputs cover every E2M1 and finite E4M3 code (guards the generators)."""
    assert set(e2m1_encode(torch.tensor(e2m1_cases())).tolist()) == set(range(16))
    assert len(set(e4m3_encode(torch.tensor(e4m3_cases())).tolist())) == 254
    rows = special_rows()
    assert rows.isnan().sum() == 2 and rows.isinf().sum() == 2 and (rows[0] == 0).all()


def test_family_specs_render_from_the_menu() -> None:
    target = parse_target("sm_120a")
    specs = prebuild(target)
    assert [s.group for s in specs] == list(FORMATS)
    for spec in specs:
        text = spec.sources[0].text
        assert text.startswith("// SPDX-License-Identifier: Apache-2.0")
        assert "FLASHINFER_SM12X_QUANTIZE_SOFTWARE_CVT" not in text
    software = quantize_spec(target, "mxfp4", software_cvt=True)
    assert "#define FLASHINFER_SM12X_QUANTIZE_SOFTWARE_CVT 1" in software.sources[0].text
    assert software.name != specs[0].name  # a distinct cached module
    with pytest.raises(ConfigError):
        quantize_spec(target, "int4")
    assert required_instruction("mxfp4", target) == "F2FP.SATFINITE.E2M1.F32"
    assert required_instruction("mxfp4", parse_target("sm_90a")) == ""  # E2M1 in software on SM90
    assert required_instruction("nvfp4", parse_target("sm_90a")) == "F2FP.SATFINITE.E4M3.F32"
