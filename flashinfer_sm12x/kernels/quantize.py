# SPDX-License-Identifier: Apache-2.0
"""The block-scale quantizer family (include/flashinfer_sm12x/quantize/quantize.cuh, jit/quantize.cu.jinja).

One module per (format, target): it holds the kernels for bf16, fp16 and fp32 inputs, and takes the scale
layout (128x4, 8x4, linear) and the E8M0 recipe (rceil, floor) as run-time arguments, so a user builds at most
three small modules per GPU, each in seconds. `software_cvt` builds force the exact integer conversion paths
instead of the native `cvt` instructions: tests use them to prove those paths on any GPU.
"""

from __future__ import annotations

from ..jit.arch import Target
from ..jit.module import ModuleSpec, Source
from ..jit.render import render
from .family import VariantFamily

FORMATS = ("mxfp4", "mxfp8", "nvfp4")
INPUT_DTYPES = ("bfloat16", "float16", "float32")  # all inside each module (a run-time branch)
LAYOUTS = ("128x4", "8x4", "linear")  # run-time argument
RECIPES = ("rceil", "floor")  # run-time argument (MX formats)
MENU = {"format": FORMATS, "software_cvt": (False, True)}
BLOCK = {"mxfp4": 32, "mxfp8": 32, "nvfp4": 16}


def quantize_spec(target: Target, fmt: str, *, software_cvt: bool = False) -> ModuleSpec:
    """The module quantizing to `fmt` for `target`.

    Parameters
    ----------
    target : Target
        Build target (sm_120a, sm_121a, sm_120f, sm_121f, or sm_90a: a native SM90 build of these kernels).
    fmt : str
        One of FORMATS.
    software_cvt : bool
        Force the exact software conversions (a test build) instead of the native cvt instructions.

    Returns
    -------
    ModuleSpec
        The module; `run(input, output, sf, global_scale, layout, recipe)` is its entry point.

    Raises
    ------
    ConfigError
        `fmt` is not in the menu.
    """
    text = render("quantize.cu.jinja", {"format": fmt, "software_cvt": software_cvt}, MENU)
    group = fmt + ("_software_cvt" if software_cvt else "")
    return ModuleSpec(op="quantize", group=group, target=target, sources=(Source("quantize.cu", text),))


def required_instruction(fmt: str, target: Target) -> str:
    """The SASS conversion a native build of `fmt` must contain (nvcc 13: F2FP.SATFINITE.<type>.F32.PACK_AB...).

    E2M1 is native on the SM12x a/f targets only; sm_90a builds convert E2M1 in software but still use the
    native E4M3 conversion (NVFP4's block scales, MXFP8's elements).
    """
    if fmt in ("mxfp4", "nvfp4") and not target.emulated:
        return "F2FP.SATFINITE.E2M1.F32"
    return "F2FP.SATFINITE.E4M3.F32" if fmt in ("mxfp8", "nvfp4") else ""


# One module per format (sm_90a builds are native SM90 code, so they are built and proven too).
FAMILY = VariantFamily("quantize", FORMATS, quantize_spec, required_instruction)


def prebuild(target: Target) -> list[ModuleSpec]:
    """What `flashinfer-sm12x prebuild` builds for this family: one module per format."""
    return FAMILY.prebuild(target)
