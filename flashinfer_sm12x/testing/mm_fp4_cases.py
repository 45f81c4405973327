# SPDX-License-Identifier: Apache-2.0
"""mm_fp4 cases shared by the native SM12x tests and the SM90 emulation tests (same shapes, same checks)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

from ..formats import mxfp4_quantize, mxfp8_quantize, nvfp4_quantize
from ..jit.arch import Target
from ..jit.module import build_module
from ..kernels.family import Tactic
from ..kernels.mm_fp4 import FAMILY
from ..ops.mm_fp4 import run_tactic, validate
from .gemm_reference import mm_fp4_reference, mm_mxfp8_mxfp4_reference

# M sweep with N not a multiple of any tile; K sweep from one tile to 8192.
M_SWEEP = [(m, 200, 640) for m in (1, 7, 64, 127, 128, 300, 4096)]
K_SWEEP = [(128, 264, k) for k in (128, 2880, 8192)]  # 2880: GPT-OSS hidden size, not a multiple of 128
SHAPES = M_SWEEP + K_SWEEP

TOLERANCE = {torch.bfloat16: 2**-7, torch.float16: 2**-10}


def make_operands(fmt: str, m: int, n: int, k: int, seed: int, device: str = "cuda") -> dict:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.randn(m, k, generator=gen) * 3).to(device)
    w = torch.randn(n, k, generator=gen).to(device)
    if fmt == "nvfp4":
        gx, gw = 448 * 6 / x.abs().amax(), 448 * 6 / w.abs().amax()
        a, a_sf = nvfp4_quantize(x, gx)
        b, b_sf = nvfp4_quantize(w, gw)
        alpha = (1 / (gx * gw)).reshape(1).float()
        return {"a": a, "b": b.T, "a_descale": a_sf, "b_descale": b_sf.T, "alpha": alpha, "block_size": 16,
                "use_nvfp4": True}
    b, b_sf = mxfp4_quantize(w)
    if fmt == "mxfp8_mxfp4":
        a, a_sf = mxfp8_quantize(x)
        return {"a": a, "b": b.T, "a_descale": a_sf, "b_descale": b_sf.T, "alpha": None, "block_size": 32,
                "use_nvfp4": False}
    a, a_sf = mxfp4_quantize(x)
    return {"a": a, "b": b.T, "a_descale": a_sf, "b_descale": b_sf.T, "alpha": None, "block_size": 32,
            "use_nvfp4": False}


def run_and_check(fmt: str, tactic: Tactic, out_dtype: torch.dtype, m: int, n: int, k: int, with_alpha: bool,
                  seed: int = 0) -> float:
    """Run one tactic on fresh random data; assert it matches the float64 reference. Returns the max error
    relative to the output's largest magnitude."""
    ops = make_operands(fmt, m, n, k, seed)
    if with_alpha and ops["alpha"] is None:
        ops["alpha"] = torch.tensor([0.37], device="cuda")
    out = torch.full((m, n), float("nan"), dtype=out_dtype, device="cuda")  # every element must be written
    p = validate(ops["a"], ops["b"], ops["a_descale"], ops["b_descale"], ops["alpha"], out_dtype, out,
                 ops["block_size"], False, ops["use_nvfp4"], fp8_a=fmt == "mxfp8_mxfp4")
    run_tactic(p, tactic)
    torch.cuda.synchronize()
    if fmt == "mxfp8_mxfp4":
        ref = mm_mxfp8_mxfp4_reference(ops["a"], ops["b"], ops["a_descale"], ops["b_descale"], ops["alpha"],
                                       torch.float64)
    else:
        ref = mm_fp4_reference(ops["a"], ops["b"], ops["a_descale"], ops["b_descale"], ops["alpha"], torch.float64,
                               ops["block_size"], ops["use_nvfp4"])
    assert not torch.isnan(out).any(), "unwritten (NaN-poisoned) output elements remain"
    scale = ref.abs().max().item() or 1.0
    err = (out.double() - ref).abs()
    # One rounding to the output type per element, plus fp32 accumulation in another order.
    bound = TOLERANCE[out_dtype] * ref.abs() + 1e-5 * scale
    worst = (err - bound).max().item()
    assert worst <= 0, (f"{fmt} {tactic.name} {out_dtype} m={m} n={n} k={k}: max error "
                        f"{err.max().item():.3e} over bound by {worst:.3e}")
    return err.max().item() / scale


def prebuild(cases: list[tuple[str, Tactic, torch.dtype]], target: Target) -> None:
    """Build every module the cases need, several at once (FLASHINFER_SM12X_PREBUILD_PARALLEL, default 2:
    one CUTLASS TU takes ~5.5 GB), so the tests themselves only load."""
    specs = {FAMILY.spec(target, fmt, tactic, out).name: FAMILY.spec(target, fmt, tactic, out)
             for fmt, tactic, out in cases}
    workers = int(os.environ.get("FLASHINFER_SM12X_PREBUILD_PARALLEL", "2"))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(build_module, specs.values()))


Case = tuple[str, Tactic, torch.dtype]


def selected_cases(request: object, cases: list[Case]) -> list[Case]:
    """The cases that the selected tests (after -k/-m) of this module use, so a prebuild builds only those."""
    wanted = set()
    for item in request.session.items:  # type: ignore[attr-defined]
        params = getattr(getattr(item, "callspec", None), "params", {})
        if {"fmt", "tactic", "out_dtype"} <= params.keys():
            wanted.add((params["fmt"], params["tactic"], params["out_dtype"]))
    return [c for c in cases if c in wanted]
