# SPDX-License-Identifier: Apache-2.0
"""Malformed-call fuzzing of the public ops: a fixed, generated list of calls, each with the outcome it must have.

Every case is one call of a public op — `mm_fp4`, `mm_mxfp8_mxfp4`, `grouped_mm_fp4`, `fused_moe`,
`cutlass_fused_moe`, `prepare_gpt_oss_weights`, `mxfp4_quantize`, `mxfp8_quantize`, `nvfp4_quantize` — built from one
valid call by one mutation: a wrong dtype, shape, stride (non-contiguous, transposed), device, an `out` that
overlaps an input, a scale layout, ids out of range, a wrong top-k, mismatched expert counts, a non-tensor argument,
a bool where an int belongs, a negative or empty size. The expected outcome is a typed error (exception types plus a
regex the message must match, so the case's own check is the one that fired) or LEGAL: the call is valid.

Runners (tests/reliability/test_fuzz.py) snapshot every input tensor, make the call, and check the outcome and that
no input changed. On the CPU the GEMMs are replaced by a stub that raises `LaunchReached`; a legal call of an op that
needs CUDA tensors then ends in the op's device error (`CPU_LEGAL`), which all its other checks precede. Cases with
`where="cuda"` need CUDA tensors (the device error would hide their own check on the CPU); the GPU runner runs every
case on the device.

Builders take the device ("cpu", "cuda", ...) and return (args, kwargs); data is small and seeded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from importlib import import_module
from typing import Any

import torch

from ..formats import quantize as ref
from ..kernels.grouped_mm_fp4 import FAMILY as GROUPED
from ..moe.weights import PreparedMoEWeights, prepare_gpt_oss_weights
from .moe_cases import make_weights

LEGAL = "legal"
OPS = ("mm_fp4", "mm_mxfp8_mxfp4", "grouped_mm_fp4", "fused_moe", "cutlass_fused_moe", "prepare_gpt_oss_weights",
       "mxfp4_quantize", "mxfp8_quantize", "nvfp4_quantize")
# Ops whose kernels only take CUDA tensors: on the CPU a legal call ends in their device error, raised last.
NEEDS_CUDA = {"mm_fp4": "runs on CUDA tensors", "mm_mxfp8_mxfp4": "runs on CUDA tensors",
              "grouped_mm_fp4": "one CUDA device"}
Build = Callable[[str], tuple[tuple, dict]]


class LaunchReached(Exception):
    """Raised by the CPU runner's stand-in for a kernel launch: the call passed every check."""


@dataclass(frozen=True)
class Case:
    """One call and its outcome: `expect` is LEGAL or exception types; `match` a regex of the message."""

    op: str
    name: str
    build: Build
    expect: tuple[type[BaseException], ...] | str
    match: str = ""
    where: str = "any"  # "any": CPU and GPU; "cuda": needs CUDA tensors (the GPU runner only)

    @property
    def id(self) -> str:
        return f"{self.op}:{self.name}"


def _bad(op: str, name: str, build: Build, exc: type[BaseException] | tuple[type[BaseException], ...], match: str,
         where: str = "any") -> Case:
    return Case(op, name, build, exc if isinstance(exc, tuple) else (exc,), match, where)


def _noncontig(t: torch.Tensor) -> torch.Tensor:
    """The same values as `t` in a non-contiguous view (every other element of a doubled last dimension)."""
    wide = torch.stack((t, torch.zeros_like(t)), dim=-1).flatten(-2)
    return wide[..., ::2]


# ------------------------------------------------------------------------------------------------------ operands
M, N, K = 7, 24, 256


@cache
def _gemm_data(fmt: str) -> dict[str, Any]:
    """Quantized CPU operands of an M x N x K GEMM (the torch reference quantizers are bit-identical to the
    kernels)."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(M, K, generator=gen), torch.randn(N, K, generator=gen)
    b, b_sf = ref.mxfp4_quantize(w)
    if fmt == "nvfp4":
        a, a_sf = ref.nvfp4_quantize(x, 448 * 6 / x.abs().amax())
        b, b_sf = ref.nvfp4_quantize(w, 448 * 6 / w.abs().amax())
    elif fmt == "mxfp8":
        a, a_sf = ref.mxfp8_quantize(x, True, 32)
    else:
        a, a_sf = ref.mxfp4_quantize(x)
    return {"a": a, "a_sf": a_sf, "w": b, "w_sf": b_sf}


def _gemm_kwargs(device: str, fmt: str = "mxfp4") -> dict[str, Any]:
    d = {k: v.to(device) for k, v in _gemm_data(fmt).items()}
    kw: dict[str, Any] = {"a": d["a"], "b": d["w"].T, "a_descale": d["a_sf"], "b_descale": d["w_sf"].T}
    if fmt == "mxfp8":
        return kw
    kw.update(block_size=16 if fmt == "nvfp4" else 32, use_nvfp4=fmt == "nvfp4", backend="cutlass_sm12x")
    return kw


def _mm(change: Callable[[dict[str, Any], str], None] | None = None, fmt: str = "mxfp4") -> Build:
    def build(device: str) -> tuple[tuple, dict]:
        kw = _gemm_kwargs(device, fmt)
        if change is not None:
            change(kw, device)
        return (), kw

    return build


def _set(**values: Any) -> Callable[[dict[str, Any], str], None]:
    """A change that sets keyword arguments; callables are called with (kwargs, device)."""
    def change(kw: dict[str, Any], device: str) -> None:
        for k, v in values.items():
            kw[k] = v(kw, device) if callable(v) and not isinstance(v, type) else v

    return change


def _del(*names: str) -> Callable[[dict[str, Any], str], None]:
    def change(kw: dict[str, Any], device: str) -> None:
        for n in names:
            kw.pop(n)

    return change


def _empty_m(fmt: str) -> Callable[[dict[str, Any], str], None]:
    """M = 0: activations and their scales as the quantizers return them for an empty batch."""
    def change(kw: dict[str, Any], device: str) -> None:
        x = torch.empty(0, K)
        if fmt == "nvfp4":
            a, a_sf = ref.nvfp4_quantize(x, 1.0)
        elif fmt == "mxfp8":
            a, a_sf = ref.mxfp8_quantize(x, True, 32)
        else:
            a, a_sf = ref.mxfp4_quantize(x)
        kw["a"], kw["a_descale"] = a.to(device), a_sf.to(device)

    return change


def _gemm_cases(op: str, fmt: str) -> list[Case]:
    """Cases shared by mm_fp4 (fmt mxfp4 / nvfp4) and mm_mxfp8_mxfp4 (fmt mxfp8)."""
    w4a8 = fmt == "mxfp8"
    a_dtype_error = "float8_e4m3fn" if w4a8 else "packed e2m1"
    cases = [
        Case(op, "valid", _mm(fmt=fmt), LEGAL),
        Case(op, "valid with out", _mm(_set(out=lambda kw, d: torch.empty(M, N, dtype=torch.bfloat16, device=d)),
                                       fmt), LEGAL),
        Case(op, "valid fp16 out", _mm(_set(out_dtype=torch.float16), fmt), LEGAL),
        Case(op, "valid alpha", _mm(_set(alpha=lambda kw, d: torch.ones(1, device=d)), fmt), LEGAL),
        Case(op, "empty batch M=0", _mm(_empty_m(fmt), fmt), LEGAL),
        Case(op, "flat scales", _mm(_set(a_descale=lambda kw, d: kw["a_descale"].reshape(-1),
                                         b_descale=lambda kw, d: kw["b_descale"].T.reshape(-1)), fmt), LEGAL),
        _bad(op, "a list", _mm(_set(a=lambda kw, d: kw["a"].tolist()), fmt), TypeError, "torch.Tensor"),
        _bad(op, "b None", _mm(_set(b=None), fmt), TypeError, "torch.Tensor"),
        _bad(op, "a_descale int", _mm(_set(a_descale=3), fmt), TypeError, "torch.Tensor"),
        _bad(op, "b_descale numpy", _mm(_set(b_descale=lambda kw, d: kw["b_descale"].cpu().numpy()), fmt),
             TypeError, "torch.Tensor"),
        _bad(op, "a float32", _mm(_set(a=lambda kw, d: kw["a"].float()), fmt), TypeError, a_dtype_error),
        _bad(op, "a int8", _mm(_set(a=lambda kw, d: kw["a"].view(torch.int8)), fmt), TypeError, a_dtype_error),
        _bad(op, "a bool", _mm(_set(a=lambda kw, d: kw["a"].bool()), fmt), TypeError, a_dtype_error),
        _bad(op, "b int32", _mm(_set(b=lambda kw, d: kw["b"].to(torch.int32)), fmt), TypeError, "packed e2m1"),
        _bad(op, "b bf16 view", _mm(_set(b=lambda kw, d: kw["b"].T.contiguous().view(torch.bfloat16).T), fmt),
             TypeError, "packed e2m1"),
        _bad(op, "a_descale float32", _mm(_set(a_descale=lambda kw, d: kw["a_descale"].float()), fmt), TypeError,
             "a_descale"),
        _bad(op, "b_descale int16", _mm(_set(b_descale=lambda kw, d: kw["b_descale"].to(torch.int16)), fmt),
             TypeError, "b_descale"),
        _bad(op, "a 3-D", _mm(_set(a=lambda kw, d: kw["a"].unsqueeze(0)), fmt), ValueError, "2-D"),
        _bad(op, "b 1-D", _mm(_set(b=lambda kw, d: kw["b"].T.reshape(-1)), fmt), ValueError, "2-D"),
        _bad(op, "K mismatch", _mm(_set(a=lambda kw, d: kw["a"][:, :64].contiguous()), fmt), ValueError, "K"),
        _bad(op, "a transposed", _mm(_set(a=lambda kw, d: kw["a"].T.contiguous().T), fmt), ValueError,
             "column-major|contiguous|K mismatch"),
        _bad(op, "a non-contiguous", _mm(_set(a=lambda kw, d: _noncontig(kw["a"])), fmt), ValueError, "contiguous"),
        _bad(op, "b row-major", _mm(_set(b=lambda kw, d: kw["b"].contiguous()), fmt), ValueError, "transpose"),
        _bad(op, "b not transposed", _mm(_set(b=lambda kw, d: kw["b"].T.contiguous()), fmt), ValueError, "K"),
        _bad(op, "b strided columns", _mm(_set(b=lambda kw, d: _noncontig(kw["b"].T).T), fmt), ValueError,
             "transpose"),
        _bad(op, "N=0", _mm(_set(b=lambda kw, d: kw["b"][:, :0]), fmt), ValueError, "N and K must be positive"),
        _bad(op, "K=0", _mm(_set(a=lambda kw, d: kw["a"][:, :0].contiguous(), b=lambda kw, d: kw["b"][:0]), fmt),
             ValueError, "N and K must be positive"),
        _bad(op, "N not multiple of 8", _mm(_set(b=lambda kw, d: kw["b"].T[:20].T), fmt), ValueError, "multiple of 8"),
        _bad(op, "a_descale too few", _mm(_set(a_descale=lambda kw, d: kw["a_descale"][:64]), fmt), ValueError,
             "128x4"),
        _bad(op, "a_descale too many", _mm(_set(a_descale=lambda kw, d: torch.cat([kw["a_descale"]] * 2)), fmt),
             ValueError, "128x4"),
        _bad(op, "b_descale not transposed", _mm(_set(b_descale=lambda kw, d: kw["b_descale"].T), fmt), ValueError,
             "128x4"),
        _bad(op, "a_descale non-contiguous", _mm(_set(a_descale=lambda kw, d: _noncontig(kw["a_descale"])), fmt),
             ValueError, "contiguous"),
        _bad(op, "a_descale 3-D", _mm(_set(a_descale=lambda kw, d: kw["a_descale"].unsqueeze(0)), fmt), ValueError,
             "128x4"),
        _bad(op, "alpha float64", _mm(_set(alpha=lambda kw, d: torch.ones(1, dtype=torch.float64, device=d)), fmt),
             ValueError, "alpha"),
        _bad(op, "alpha per row", _mm(_set(alpha=lambda kw, d: torch.ones(M, device=d)), fmt), ValueError, "alpha"),
        _bad(op, "alpha python float", _mm(_set(alpha=0.5), fmt), TypeError, "alpha"),
        _bad(op, "alpha on meta", _mm(_set(alpha=lambda kw, d: torch.ones(1, device="meta")), fmt), ValueError,
             "alpha must be on"),
        _bad(op, "out_dtype fp32", _mm(_set(out_dtype=torch.float32), fmt), ValueError, "out_dtype"),
        _bad(op, "out_dtype string", _mm(_set(out_dtype="bfloat16"), fmt), ValueError, "out_dtype"),
        _bad(op, "out wrong shape", _mm(_set(out=lambda kw, d: torch.empty(M, N + 8, dtype=torch.bfloat16,
                                                                          device=d)), fmt), ValueError, "shape"),
        _bad(op, "out wrong dtype", _mm(_set(out=lambda kw, d: torch.empty(M, N, dtype=torch.float16, device=d)),
                                        fmt), TypeError, "out_dtype"),
        _bad(op, "out transposed", _mm(_set(out=lambda kw, d: torch.empty(N, M, dtype=torch.bfloat16,
                                                                         device=d).T), fmt), ValueError, "contiguous"),
        _bad(op, "out not a tensor", _mm(_set(out=[[0.0] * N] * M), fmt), TypeError, "out"),
        _bad(op, "out on meta", _mm(_set(out=lambda kw, d: torch.empty(M, N, dtype=torch.bfloat16, device="meta")),
                                    fmt), ValueError, "contiguous tensor on"),
        _bad(op, "b on meta", _mm(_set(b=lambda kw, d: kw["b"].to("meta")), fmt), ValueError, "one device"),
        _bad(op, "a_descale on meta", _mm(_set(a_descale=lambda kw, d: kw["a_descale"].to("meta")), fmt), ValueError,
             "one device"),
        _bad(op, "out aliases a", _mm(_set(out=_alias_out("a")), fmt), ValueError, "overlaps a"),
        _bad(op, "out aliases a_descale", _mm(_set(out=_alias_out("a_descale")), fmt), ValueError, "overlaps"),
        _bad(op, "out aliases b", _mm(_set(out=_alias_out("b")), fmt), ValueError, "overlaps b"),
    ]
    if w4a8:
        cases += [
            _bad(op, "K not multiple of 128", _mm(_set(a=lambda kw, d: kw["a"][:, :224].contiguous(),
                                                       b=lambda kw, d: kw["b"][:112]), fmt), ValueError,
                 "multiple of 128"),
            _bad(op, "mxfp4 a for W4A8", _mm(_set(a=lambda kw, d: kw["a"].view(torch.uint8)), fmt), TypeError,
                 "float8_e4m3fn"),
            _bad(op, "e4m3 scales", _mm(_set(a_descale=lambda kw, d: kw["a_descale"].view(torch.float8_e4m3fn)),
                                        fmt), TypeError, "a_descale"),
        ]
    else:
        cases += [
            _bad(op, "K not multiple of 32", _mm(_set(a=lambda kw, d: kw["a"][:, :120].contiguous(),
                                                      b=lambda kw, d: kw["b"][:120]), fmt), ValueError,
                 "multiple of 32"),
            _bad(op, "block_size 16 for MXFP4", _mm(_set(block_size=16), fmt), ValueError, "block_size"),
            _bad(op, "block_size bool", _mm(_set(block_size=True), fmt), ValueError, "block_size"),
            _bad(op, "block_size negative", _mm(_set(block_size=-32), fmt), ValueError, "block_size"),
            _bad(op, "8x4 layout", _mm(_set(use_8x4_sf_layout=True), fmt), ValueError, "128x4"),
            _bad(op, "nvfp4 flag on mxfp4 data", _mm(_set(use_nvfp4=True, block_size=16), fmt), ValueError,
                 "128x4"),
            _bad(op, "e4m3 scales for mxfp4", _mm(_set(a_descale=lambda kw, d: kw["a_descale"].view(
                torch.float8_e4m3fn)), fmt), TypeError, "a_descale"),
            _bad(op, "unknown backend", _mm(_set(backend="marlin"), fmt), ValueError, "unknown backend"),
            _bad(op, "backend None", _mm(_set(backend=None), fmt), ValueError, "unknown backend"),
            _bad(op, "float8 a", _mm(_set(a=lambda kw, d: kw["a"].view(torch.float8_e4m3fn)), fmt), TypeError,
                 "packed e2m1"),
        ]
    return cases


def _nvfp4_gemm_cases() -> list[Case]:
    """mm_fp4's NVFP4 mode (block_size=16, E4M3 scales, the global scales folded into alpha)."""
    op = "mm_fp4"
    nv = "nvfp4"
    return [
        Case(op, "nvfp4 valid", _mm(fmt=nv), LEGAL),
        Case(op, "nvfp4 valid alpha", _mm(_set(alpha=lambda kw, d: torch.ones(1, device=d)), nv), LEGAL),
        Case(op, "nvfp4 valid e4m3 scales", _mm(_set(a_descale=lambda kw, d: kw["a_descale"].view(
            torch.float8_e4m3fn)), nv), LEGAL),
        Case(op, "nvfp4 empty batch M=0", _mm(_empty_m(nv), nv), LEGAL),
        _bad(op, "nvfp4 block_size 32", _mm(_set(block_size=32), nv), ValueError, "block_size=16"),
        _bad(op, "nvfp4 e8m0 scales", _mm(_set(a_descale=lambda kw, d: kw["a_descale"].view(torch.float8_e8m0fnu)),
                                          nv), TypeError, "a_descale"),
        _bad(op, "nvfp4 mxfp4-sized scales", _mm(_set(use_nvfp4=False, block_size=32), nv), ValueError, "128x4"),
        _bad(op, "nvfp4 out aliases a_descale", _mm(_set(out=_alias_out("a_descale")), nv), ValueError, "overlaps"),
    ]


def _alias_out(name: str) -> Callable[[dict[str, Any], str], torch.Tensor]:
    """An `out` of the right shape and dtype whose bytes overlap argument `name` (a fresh buffer holding both)."""
    def make(kw: dict[str, Any], device: str) -> torch.Tensor:
        src = kw[name]
        nbytes = src.numel() * src.element_size()
        out_bytes = M * N * 2
        buf = torch.zeros(max(nbytes, out_bytes) + 64, dtype=torch.uint8, device=device)
        dense = src.T.contiguous().T if name == "b" else src.contiguous()
        raw = dense.T.contiguous() if name == "b" else dense
        buf[:nbytes].copy_(raw.reshape(-1).view(torch.uint8))
        view = buf[:nbytes].view(src.dtype).view(raw.shape)
        kw[name] = view.T if name == "b" else view
        return buf[:out_bytes].view(torch.bfloat16).view(M, N)

    return make


# ------------------------------------------------------------------------------------------------- grouped GEMM
GE, GN, GK = 2, 64, 128


@cache
def _grouped_data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    tactic = GROUPED.candidates("mxfp4")[0]
    rows = 2 * tactic.tile_m
    a, a_sf = ref.mxfp4_quantize(torch.randn(rows, GK, generator=gen))
    w, w_sf = ref.mxfp4_quantize(torch.randn(GE * GN, GK, generator=gen))
    b_sf = torch.cat([ref.mxfp4_quantize(torch.randn(GN, GK, generator=gen))[1].reshape(1, -1)
                      for _ in range(GE)]).reshape(GE, -1, a_sf.shape[1])
    return {"a": a, "a_sf": a_sf.reshape(-1), "b": w.reshape(GE, GN, GK // 2), "b_sf": b_sf,
            "tiles": torch.tensor([0, 1], dtype=torch.int32)}


def _grouped(change: Callable[[dict[str, Any], str], None] | None = None) -> Build:
    def build(device: str) -> tuple[tuple, dict]:
        d = {k: v.to(device) for k, v in _grouped_data().items()}
        kw: dict[str, Any] = {"a": d["a"], "a_descale": d["a_sf"], "b": d["b"], "b_descale": d["b_sf"],
                              "expert_of_tile": d["tiles"], "tactic": GROUPED.candidates("mxfp4")[0], "fmt": "mxfp4"}
        if change is not None:
            change(kw, device)
        return (), kw

    return build


def _grouped_alias(name: str) -> Callable[[dict[str, Any], str], torch.Tensor]:
    def make(kw: dict[str, Any], device: str) -> torch.Tensor:
        rows = kw["a"].shape[0]
        src = kw[name]
        nbytes = src.numel() * src.element_size()
        out_bytes = rows * GN * 2
        buf = torch.zeros(max(nbytes, out_bytes), dtype=torch.uint8, device=device)
        buf[:nbytes].copy_(src.reshape(-1).view(torch.uint8))
        kw[name] = buf[:nbytes].view(src.dtype).view(src.shape)
        return buf[:out_bytes].view(torch.bfloat16).view(rows, GN)

    return make


def _grouped_cases() -> list[Case]:
    op = "grouped_mm_fp4"
    tactic = GROUPED.candidates("mxfp4")[0]
    rows = 2 * tactic.tile_m
    w4a8 = GROUPED.candidates("mxfp8_mxfp4")
    return [
        Case(op, "valid", _grouped(), LEGAL),
        Case(op, "valid with out", _grouped(_set(out=lambda kw, d: torch.empty(rows, GN, dtype=torch.bfloat16,
                                                                               device=d))), LEGAL),
        Case(op, "valid e8m0 scales", _grouped(_set(a_descale=lambda kw, d: kw["a_descale"].view(
            torch.float8_e8m0fnu))), LEGAL),
        _bad(op, "a list", _grouped(_set(a=[1, 2])), TypeError, "torch.Tensor"),
        _bad(op, "a float32", _grouped(_set(a=lambda kw, d: kw["a"].float())), TypeError, "uint8"),
        _bad(op, "a int16", _grouped(_set(a=lambda kw, d: kw["a"].to(torch.int16))), TypeError, "uint8"),
        _bad(op, "uint8 a without fmt", _grouped(_del("fmt")), TypeError, "fmt="),
        _bad(op, "unknown fmt", _grouped(_set(fmt="nvfp4")), ValueError, "fmt must be"),
        _bad(op, "fmt disagrees with dtype", _grouped(_set(a=lambda kw, d: kw["a"].view(torch.float8_e4m3fn))),
             ValueError, "disagrees"),
        _bad(op, "tactic None", _grouped(_set(tactic=None)), ValueError, "tactic"),
        _bad(op, "tactic name string", _grouped(_set(tactic=tactic.name)), ValueError, "tactic"),
        _bad(op, "W4A8 tactic for W4A4", _grouped(_set(tactic=w4a8[0] if w4a8[0] not in GROUPED.candidates("mxfp4")
                                                      else None)), ValueError, "tactic"),
        _bad(op, "b float", _grouped(_set(b=lambda kw, d: kw["b"].float())), TypeError, "b must have dtype"),
        _bad(op, "b 2-D", _grouped(_set(b=lambda kw, d: kw["b"].reshape(GE * GN, -1))), ValueError, "3-D"),
        _bad(op, "a 3-D", _grouped(_set(a=lambda kw, d: kw["a"].unsqueeze(0))), ValueError, "2-D"),
        _bad(op, "K mismatch", _grouped(_set(b=lambda kw, d: kw["b"][:, :, :32].contiguous())), ValueError,
             "K mismatch"),
        _bad(op, "rows not a tile multiple", _grouped(_set(a=lambda kw, d: kw["a"][:rows - 1])), ValueError,
             "multiple of"),
        _bad(op, "zero rows", _grouped(_set(a=lambda kw, d: kw["a"][:0])), ValueError, "positive multiple"),
        _bad(op, "N not multiple of 8", _grouped(_set(b=lambda kw, d: kw["b"][:, :60].contiguous())), ValueError,
             "N % 8"),
        _bad(op, "a non-contiguous", _grouped(_set(a=lambda kw, d: _noncontig(kw["a"]))), ValueError, "contiguous"),
        _bad(op, "a transposed", _grouped(_set(a=lambda kw, d: kw["a"].T.contiguous().T)), ValueError,
             "contiguous"),
        _bad(op, "b non-contiguous", _grouped(_set(b=lambda kw, d: _noncontig(kw["b"]))), ValueError, "contiguous"),
        _bad(op, "b expert-strided", _grouped(_set(b=lambda kw, d: torch.cat([kw["b"]] * 2)[::2])), ValueError,
             "contiguous"),
        _bad(op, "a_descale float", _grouped(_set(a_descale=lambda kw, d: kw["a_descale"].float())), TypeError,
             "a_descale"),
        _bad(op, "a_descale e4m3", _grouped(_set(a_descale=lambda kw, d: kw["a_descale"].view(torch.float8_e4m3fn))),
             TypeError, "a_descale"),
        _bad(op, "a_descale too few", _grouped(_set(a_descale=lambda kw, d: kw["a_descale"][:10])), ValueError,
             "a_descale must have"),
        _bad(op, "b_descale one expert", _grouped(_set(b_descale=lambda kw, d: kw["b_descale"][:1])), ValueError,
             "b_descale must have"),
        _bad(op, "b_descale non-contiguous", _grouped(_set(b_descale=lambda kw, d: _noncontig(kw["b_descale"]))),
             ValueError, "contiguous"),
        _bad(op, "expert_of_tile int64", _grouped(_set(expert_of_tile=lambda kw, d: kw["expert_of_tile"].long())),
             TypeError, "expert_of_tile"),
        _bad(op, "expert_of_tile too short", _grouped(_set(expert_of_tile=lambda kw, d: kw["expert_of_tile"][:1])),
             ValueError, "expert_of_tile"),
        _bad(op, "expert_of_tile list", _grouped(_set(expert_of_tile=[0, 1])), TypeError, "expert_of_tile"),
        _bad(op, "expert_of_tile 2-D", _grouped(_set(expert_of_tile=lambda kw, d: kw["expert_of_tile"].view(1, 2))),
             ValueError, "expert_of_tile"),
        _bad(op, "out_dtype fp32", _grouped(_set(out_dtype=torch.float32)), ValueError, "out_dtype"),
        _bad(op, "out wrong shape", _grouped(_set(out=lambda kw, d: torch.empty(rows, GN + 8, dtype=torch.bfloat16,
                                                                              device=d))), ValueError, "shape"),
        _bad(op, "out wrong dtype", _grouped(_set(out=lambda kw, d: torch.empty(rows, GN, dtype=torch.float16,
                                                                              device=d))), TypeError, "out"),
        _bad(op, "out transposed", _grouped(_set(out=lambda kw, d: torch.empty(GN, rows, dtype=torch.bfloat16,
                                                                             device=d).T)), ValueError, "contiguous"),
        _bad(op, "out aliases a", _grouped(_set(out=_grouped_alias("a"))), ValueError, "overlaps a"),
        _bad(op, "out aliases b", _grouped(_set(out=_grouped_alias("b"))), ValueError, "overlaps b"),
        _bad(op, "out aliases expert_of_tile", _grouped(_set(out=_grouped_alias("expert_of_tile"))), ValueError,
             "overlaps expert_of_tile"),
        _bad(op, "b on meta", _grouped(_set(b=lambda kw, d: kw["b"].to("meta"))), ValueError, "one CUDA device"),
        _bad(op, "expert_of_tile on meta", _grouped(_set(expert_of_tile=lambda kw, d: kw["expert_of_tile"].to(
            "meta"))), ValueError, "one CUDA device"),
    ]


# -------------------------------------------------------------------------------------------------------- MoE
ME, MH, MI, MT, MK = 4, 64, 64, 5, 2  # experts, hidden, intermediate (padded to 128 by the preparation), tokens, k


@cache
def _moe_raw() -> dict[str, torch.Tensor]:
    return make_weights(ME, MH, MI, seed=3)


@cache
def _moe_weights(device: str, act: str = "mxfp4", interleaved: bool = True) -> PreparedMoEWeights:
    raw = {k: v.to(device) for k, v in _moe_raw().items()}
    return prepare_gpt_oss_weights(**raw, pad_to=128, interleaved=interleaved, up_first=not interleaved, act=act)


def _moe_inputs(device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(MT, MH, generator=gen).bfloat16()
    logits = torch.randn(MT, ME, generator=gen)
    ids = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]], dtype=torch.int32)
    weights = torch.full((MT, MK), 0.5)
    return {k: v.to(device) for k, v in
            {"hidden": hidden, "logits": logits, "ids": ids, "topk_weights": weights}.items()}


def _fm(change: Callable[[dict[str, Any], str], None] | None = None, *, ids: bool = False, act: str = "mxfp4") -> Build:
    def build(device: str) -> tuple[tuple, dict]:
        d = _moe_inputs(device)
        kw: dict[str, Any] = {"hidden": d["hidden"], "weights": _moe_weights(device, act)}
        if ids:
            kw["routing"] = (d["ids"], d["topk_weights"])
        else:
            kw.update(routing=d["logits"], top_k=MK)
        if change is not None:
            change(kw, device)
        return (), kw

    return build


def _ids(f: Callable[[torch.Tensor, str], Any]) -> Callable[[dict[str, Any], str], Any]:
    """A change of the precomputed ids (routing[0])."""
    def value(kw: dict[str, Any], device: str) -> Any:
        return (f(kw["routing"][0], device), kw["routing"][1])

    return value


def _tw(f: Callable[[torch.Tensor, str], Any]) -> Callable[[dict[str, Any], str], Any]:
    """A change of the precomputed routing weights (routing[1])."""
    def value(kw: dict[str, Any], device: str) -> Any:
        return (kw["routing"][0], f(kw["routing"][1], device))

    return value


def _fused_moe_cases() -> list[Case]:
    op = "fused_moe"
    empty = _set(hidden=lambda kw, d: kw["hidden"][:0], routing=lambda kw, d: kw["routing"][:0])
    empty_ids = _set(hidden=lambda kw, d: kw["hidden"][:0],
                     routing=lambda kw, d: (kw["routing"][0][:0], kw["routing"][1][:0]))
    return [
        Case(op, "valid logits", _fm(), LEGAL),
        Case(op, "valid ids", _fm(ids=True), LEGAL),
        Case(op, "valid W4A8", _fm(act="mxfp8"), LEGAL),
        Case(op, "valid fp32 hidden", _fm(_set(hidden=lambda kw, d: kw["hidden"].float())), LEGAL),
        Case(op, "valid per-expert alpha", _fm(_set(alpha=lambda kw, d: torch.full((ME,), 1.702, device=d))), LEGAL),
        Case(op, "valid int64 ids", _fm(_set(routing=_ids(lambda t, d: t.long())), ids=True), LEGAL),
        Case(op, "empty batch T=0 (logits)", _fm(empty), LEGAL),
        Case(op, "empty batch T=0 (ids)", _fm(empty_ids, ids=True), LEGAL),
        Case(op, "empty batch T=0 kernels", _fm(_set(impl="kernels", **{
            "hidden": lambda kw, d: kw["hidden"][:0], "routing": lambda kw, d: kw["routing"][:0]})), LEGAL,
            where="cuda"),
        _bad(op, "weights a dict", _fm(_set(weights=lambda kw, d: dict(_moe_raw()))), TypeError,
             "prepare_gpt_oss_weights"),
        _bad(op, "weights None", _fm(_set(weights=None)), TypeError, "prepare_gpt_oss_weights"),
        _bad(op, "weights act unknown", _fm(_set(weights=lambda kw, d: replace(kw["weights"], act="nvfp4"))),
             ValueError, "act="),
        _bad(op, "hidden list", _fm(_set(hidden=[[0.0] * MH] * MT)), TypeError, "hidden"),
        _bad(op, "hidden int32", _fm(_set(hidden=lambda kw, d: kw["hidden"].to(torch.int32))), TypeError, "hidden"),
        _bad(op, "hidden fp8", _fm(_set(hidden=lambda kw, d: kw["hidden"].to(torch.float8_e4m3fn))), TypeError,
             "hidden"),
        _bad(op, "hidden 1-D", _fm(_set(hidden=lambda kw, d: kw["hidden"].reshape(-1))), ValueError, "hidden must be"),
        _bad(op, "hidden 3-D", _fm(_set(hidden=lambda kw, d: kw["hidden"].unsqueeze(0))), ValueError,
             "hidden must be"),
        _bad(op, "hidden padded width", _fm(_set(hidden=lambda kw, d: torch.zeros(MT, 128, dtype=torch.bfloat16,
                                                                                device=d))), ValueError,
             "hidden must be"),
        _bad(op, "hidden transposed", _fm(_set(hidden=lambda kw, d: kw["hidden"].T.contiguous().T)), ValueError,
             "contiguous"),
        _bad(op, "hidden non-contiguous", _fm(_set(hidden=lambda kw, d: _noncontig(kw["hidden"]))), ValueError,
             "contiguous"),
        _bad(op, "activation relu", _fm(_set(activation="relu")), ValueError, "activation"),
        _bad(op, "impl unknown", _fm(_set(impl="cuda")), ValueError, "impl"),
        _bad(op, "logits wrong E", _fm(_set(routing=lambda kw, d: kw["routing"][:, :3])), ValueError, "router logits"),
        _bad(op, "logits wrong T", _fm(_set(routing=lambda kw, d: kw["routing"][:3])), ValueError, "router logits"),
        _bad(op, "logits int", _fm(_set(routing=lambda kw, d: kw["routing"].to(torch.int32))), TypeError,
             "router logits"),
        _bad(op, "logits without top_k", _fm(_del("top_k")), ValueError, "top_k"),
        _bad(op, "top_k 0", _fm(_set(top_k=0)), ValueError, "top_k"),
        _bad(op, "top_k negative", _fm(_set(top_k=-1)), ValueError, "top_k"),
        _bad(op, "top_k > E", _fm(_set(top_k=ME + 1)), ValueError, "top_k"),
        _bad(op, "top_k bool", _fm(_set(top_k=True)), TypeError, "top_k"),
        _bad(op, "top_k float", _fm(_set(top_k=2.0)), TypeError, "top_k"),
        _bad(op, "top_k disagrees with ids", _fm(_set(top_k=3), ids=True), ValueError, "top_k"),
        _bad(op, "routing None", _fm(_set(routing=None)), TypeError, "routing"),
        _bad(op, "routing triple", _fm(_set(routing=lambda kw, d: (*kw["routing"], kw["routing"][0])), ids=True),
             TypeError, "routing"),
        _bad(op, "ids float", _fm(_set(routing=_ids(lambda t, d: t.float())), ids=True), TypeError, "topk_ids"),
        _bad(op, "ids int16", _fm(_set(routing=_ids(lambda t, d: t.to(torch.int16))), ids=True), TypeError,
             "topk_ids"),
        _bad(op, "ids list", _fm(_set(routing=_ids(lambda t, d: t.tolist())), ids=True), TypeError, "tensors"),
        _bad(op, "weights int", _fm(_set(routing=_tw(lambda t, d: t.long())), ids=True), TypeError, "topk_weights"),
        _bad(op, "ids 1-D", _fm(_set(routing=lambda kw, d: (kw["routing"][0][:, 0], kw["routing"][1][:, 0])),
                                ids=True), ValueError, "topk_ids"),
        _bad(op, "ids zero columns", _fm(_set(routing=lambda kw, d: (kw["routing"][0][:, :0], kw["routing"][1][:, :0])),
                                         ids=True), ValueError, "k >= 1"),
        _bad(op, "ids more columns than experts", _fm(_set(routing=lambda kw, d: (
            kw["routing"][0].repeat(1, 3), kw["routing"][1].repeat(1, 3))), ids=True), ValueError, "exceeds"),
        _bad(op, "weights shape", _fm(_set(routing=_tw(lambda t, d: t[:, :1])), ids=True), ValueError,
             "topk_weights"),
        _bad(op, "id = E", _fm(_set(routing=_ids(lambda t, d: t.clone().fill_(ME))), ids=True), ValueError,
             r"outside \[0, 4\)"),
        _bad(op, "id negative", _fm(_set(routing=_ids(lambda t, d: t.clone().fill_(-1))), ids=True), ValueError,
             r"outside \[0, 4\)"),
        _bad(op, "id huge", _fm(_set(routing=_ids(lambda t, d: t.long().clone().fill_(2**40))), ids=True),
             ValueError, "outside"),
        _bad(op, "validate_ids int", _fm(_set(validate_ids=1), ids=True), TypeError, "validate_ids"),
        _bad(op, "out_dtype int32", _fm(_set(out_dtype=torch.int32)), TypeError, "out_dtype"),
        _bad(op, "out_dtype string", _fm(_set(out_dtype="bf16")), TypeError, "out_dtype"),
        _bad(op, "alpha string", _fm(_set(alpha="1.7")), TypeError, "alpha"),
        _bad(op, "limit bool", _fm(_set(limit=True)), TypeError, "limit"),
        _bad(op, "alpha tensor wrong length", _fm(_set(alpha=lambda kw, d: torch.ones(ME + 1, device=d))), ValueError,
             "alpha"),
        _bad(op, "beta int tensor", _fm(_set(beta=lambda kw, d: torch.ones(ME, dtype=torch.int32, device=d))),
             TypeError, "beta"),
        _bad(op, "alpha tensor on meta", _fm(_set(alpha=lambda kw, d: torch.ones(ME, device="meta"))), ValueError,
             "alpha"),
        _bad(op, "expert_offset negative", _fm(_set(expert_offset=-1)), ValueError, "local experts"),
        _bad(op, "expert_offset bool", _fm(_set(expert_offset=True)), TypeError, "expert_offset"),
        _bad(op, "num_global_experts too small", _fm(_set(num_global_experts=ME - 1), ids=True), ValueError,
             "local experts"),
        _bad(op, "num_global_experts float", _fm(_set(num_global_experts=8.0), ids=True), TypeError,
             "num_global_experts"),
        _bad(op, "fused_epilogue on reference", _fm(_set(impl="reference", fused_epilogue=True)), ValueError,
             "fused_epilogue"),
        _bad(op, "tactic a string", _fm(_set(tactic="not a tactic")), ValueError, "tactic"),
        _bad(op, "logits on meta", _fm(_set(routing=lambda kw, d: kw["routing"].to("meta"))), ValueError,
             "one device"),
        _bad(op, "kernels on CPU", _fm(_set(impl="kernels")), ValueError, "CUDA device"),
        _bad(op, "ids out of range, kernels", _fm(_set(impl="kernels", routing=_ids(lambda t, d: t.clone().fill_(ME))),
                                                  ids=True), ValueError, "outside", where="cuda"),
        _bad(op, "logits non-contiguous, kernels", _fm(_set(impl="kernels", routing=lambda kw, d: _noncontig(
            kw["routing"]))), ValueError, "contiguous", where="cuda"),
    ]


def _cfm_inputs(device: str, num_t: int = MT) -> dict[str, Any]:
    w = _moe_weights(device, "mxfp8", False)
    gen = torch.Generator().manual_seed(5)
    x = torch.zeros(num_t, w.hidden_size_padded)
    x[:, :MH] = torch.randn(num_t, MH, generator=gen)
    xq, xsf = ref.mxfp8_quantize(x, True, 32)
    d = _moe_inputs("cpu")
    return {
        "input": xq.to(device), "token_selected_experts": d["ids"][:num_t].to(device),
        "token_final_scales": d["topk_weights"][:num_t].to(device), "fc1_expert_weights": w.w13,
        "fc2_expert_weights": w.w2, "output_dtype": torch.bfloat16, "quant_scales": w.flashinfer_quant_scales(),
        "fc1_expert_biases": w.w13_bias, "fc2_expert_biases": w.w2_bias, "input_sf": xsf.to(device),
        "swiglu_alpha": torch.full((ME,), 1.702, device=device), "swiglu_beta": torch.ones(ME, device=device),
        "swiglu_limit": torch.full((ME,), 7.0, device=device), "use_mxfp8_act_scaling": True,
    }


def _cfm(change: Callable[[dict[str, Any], str], None] | None = None, num_t: int = MT) -> Build:
    def build(device: str) -> tuple[tuple, dict]:
        kw = _cfm_inputs(device, num_t)
        if change is not None:
            change(kw, device)
        return (), kw

    return build


def _qs(i: int, f: Callable[[torch.Tensor, str], Any]) -> Callable[[dict[str, Any], str], Any]:
    def value(kw: dict[str, Any], device: str) -> Any:
        qs = list(kw["quant_scales"])
        qs[i] = f(qs[i], device)
        return qs

    return value


def _cfm_alias(name: str) -> Callable[[dict[str, Any], str], torch.Tensor]:
    """An `output` [T, Hp] bf16 sharing bytes with argument `name` (copied into the front of one buffer)."""
    def make(kw: dict[str, Any], device: str) -> torch.Tensor:
        src = kw[name]
        hp = kw["fc2_expert_weights"].shape[1]
        rows = kw["input"].shape[0]
        nbytes, out_bytes = src.numel() * src.element_size(), rows * hp * 2
        buf = torch.zeros(max(nbytes, out_bytes), dtype=torch.uint8, device=device)
        buf[:nbytes].copy_(src.reshape(-1).view(torch.uint8))
        kw[name] = buf[:nbytes].view(src.dtype).view(src.shape)
        return buf[:out_bytes].view(torch.bfloat16).view(rows, hp)

    return make


def _cutlass_fused_moe_cases() -> list[Case]:
    op = "cutlass_fused_moe"
    hp = 128
    return [
        Case(op, "valid", _cfm(), LEGAL),
        Case(op, "valid with output", _cfm(_set(output=lambda kw, d: torch.empty(MT, hp, dtype=torch.bfloat16,
                                                                                 device=d))), LEGAL),
        Case(op, "valid linear input_sf", _cfm(_set(
            swizzled_input_sf=False, input_sf=lambda kw, d: ref.mxfp8_quantize(
                kw["input"].float().cpu(), False, 32)[1].to(d))), LEGAL),
        Case(op, "valid no biases", _cfm(_set(fc1_expert_biases=None, fc2_expert_biases=None)), LEGAL),
        Case(op, "empty batch T=0", _cfm(num_t=0), LEGAL),
        _bad(op, "input list", _cfm(_set(input=[[0]])), TypeError, "input"),
        _bad(op, "input bf16", _cfm(_set(input=lambda kw, d: kw["input"].bfloat16())), NotImplementedError,
             "W4A8 convention"),
        _bad(op, "use_mxfp8_act_scaling False", _cfm(_set(use_mxfp8_act_scaling=False)), NotImplementedError,
             "use_mxfp8_act_scaling"),
        _bad(op, "min_latency_mode", _cfm(_set(min_latency_mode=True)), NotImplementedError, "min_latency_mode"),
        _bad(op, "enable_alltoall", _cfm(_set(enable_alltoall=True)), NotImplementedError, "enable_alltoall"),
        _bad(op, "deepseek fp8", _cfm(_set(use_deepseek_fp8_block_scale=True)), NotImplementedError, "deepseek"),
        _bad(op, "w4 group scaling", _cfm(_set(use_w4_group_scaling=True)), NotImplementedError, "group_scaling"),
        _bad(op, "cluster_size 2", _cfm(_set(cluster_size=2)), NotImplementedError, "cluster_size"),
        _bad(op, "nvfp4_4over6", _cfm(_set(nvfp4_4over6=True)), NotImplementedError, "4over6"),
        _bad(op, "activation Gelu", _cfm(_set(activation_type=0)), NotImplementedError, "activation_type"),
        _bad(op, "activation string", _cfm(_set(activation_type="Swiglu")), TypeError, "activation_type"),
        _bad(op, "backend unknown", _cfm(_set(backend="trtllm")), ValueError, "backend"),
        _bad(op, "output_dtype fp32", _cfm(_set(output_dtype=torch.float32)), ValueError, "output_dtype"),
        _bad(op, "input 3-D", _cfm(_set(input=lambda kw, d: kw["input"].unsqueeze(0))), ValueError, "input"),
        _bad(op, "input unpadded width", _cfm(_set(input=lambda kw, d: kw["input"][:, :64].contiguous())), ValueError,
             "padded hidden"),
        _bad(op, "input non-contiguous", _cfm(_set(input=lambda kw, d: _noncontig(kw["input"]))), ValueError,
             "contiguous"),
        _bad(op, "fc1 int8", _cfm(_set(fc1_expert_weights=lambda kw, d: kw["fc1_expert_weights"].view(torch.int8))),
             TypeError, "fc1_expert_weights"),
        _bad(op, "fc1 wrong experts", _cfm(_set(fc1_expert_weights=lambda kw, d: kw["fc1_expert_weights"][:2])),
             ValueError, "fc1_expert_weights"),
        _bad(op, "fc2 2-D", _cfm(_set(fc2_expert_weights=lambda kw, d: kw["fc2_expert_weights"][0])), ValueError,
             "fc2_expert_weights"),
        _bad(op, "fc1 transposed", _cfm(_set(fc1_expert_weights=lambda kw, d: kw["fc1_expert_weights"].transpose(
            1, 2).contiguous().transpose(1, 2))), ValueError, "contiguous"),
        _bad(op, "ids float", _cfm(_set(token_selected_experts=lambda kw, d: kw["token_selected_experts"].float())),
             TypeError, "token_selected_experts"),
        _bad(op, "ids wrong T", _cfm(_set(token_selected_experts=lambda kw, d: kw["token_selected_experts"][:2])),
             ValueError, "token_final_scales"),
        _bad(op, "scales shape", _cfm(_set(token_final_scales=lambda kw, d: kw["token_final_scales"][:, :1]
                                           .contiguous())), ValueError, "token_final_scales"),
        _bad(op, "scales int", _cfm(_set(token_final_scales=lambda kw, d: kw["token_final_scales"].long())),
             TypeError, "token_final_scales"),
        _bad(op, "id = E", _cfm(_set(token_selected_experts=lambda kw, d: kw["token_selected_experts"].clone().fill_(
            ME))), ValueError, "outside"),
        _bad(op, "id negative", _cfm(_set(token_selected_experts=lambda kw, d: kw["token_selected_experts"].clone()
                                          .fill_(-3))), ValueError, "outside"),
        _bad(op, "top_k > experts", _cfm(_set(token_selected_experts=lambda kw, d: kw["token_selected_experts"].repeat(
            1, 3), token_final_scales=lambda kw, d: kw["token_final_scales"].repeat(1, 3))), ValueError, "top_k"),
        _bad(op, "ep_rank >= ep_size", _cfm(_set(ep_size=2, ep_rank=2)), ValueError, "ep_rank"),
        _bad(op, "ep_rank float", _cfm(_set(ep_size=2, ep_rank=0.5)), TypeError, "ep_rank"),
        _bad(op, "ep_size bool", _cfm(_set(ep_size=True)), TypeError, "ep_size"),
        _bad(op, "tp_size 0", _cfm(_set(tp_size=0)), ValueError, "tp_size"),
        _bad(op, "quant_scales three", _cfm(_set(quant_scales=lambda kw, d: kw["quant_scales"][:3])), ValueError,
             "quant_scales"),
        _bad(op, "quant_scales None", _cfm(_set(quant_scales=None)), ValueError, "quant_scales"),
        _bad(op, "fc1 scales uint8", _cfm(_set(quant_scales=_qs(0, lambda t, d: t.view(torch.uint8)))), TypeError,
             "quant_scales"),
        _bad(op, "fc2 scales wrong shape", _cfm(_set(quant_scales=_qs(2, lambda t, d: t[:2]))), ValueError,
             "quant_scales"),
        _bad(op, "global scale per row", _cfm(_set(quant_scales=_qs(1, lambda t, d: torch.ones(ME + 1, device=d)))),
             ValueError, "fc1 global"),
        _bad(op, "global scale fp16", _cfm(_set(quant_scales=_qs(3, lambda t, d: t.half()))), TypeError, "fc2 global"),
        _bad(op, "fc1 bias wrong shape", _cfm(_set(fc1_expert_biases=lambda kw, d: kw["fc1_expert_biases"][:, :8]
                                                   .contiguous())), ValueError, "fc1_expert_biases"),
        _bad(op, "fc2 bias int", _cfm(_set(fc2_expert_biases=lambda kw, d: kw["fc2_expert_biases"].long())), TypeError,
             "fc2_expert_biases"),
        _bad(op, "swiglu_alpha wrong length", _cfm(_set(swiglu_alpha=lambda kw, d: torch.ones(ME - 1, device=d))),
             ValueError, "swiglu_alpha"),
        _bad(op, "swiglu_limit float", _cfm(_set(swiglu_limit=7.0)), TypeError, "swiglu_limit"),
        _bad(op, "input_sf missing", _cfm(_set(input_sf=None)), ValueError, "input_sf"),
        _bad(op, "input_sf list", _cfm(_set(input_sf=[1, 2])), TypeError, "input_sf"),
        _bad(op, "input_sf too few", _cfm(_set(input_sf=lambda kw, d: kw["input_sf"][:8])), ValueError, "input_sf"),
        _bad(op, "input_sf non-contiguous", _cfm(_set(input_sf=lambda kw, d: _noncontig(kw["input_sf"]))),
             ValueError, "input_sf must be contiguous"),
        _bad(op, "input_sf linear for swizzled", _cfm(_set(swizzled_input_sf=False)), ValueError, "input_sf"),
        _bad(op, "output wrong dtype", _cfm(_set(output=lambda kw, d: torch.empty(MT, hp, device=d))), ValueError,
             "output"),
        _bad(op, "output wrong shape", _cfm(_set(output=lambda kw, d: torch.empty(MT, 64, dtype=torch.bfloat16,
                                                                                  device=d))), ValueError, "output"),
        _bad(op, "output transposed", _cfm(_set(output=lambda kw, d: torch.empty(hp, MT, dtype=torch.bfloat16,
                                                                                 device=d).T)), ValueError, "output"),
        _bad(op, "output aliases input", _cfm(_set(output=_cfm_alias("input"))), ValueError, "overlaps input"),
        _bad(op, "output aliases fc2 bias", _cfm(_set(output=_cfm_alias("fc2_expert_biases"))), ValueError,
             "overlaps fc2_expert_biases"),
        _bad(op, "output on meta", _cfm(_set(output=lambda kw, d: torch.empty(MT, hp, dtype=torch.bfloat16,
                                                                              device="meta"))), ValueError,
             "one device"),
        _bad(op, "fc2 on meta", _cfm(_set(fc2_expert_weights=lambda kw, d: kw["fc2_expert_weights"].to("meta"))),
             ValueError, "one device"),
    ]


# ---------------------------------------------------------------------------------------------- weight preparation
def _pw(change: Callable[[dict[str, Any], str], None] | None = None) -> Build:
    def build(device: str) -> tuple[tuple, dict]:
        kw: dict[str, Any] = {k: v.to(device) for k, v in _moe_raw().items()}
        if change is not None:
            change(kw, device)
        return (), kw

    return build


def _prepare_cases() -> list[Case]:
    op = "prepare_gpt_oss_weights"
    cases = [
        Case(op, "valid", _pw(), LEGAL),
        Case(op, "valid halves up_first", _pw(_set(interleaved=False, up_first=True)), LEGAL),
        Case(op, "valid W4A8", _pw(_set(act="mxfp8")), LEGAL),
        Case(op, "valid no biases", _pw(_set(w13_bias=None, w2_bias=None)), LEGAL),
        Case(op, "valid e8m0 scales", _pw(_set(w13_scale=lambda kw, d: kw["w13_scale"].view(torch.float8_e8m0fnu))),
             LEGAL),
        Case(op, "valid pad_to 32", _pw(_set(pad_to=32)), LEGAL),
        _bad(op, "pad_to 0", _pw(_set(pad_to=0)), ValueError, "pad_to"),
        _bad(op, "pad_to negative", _pw(_set(pad_to=-128)), ValueError, "pad_to"),
        _bad(op, "pad_to 48", _pw(_set(pad_to=48)), ValueError, "pad_to"),
        _bad(op, "pad_to 32 for W4A8", _pw(_set(pad_to=32, act="mxfp8")), ValueError, "pad_to"),
        _bad(op, "pad_to bool", _pw(_set(pad_to=True)), TypeError, "pad_to"),
        _bad(op, "pad_to float", _pw(_set(pad_to=128.0)), TypeError, "pad_to"),
        _bad(op, "interleaved int", _pw(_set(interleaved=1)), TypeError, "interleaved"),
        _bad(op, "up_first None", _pw(_set(up_first=None)), TypeError, "up_first"),
        _bad(op, "up_first with interleaved", _pw(_set(up_first=True)), ValueError, "up_first"),
        _bad(op, "act bf16", _pw(_set(act="bf16")), ValueError, "act"),
        _bad(op, "act None", _pw(_set(act=None)), ValueError, "act"),
    ]
    for name in ("w13", "w13_scale", "w2", "w2_scale"):
        cases += [
            _bad(op, f"{name} list", _pw(_set(**{name: [[0]]})), TypeError, name),
            _bad(op, f"{name} None", _pw(_set(**{name: None})), TypeError, name),
            _bad(op, f"{name} int8", _pw(_set(**{name: lambda kw, d, n=name: kw[n].view(torch.int8)})), TypeError,
                 name),
            _bad(op, f"{name} float", _pw(_set(**{name: lambda kw, d, n=name: kw[n].float()})), TypeError, name),
            _bad(op, f"{name} 2-D", _pw(_set(**{name: lambda kw, d, n=name: kw[n][0]})), ValueError, "3-D"),
            _bad(op, f"{name} one expert fewer", _pw(_set(**{name: lambda kw, d, n=name: kw[n][1:]})), ValueError,
                 "must have shape" if name != "w13" else "shape"),
        ]
    cases += [
        _bad(op, "w13 odd rows", _pw(_set(w13=lambda kw, d: kw["w13"][:, 1:])), ValueError, "2\\*I rows|shape"),
        _bad(op, "hidden not a multiple of 32", _pw(_set(w13=lambda kw, d: kw["w13"][:, :, :8])), ValueError,
             "multiples of 32"),
        _bad(op, "w2 wrong hidden", _pw(_set(w2=lambda kw, d: kw["w2"][:, :32])), ValueError, "w2 must have shape"),
        _bad(op, "w2_scale wrong blocks", _pw(_set(w2_scale=lambda kw, d: kw["w2_scale"][:, :, :1])), ValueError,
             "w2_scale"),
        _bad(op, "w13_bias wrong shape", _pw(_set(w13_bias=lambda kw, d: kw["w13_bias"][:, :3])), ValueError,
             "w13_bias"),
        _bad(op, "w2_bias int", _pw(_set(w2_bias=lambda kw, d: kw["w2_bias"].long())), TypeError, "w2_bias"),
        _bad(op, "w13_bias list", _pw(_set(w13_bias=[0.0])), TypeError, "w13_bias"),
        _bad(op, "w2 on meta", _pw(_set(w2=lambda kw, d: kw["w2"].to("meta"))), ValueError, "one device"),
        _bad(op, "w13_bias on meta", _pw(_set(w13_bias=lambda kw, d: kw["w13_bias"].to("meta"))), ValueError,
             "one device"),
    ]
    return cases


# ------------------------------------------------------------------------------------------------------ quantizers
def _q(shape: tuple[int, ...] = (8, 64), dtype: torch.dtype = torch.bfloat16, **kw: Any) -> Build:
    def build(device: str) -> tuple[tuple, dict]:
        gen = torch.Generator().manual_seed(6)
        x = torch.randn(*shape, generator=gen).to(dtype).to(device) if dtype.is_floating_point else \
            torch.randint(-4, 4, shape, generator=gen).to(dtype).to(device)
        args = {k: (v(x, device) if callable(v) else v) for k, v in kw.items()}
        a = args.pop("a", x)
        return (a,), args

    return build


def _quantizer_common(op: str, block: int) -> list[Case]:
    """Input cases every quantizer shares (the first positional argument)."""
    return [
        Case(op, "valid bf16", _q(), LEGAL),
        Case(op, "valid fp16", _q(dtype=torch.float16), LEGAL),
        Case(op, "valid fp32", _q(dtype=torch.float32), LEGAL),
        Case(op, "valid 3-D", _q((2, 4, 64)), LEGAL),
        Case(op, "valid empty batch M=0", _q((0, 64)), LEGAL),
        Case(op, "valid column-major", _q((64, 64), a=lambda x, d: x.T.contiguous().T), LEGAL),
        Case(op, "valid non-contiguous rows", _q(a=lambda x, d: torch.cat([x, x], 0)[::2]), LEGAL),
        Case(op, "valid non-contiguous columns", _q(a=lambda x, d: _noncontig(x)), LEGAL),
        _bad(op, "list", _q(a=lambda x, d: x.tolist()), TypeError, "Tensor"),
        _bad(op, "None", _q(a=None), TypeError, "Tensor"),
        _bad(op, "int32", _q(dtype=torch.int32), TypeError, "dtype"),
        _bad(op, "uint8", _q(dtype=torch.uint8), TypeError, "dtype"),
        _bad(op, "bool", _q(a=lambda x, d: x > 0), TypeError, "dtype"),
        _bad(op, "float64", _q(dtype=torch.float64), TypeError, "dtype"),
        _bad(op, "float8 input", _q(a=lambda x, d: x.to(torch.float8_e4m3fn)), TypeError, "dtype"),
        _bad(op, "complex", _q(a=lambda x, d: x.float().to(torch.complex64)), TypeError, "dtype"),
        _bad(op, "1-D", _q((64,)), ValueError, "2-D"),
        _bad(op, "0-D", _q(a=lambda x, d: x[0, 0]), ValueError, "2-D"),
        _bad(op, "K not a block multiple", _q((8, block + 8)), ValueError, "multiple"),
        _bad(op, "K = 0", _q((8, 0)), ValueError, "positive multiple"),
        _bad(op, "K = 1", _q((8, 1)), ValueError, "multiple"),
        _bad(op, "K = block - 1", _q((4, block - 1)), ValueError, "multiple"),
        _bad(op, "K odd large", _q((2, 1001)), ValueError, "multiple"),
        _bad(op, "K = 2 blocks + 1", _q((3, 2 * block + 1)), ValueError, "multiple"),
        _bad(op, "numpy array", _q(a=lambda x, d: x.float().cpu().numpy()), TypeError, "Tensor"),
        _bad(op, "python float", _q(a=1.5), TypeError, "Tensor"),
        _bad(op, "string", _q(a="x"), TypeError, "Tensor"),
        _bad(op, "int64", _q(dtype=torch.int64), TypeError, "dtype"),
        _bad(op, "int8", _q(dtype=torch.int8), TypeError, "dtype"),
        _bad(op, "float8_e5m2 input", _q(a=lambda x, d: x.to(torch.float8_e5m2)), TypeError, "dtype"),
        _bad(op, "empty 1-D", _q((0,)), ValueError, "2-D"),
    ]


def _mxfp4_cases() -> list[Case]:
    op = "mxfp4_quantize"
    return _quantizer_common(op, 32) + [
        Case(op, "valid linear layout", _q(sfLayout="layout_linear"), LEGAL),
        Case(op, "valid 8x4 layout", _q(sfLayout=1), LEGAL),
        Case(op, "valid floor recipe", _q(recipe="floor"), LEGAL),
        Case(op, "valid cute-dsl backend", _q(backend="cute-dsl"), LEGAL),
        _bad(op, "K = 16", _q((8, 16)), ValueError, "multiple"),
        _bad(op, "backend unknown", _q(backend="triton"), ValueError, "backend"),
        _bad(op, "backend None", _q(backend=None), ValueError, "backend"),
        _bad(op, "layout unknown name", _q(sfLayout="layout_4x4"), (ValueError, TypeError), "layout"),
        _bad(op, "layout int out of range", _q(sfLayout=7), (ValueError, TypeError), "layout"),
        _bad(op, "layout negative", _q(sfLayout=-1), (ValueError, TypeError), "layout"),
        _bad(op, "layout bool", _q(sfLayout=True), (ValueError, TypeError), "layout"),
        _bad(op, "layout float", _q(sfLayout=0.0), (ValueError, TypeError), "layout"),
        _bad(op, "recipe unknown", _q(recipe="rtz"), ValueError, "recipe"),
        _bad(op, "recipe None", _q(recipe=None), ValueError, "recipe"),
        _bad(op, "unknown keyword", _q(alignment=32), TypeError, "alignment"),
    ]


def _mxfp8_cases() -> list[Case]:
    op = "mxfp8_quantize"
    return _quantizer_common(op, 32) + [
        Case(op, "valid linear", _q(is_sf_swizzled_layout=False), LEGAL),
        Case(op, "valid alignment 64", _q((8, 96), alignment=64), LEGAL),
        Case(op, "valid explicit 8x4", _q(sf_swizzle_layout="layout_8x4"), LEGAL),
        Case(op, "valid floor recipe", _q(recipe="floor"), LEGAL),
        _bad(op, "K = 16", _q((8, 16)), ValueError, "multiple"),
        Case(op, "valid alignment 16", _q((8, 32), alignment=16), LEGAL),
        _bad(op, "alignment 48", _q((8, 32), alignment=48), ValueError, "alignment"),
        _bad(op, "alignment 40", _q((8, 64), alignment=40), ValueError, "alignment"),
        _bad(op, "alignment 0", _q(alignment=0), ValueError, "alignment"),
        _bad(op, "alignment negative", _q(alignment=-32), ValueError, "alignment"),
        _bad(op, "alignment bool", _q(alignment=True), (ValueError, TypeError), "alignment"),
        _bad(op, "alignment float", _q(alignment=32.0), (ValueError, TypeError), "alignment"),
        _bad(op, "alignment string", _q(alignment="32"), (ValueError, TypeError), "alignment"),
        _bad(op, "backend unknown", _q(backend="trtllm"), ValueError, "backend"),
        _bad(op, "layout unknown", _q(sf_swizzle_layout="layout_1x1"), (ValueError, TypeError), "layout"),
        _bad(op, "layout int out of range", _q(sf_swizzle_layout=9), (ValueError, TypeError), "layout"),
        _bad(op, "layout bool", _q(sf_swizzle_layout=False), TypeError, "layout"),
        _bad(op, "recipe unknown", _q(recipe="ceil"), ValueError, "recipe"),
    ]


def _nvfp4_cases() -> list[Case]:
    op = "nvfp4_quantize"
    gs = 448 * 6 / 4.0

    def qn(shape: tuple[int, ...] = (8, 64), dtype: torch.dtype = torch.bfloat16, **kw: Any) -> Build:
        kw.setdefault("a_global_sf", gs)
        return _q(shape, dtype, **kw)

    common = [replace(c, build=_with_global_sf(c.build, gs)) for c in _quantizer_common(op, 16)]
    return common + [
        Case(op, "valid tensor global scale", qn(a_global_sf=lambda x, d: torch.tensor([gs], device=d)), LEGAL),
        Case(op, "valid per-row global scale", qn(a_global_sf=lambda x, d: torch.full((8,), gs, device=d)), LEGAL),
        Case(op, "valid K = 16", qn((8, 16)), LEGAL),
        Case(op, "valid linear", qn(sfLayout="layout_linear"), LEGAL),
        _bad(op, "global scale per column", qn(a_global_sf=lambda x, d: torch.full((64,), gs, device=d)), ValueError,
             "a_global_sf"),
        _bad(op, "global scale empty", qn(a_global_sf=lambda x, d: torch.empty(0, device=d)), ValueError,
             "a_global_sf"),
        _bad(op, "global scale string", qn(a_global_sf="1.0"), (TypeError, ValueError), "a_global_sf|float|str"),
        _bad(op, "global scale None", qn(a_global_sf=None), (TypeError, ValueError), "a_global_sf|None|float"),
        _bad(op, "sf_vec_size 32", qn(sf_vec_size=32), ValueError, "sf_vec_size"),
        _bad(op, "sf_vec_size bool", qn(sf_vec_size=True), ValueError, "sf_vec_size"),
        _bad(op, "do_shuffle", qn(do_shuffle=True), NotImplementedError, ""),
        _bad(op, "per_token_activation", qn(per_token_activation=True), NotImplementedError, ""),
        _bad(op, "expanded_idx_to_permuted_idx", qn(expanded_idx_to_permuted_idx=lambda x, d: torch.zeros(
            8, dtype=torch.int32, device=d)), NotImplementedError, ""),
        _bad(op, "out_scale", qn(out_scale=lambda x, d: torch.ones(1, device=d)), NotImplementedError, ""),
        _bad(op, "4over6", qn(nvfp4_4over6="mse"), NotImplementedError, "4over6"),
        _bad(op, "backend unknown", qn(backend="triton"), ValueError, "backend"),
        _bad(op, "layout unknown", qn(sfLayout="layout_2x2"), (ValueError, TypeError), "layout"),
        _bad(op, "missing global scale", _q(), TypeError, "a_global_sf"),
    ]


def _with_global_sf(build: Build, gs: float) -> Build:
    def wrapped(device: str) -> tuple[tuple, dict]:
        args, kwargs = build(device)
        return (*args, gs), kwargs

    return wrapped


# ------------------------------------------------------------------------------------------------------ the list
def cases() -> list[Case]:
    """Every fuzz case, in a fixed order."""
    return (_gemm_cases("mm_fp4", "mxfp4") + _nvfp4_gemm_cases() + _gemm_cases("mm_mxfp8_mxfp4", "mxfp8")
            + _grouped_cases() + _fused_moe_cases() + _cutlass_fused_moe_cases() + _prepare_cases() + _mxfp4_cases()
            + _mxfp8_cases() + _nvfp4_cases())


def counts(selected: list[Case] | None = None) -> dict[str, dict[str, int]]:
    """Per op: cases in all, malformed ones, legal ones, and how many need CUDA tensors."""
    out: dict[str, dict[str, int]] = {op: {"cases": 0, "malformed": 0, "legal": 0, "cuda_only": 0} for op in OPS}
    for c in selected if selected is not None else cases():
        row = out[c.op]
        row["cases"] += 1
        row["legal" if c.expect == LEGAL else "malformed"] += 1
        row["cuda_only"] += c.where == "cuda"
    return out


# Where each public op is defined (the names the package exports; the face itself is not imported from below it).
_HOMES = {"mm_fp4": "integrations.flashinfer_mm_fp4", "mm_mxfp8_mxfp4": "ops.mm_fp4",
          "grouped_mm_fp4": "ops.grouped_mm_fp4", "fused_moe": "moe.fused_moe",
          "cutlass_fused_moe": "integrations.flashinfer_cutlass_fused_moe", "prepare_gpt_oss_weights": "moe.weights",
          "mxfp4_quantize": "ops.quantize", "mxfp8_quantize": "ops.quantize", "nvfp4_quantize": "ops.quantize"}


def function(op: str) -> Callable[..., Any]:
    """The public function of `op` (the object `flashinfer_sm12x.<op>` is)."""
    return getattr(import_module(f"..{_HOMES[op]}", __package__), op)


def tensors_of(value: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor reachable from an argument (tuples, lists, dicts, dataclasses such as PreparedMoEWeights)."""
    if isinstance(value, torch.Tensor):
        yield "", value
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            for path, t in tensors_of(v):
                yield f"[{i}]{path}", t
    elif isinstance(value, dict):
        for k, v in value.items():
            for path, t in tensors_of(v):
                yield f".{k}{path}", t
    elif hasattr(value, "__dataclass_fields__"):
        for k in value.__dataclass_fields__:
            for path, t in tensors_of(getattr(value, k)):
                yield f".{k}{path}", t


def snapshot(args: tuple, kwargs: dict, skip: tuple[str, ...] = ()) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, tensor, copy of its bytes) for every input tensor with data (meta tensors have none); keyword
    arguments named in `skip` (a legal call's outputs) are left out."""
    taken = []
    named = [(f"arg{i}", a) for i, a in enumerate(args)] + [(k, v) for k, v in kwargs.items() if k not in skip]
    for name, value in named:
        for path, t in tensors_of(value):
            if t.device.type != "meta":
                taken.append((name + path, t, _bytes(t)))
    return taken


def _bytes(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().reshape(-1).clone()
    return flat.view(torch.uint8) if flat.numel() and flat.dtype != torch.bool else flat


def changed(taken: list[tuple[str, torch.Tensor, torch.Tensor]]) -> list[str]:
    """The names of snapshotted tensors whose contents changed."""
    return [name for name, t, before in taken if not torch.equal(_bytes(t), before)]


OUTPUT_NAMES = ("out", "output")
