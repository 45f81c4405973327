# SPDX-License-Identifier: Apache-2.0
"""mm_fp4's host path (CPU-only): the fast validation accepts exactly what the full one accepts and returns the same
Problem; the plan holds the workspace size and the module's launcher; the module's launch cache (a header compiled
here with the host compiler) hits on a repeated key and misses when any word of it changes."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from flashinfer_sm12x.formats import mxfp4_quantize, nvfp4_quantize
from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels import family
from flashinfer_sm12x.kernels.mm_fp4 import FAMILY
from flashinfer_sm12x.ops import mm_fp4 as op

ROOT = Path(__file__).resolve().parents[2]
M, N, K = 7, 264, 512


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors pass for CUDA device 0 (meta tensors for another device), in both validation paths."""
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: not self.is_meta))
    monkeypatch.setattr(torch.Tensor, "get_device", lambda self: -1 if self.is_meta else 0)


def _operands(fmt: str) -> dict[str, object]:
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(M, K, generator=gen), torch.randn(N, K, generator=gen)
    if fmt == "nvfp4":
        a, a_sf = nvfp4_quantize(x, torch.tensor(1.0))
        b, b_sf = nvfp4_quantize(w, torch.tensor(1.0))
    else:
        a, a_sf = mxfp4_quantize(x)
        b, b_sf = mxfp4_quantize(w)
    return {"a": a, "b": b.T, "a_descale": a_sf, "b_descale": b_sf.T, "alpha": None, "out_dtype": torch.bfloat16,
            "out": None, "block_size": 16 if fmt == "nvfp4" else 32, "use_8x4_sf_layout": False,
            "use_nvfp4": fmt == "nvfp4"}


def _args(ops: dict[str, object]) -> tuple:
    return tuple(ops[name] for name in ("a", "b", "a_descale", "b_descale", "alpha", "out_dtype", "out",
                                        "block_size", "use_8x4_sf_layout", "use_nvfp4"))


Change = Callable[[dict[str, object]], dict[str, object]]

# Forms the fast path must accept (FlashInfer's calls: scales 2-D as quantized, or flat; alpha; out given).
COMMON: list[tuple[str, Change]] = [
    ("as quantized", lambda o: {}),
    ("out given", lambda o: {"out": torch.empty(M, N, dtype=torch.bfloat16)}),
    ("fp16 out given", lambda o: {"out_dtype": torch.float16, "out": torch.empty(M, N, dtype=torch.float16)}),
    ("alpha", lambda o: {"alpha": torch.ones(1)}),
    ("flat scales", lambda o: {"a_descale": o["a_descale"].reshape(-1), "b_descale": o["b_descale"].T.reshape(-1)}),
]

# Valid forms the fast path leaves to the full validation, and every kind of bad input.
OTHER: list[tuple[str, Change]] = [
    ("a as float4_e2m1fn_x2", lambda o: {"a": o["a"].view(torch.float4_e2m1fn_x2)}),
    ("b_descale as e8m0", lambda o: {"b_descale": o["b_descale"].view(torch.float8_e8m0fnu)}),
    ("a float", lambda o: {"a": o["a"].float()}),
    ("a 3-D", lambda o: {"a": o["a"][None]}),
    ("a not a tensor", lambda o: {"a": o["a"].tolist()}),
    ("a non-contiguous", lambda o: {"a": torch.cat([o["a"], o["a"]], 1)[:, ::2]}),
    ("a on another device", lambda o: {"a": o["a"].to("meta")}),
    ("K mismatch", lambda o: {"a": o["a"][:, :64].contiguous()}),
    ("b row-major", lambda o: {"b": o["b"].contiguous()}),
    ("b a column slice of a wider weight", lambda o: {"b": torch.cat([o["b"].T, o["b"].T], 1).T[: o["b"].shape[0]]}),
    ("b int8", lambda o: {"b": o["b"].view(torch.int8)}),
    ("b on another device", lambda o: {"b": o["b"].to("meta")}),
    ("N not a multiple of 8", lambda o: {"b": o["b"][:, :N - 4]}),
    ("block size", lambda o: {"block_size": 64}),
    ("8x4 layout", lambda o: {"use_8x4_sf_layout": True}),
    ("a scales short", lambda o: {"a_descale": o["a_descale"].reshape(-1)[:64]}),
    ("a scales transposed", lambda o: {"a_descale": o["a_descale"].T}),
    ("a scales 3-D", lambda o: {"a_descale": o["a_descale"][None]}),
    ("b scales not transposed", lambda o: {"b_descale": o["b_descale"].T}),
    ("b scales transposed copy", lambda o: {"b_descale": o["b_descale"].contiguous()}),
    ("b scales flat non-contiguous", lambda o: {"b_descale": torch.cat([o["b_descale"].T.reshape(-1)] * 2)[::2]}),
    ("b scales on another device", lambda o: {"b_descale": o["b_descale"].to("meta")}),
    ("alpha float64", lambda o: {"alpha": torch.ones(1, dtype=torch.float64)}),
    ("alpha per row", lambda o: {"alpha": torch.ones(M)}),
    ("alpha on another device", lambda o: {"alpha": torch.ones(1, device="meta")}),
    ("alpha a float", lambda o: {"alpha": 1.0}),
    ("out_dtype fp32", lambda o: {"out_dtype": torch.float32}),
    ("out wrong dtype", lambda o: {"out": torch.empty(M, N, dtype=torch.float16)}),
    ("out wrong shape", lambda o: {"out": torch.empty(M, N + 8, dtype=torch.bfloat16)}),
    ("out non-contiguous", lambda o: {"out": torch.empty(N, M, dtype=torch.bfloat16).T}),
    ("out on another device", lambda o: {"out": torch.empty(M, N, dtype=torch.bfloat16, device="meta")}),
]


def _same_problem(fast: op.Problem, full: op.Problem, out_given: bool) -> None:
    assert (fast.fmt, fast.m, fast.n, fast.k) == (full.fmt, full.m, full.n, full.k)
    for name in ("a", "b", "sfa", "sfb", "alpha") + (("out",) if out_given else ()):
        x, y = getattr(fast, name), getattr(full, name)
        if x is None or y is None:
            assert x is y, name
        else:
            assert (x.data_ptr(), x.shape, x.stride(), x.dtype) == (y.data_ptr(), y.shape, y.stride(), y.dtype), name
    assert fast.out.shape == full.out.shape and fast.out.dtype == full.out.dtype


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize(("case", "change"), COMMON, ids=[c[0] for c in COMMON])
def test_fast_path_takes_the_common_call(fake_cuda: None, fmt: str, case: str, change: Change) -> None:
    ops = _operands(fmt)
    ops.update(change(ops))
    fast = op._validate_common(*_args(ops))
    assert fast is not None, "the common call must not fall back to the full validation"
    _same_problem(fast, op._validate_full(*_args(ops), False), ops["out"] is not None)
    assert fast.b is ops["b"] and fast.sfb is ops["b_descale"]  # no views made on the host path
    assert op.validate(*_args(ops)).m == M


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize(("case", "change"), OTHER, ids=[c[0] for c in OTHER])
def test_fast_path_never_accepts_what_full_validation_would_not(fake_cuda: None, fmt: str, case: str,
                                                                 change: Change) -> None:
    ops = _operands(fmt)
    ops.update(change(ops))
    try:
        full: op.Problem | Exception = op._validate_full(*_args(ops), False)
    except (TypeError, ValueError) as exc:
        full = exc
    fast = op._validate_common(*_args(ops))
    if isinstance(full, Exception):
        assert fast is None, f"fast path accepted what the full validation rejects: {full}"
        with pytest.raises(type(full), match="."):  # validate() raises the full path's typed error
            op.validate(*_args(ops))
    elif fast is not None:
        _same_problem(fast, full, ops["out"] is not None)


def test_rare_valid_forms_still_pass(fake_cuda: None) -> None:
    """E8M0-typed scales and float4_e2m1fn_x2 operands take the full path and come out as uint8 views."""
    ops = _operands("mxfp4")
    ops.update(a=ops["a"].view(torch.float4_e2m1fn_x2), b_descale=ops["b_descale"].view(torch.float8_e8m0fnu))
    assert op._validate_common(*_args(ops)) is None
    p = op.validate(*_args(ops))
    assert p.a.dtype == torch.uint8 and p.sfb.dtype == torch.uint8 and p.sfb.shape == ops["b_descale"].shape


def test_cpu_tensors_are_refused_by_both_paths() -> None:
    ops = _operands("mxfp4")
    assert op._validate_common(*_args(ops)) is None
    with pytest.raises(ValueError, match="CUDA"):
        op.validate(*_args(ops))


class FakeModule:
    """Records what the op layer hands the module."""

    def __init__(self, workspace: int) -> None:
        self.workspace = workspace
        self.size_queries = 0
        self.calls: list[tuple] = []

    def workspace_bytes(self, m: int, n: int, k: int) -> int:
        self.size_queries += 1
        return self.workspace

    def run(self, *args: object) -> None:
        self.calls.append(args)


@pytest.mark.parametrize("workspace", [0, 4096])
def test_plan_holds_workspace_size_and_launcher(monkeypatch: pytest.MonkeyPatch, fake_cuda: None,
                                                workspace: int) -> None:
    """The workspace size is asked once per plan (not per call); a call passes a workspace of that size, or None
    when the tactic needs none."""
    module = FakeModule(workspace)
    monkeypatch.setattr(family, "load_module", lambda spec: module)
    monkeypatch.setattr(FAMILY.modules, "_modules", {})
    monkeypatch.setattr(op, "_PLANS", {})
    target = parse_target("sm_120a")
    ops = _operands("mxfp4")
    for _ in range(3):
        p = op.validate(*_args(ops))
        pl = op.plan(p, target=target)
        op.run(p, pl, enable_pdl=True)
    assert module.size_queries == 1 and pl.workspace_bytes == workspace and pl.launch == module.run
    a, b, sfa, sfb, alpha, out, ws, pdl = module.calls[-1]
    assert a is ops["a"] and b is ops["b"] and sfa is ops["a_descale"] and sfb is ops["b_descale"]
    assert alpha is None and out.shape == (M, N) and pdl is True
    assert (ws is None) if workspace == 0 else (ws.numel() == workspace and ws.dtype == torch.uint8)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a host C++ compiler (g++)")
def test_launch_cache_header(tmp_path: Path) -> None:
    """include/flashinfer_sm12x/gemm/launch_cache.h: hit after insert, a miss when any key word changes, LRU
    eviction, in-place re-insert, a deep model's layers all resident, consistent values under concurrent use
    (tests/cpp/launch_cache_test.cpp). Built with AddressSanitizer and UBSan where the toolchain has them."""
    binary = tmp_path / "launch_cache_test"
    base = ["g++", "-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{ROOT / 'include'}",
            str(ROOT / "tests" / "cpp" / "launch_cache_test.cpp"), "-o", str(binary)]
    sanitized = subprocess.run([*base, "-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
                               capture_output=True, text=True)
    if sanitized.returncode != 0:
        subprocess.run(base, check=True)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_launch_key_names_every_problem_field() -> None:
    """The key covers every field of the binding's Problem: key_of's structured binding lists them all, and the
    header's Problem has exactly those fields (a field added without a key word fails to compile; this pins the
    list the key is built from)."""
    launcher = (ROOT / "include/flashinfer_sm12x/gemm/launcher.cuh").read_text()
    cached = (ROOT / "include/flashinfer_sm12x/gemm/cached_launch.cuh").read_text()
    body = launcher[launcher.index("struct Problem {"):launcher.index("};", launcher.index("struct Problem {"))]
    fields = []
    for line in body.splitlines()[1:]:
        code = line.split("//")[0].strip().rstrip(";")
        if not code:
            continue
        declared = code.split("=")[0].replace("*", " ").replace(",", " ").split()[1:]
        fields += [name for name in declared if name not in ("void", "float", "int", "int32_t", "const")]
    binding = cached[cached.index("auto const& [") + len("auto const& ["):]
    binding = binding[:binding.index("]")]
    assert [f.strip() for f in binding.split(",")] == fields
    for name in fields:
        assert f"detail::key_word({name})" in cached, name
    assert "detail::key_word(device)" in cached and "detail::key_word(workspace)" in cached
