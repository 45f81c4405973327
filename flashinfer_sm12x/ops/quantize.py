# SPDX-License-Identifier: Apache-2.0
"""MXFP4 / MXFP8 / NVFP4 quantizers: CUDA kernels for CUDA tensors, the torch reference for everything else.

The three functions have the signatures of flashinfer_sm12x.formats.quantize (FlashInfer 0.7.2's). A CUDA
input that the kernel serves (float32 / float16 / bfloat16, K a multiple of the block, an SM12x GPU, or SM90
with FLASHINFER_SM12X_EMULATE=1 where the kernels are ordinary native SM90 builds) runs one kernel launch and
returns bit-identical results to the reference. Everything else (CPU tensors, other GPUs, empty inputs, bad
arguments) goes to the reference, so errors are raised exactly as it raises them, before any launch.

Validate -> plan -> run: `_plan_*` returns None when the kernel does not serve the call; modules and targets
are cached, so a repeated call costs a few dictionary lookups and two allocations on the host.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..checks import round_up
from ..errors import ArchError
from ..formats import quantize as reference
from ..formats.e8m0 import RECIPES, Recipe
from ..formats.scale_layout import SfLayout, as_sf_layout, swizzled_sf_size
from ..jit.arch import Target, device_facts
from ..kernels.quantize import BLOCK, FAMILY
from .device_guard import on_device

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_CHUNKS = 1 << 31  # the kernel indexes 8-element chunks with 32-bit integers
# The reference's "not given" marker for nvfp4_4over6 (FlashInfer reads the environment when it is not given).
_UNSET: Any = inspect.signature(reference.nvfp4_quantize).parameters["nvfp4_4over6"].default

def _target(device: torch.device) -> Target | None:
    """The build target for `device` (cached per device by jit.arch.device_facts), or None when no quantizer kernel runs
    there: the reference serves those GPUs, as it did before the kernels existed."""
    try:
        return device_facts(device).target
    except ArchError:
        return None


def _module(target: Target, fmt: str) -> Any:
    return FAMILY.load(target, fmt)


def _is_column_major(a: Any) -> bool:
    """The reference's rule: a genuinely column-major [.., M, K] (stride(-2) == 1, both dims > 1) is quantized
    along M (FlashInfer's fp4_quantize does the same)."""
    return (isinstance(a, torch.Tensor) and a.dim() >= 2 and a.stride(-2) == 1 and a.stride(-1) != 1
            and min(a.shape[-2:]) > 1)


def _servable(a: Any, block: int) -> Target | None:
    """The target when the kernel can quantize `a` row-wise in blocks of `block`; None sends it to the reference
    (which also raises the errors of bad input)."""
    if not (isinstance(a, torch.Tensor) and a.is_cuda and a.dtype in _FLOAT_DTYPES and a.dim() >= 2):
        return None
    k = a.shape[-1]
    if k == 0 or k % block or a.numel() == 0 or a.numel() // 8 >= _MAX_CHUNKS:
        return None
    return _target(a.device)


def _rows_view(a: torch.Tensor) -> torch.Tensor:
    """[..., K] -> contiguous, 16-byte aligned [rows, K] (a view when `a` already is)."""
    x = a.detach().reshape(-1, a.shape[-1])
    if not x.is_contiguous() or x.data_ptr() % 16:
        x = x.contiguous() if not x.is_contiguous() else x.clone()
    return x


def _scales(rows: int, sf_cols: int, layout: SfLayout, device: torch.device) -> torch.Tensor:
    return torch.empty(swizzled_sf_size(rows, sf_cols, layout), dtype=torch.uint8, device=device)


def _sf_2d(sf: torch.Tensor, rows: int, sf_cols: int, layout: SfLayout) -> torch.Tensor:
    """The reference's 2-D scale shape: [rows, K/block] (linear) or [padded rows, round_up(K/block, 4)]."""
    return sf.view(rows, sf_cols) if layout == SfLayout.layout_linear else sf.view(-1, round_up(sf_cols, 4))


# ---------------------------------------------------------------------------------------------------- MXFP4
def mxfp4_quantize(
    a: torch.Tensor,
    backend: str = "cuda",
    enable_pdl: bool | None = None,
    sfLayout: SfLayout = SfLayout.layout_128x4,  # FlashInfer's argument name
    *,
    recipe: Recipe = "rceil",
) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP4 quantization: E2M1 elements, blocks of 32 along K, E8M0 scales.

    Parameters
    ----------
    a : torch.Tensor
        float32 / float16 / bfloat16 [..., M, K], K a multiple of 32. A column-major input is quantized along
        dim -2 and both outputs come back transposed, as in FlashInfer.
    backend : str
        "cuda" or "cute-dsl" (accepted for compatibility; both run this package's kernel).
    enable_pdl : bool or None
        Accepted for compatibility; ignored.
    sfLayout : SfLayout, int or str
        Scale layout: layout_128x4 (default), layout_8x4 or layout_linear.
    recipe : {"rceil", "floor"}
        E8M0 scale rule (see flashinfer_sm12x.formats.e8m0).

    Returns
    -------
    tuple of torch.Tensor
        (x_q uint8 [..., K/2], sf uint8 [round_up(rows, R), round_up(K/32, 4)] for the swizzled layouts
        (R = 128 or 8), [rows, K/32] for layout_linear), rows = numel / K; on a's device.

    Raises
    ------
    TypeError
        `a` is not a float32 / float16 / bfloat16 tensor.
    ValueError
        Unknown backend, layout or recipe; fewer than 2 dimensions; K not a positive multiple of 32.

    Examples
    --------
    >>> import torch, flashinfer_sm12x as fs
    >>> x_q, sf = fs.mxfp4_quantize(torch.randn(16, 4096))  # CPU: the torch reference
    >>> x_q.shape, x_q.dtype, sf.shape  # 16 rows padded to 128 in the 128x4 layout
    (torch.Size([16, 2048]), torch.uint8, torch.Size([128, 128]))
    >>> x_q, sf = fs.mxfp4_quantize(torch.randn(16, 4096, device="cuda"))  # one kernel  # doctest: +SKIP
    """
    layout = as_sf_layout(sfLayout)
    if backend in ("cuda", "cute-dsl") and _is_column_major(a):
        x_q, sf = mxfp4_quantize(a.transpose(-2, -1), backend, enable_pdl, layout, recipe=recipe)
        return x_q.transpose(-2, -1), sf.transpose(-2, -1)
    target = _servable(a, 32)
    if target is None or backend not in ("cuda", "cute-dsl") or recipe not in RECIPES:
        return reference.mxfp4_quantize(a, backend, enable_pdl, layout, recipe=recipe)
    x = _rows_view(a)
    rows, k = x.shape
    x_q = torch.empty(rows, k // 2, dtype=torch.uint8, device=a.device)
    sf = _scales(rows, k // 32, layout, a.device)
    with on_device(x.device.index):
        _module(target, "mxfp4").run(x, x_q, sf, None, int(layout), RECIPES.index(recipe))
    return x_q.view(*a.shape[:-1], k // 2), _sf_2d(sf, rows, k // 32, layout)


# ---------------------------------------------------------------------------------------------------- MXFP8
def mxfp8_quantize(
    input: torch.Tensor,  # FlashInfer's argument name
    is_sf_swizzled_layout: bool = True,
    alignment: int = 32,
    enable_pdl: bool | None = None,
    backend: str = "cuda",
    sf_swizzle_layout: SfLayout | None = None,
    *,
    recipe: Recipe = "rceil",
) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP8 quantization: E4M3 elements, blocks of 32, E8M0 scales (elem_max 448).

    Parameters
    ----------
    input : torch.Tensor
        float32 / float16 / bfloat16 [..., K], K a multiple of 32.
    is_sf_swizzled_layout : bool
        128x4 scales when True (default), linear when False; `sf_swizzle_layout` overrides it.
    alignment : int
        The output's last dimension is Kp = round_up(K, alignment) (a multiple of 32); the padded columns hold
        zero data and zero scales.
    enable_pdl : bool or None
        Accepted for compatibility; ignored.
    backend : str
        "cuda" or "cute-dsl".
    sf_swizzle_layout : SfLayout or None
        Explicit scale layout (128x4, 8x4 or linear).
    recipe : {"rceil", "floor"}
        E8M0 scale rule.

    Returns
    -------
    tuple of torch.Tensor
        (x_q float8_e4m3fn [..., Kp], sf uint8 1-D: rows * Kp/32 bytes (linear) or
        round_up(rows, R) * round_up(Kp/32, 4) bytes (swizzled)).

    Raises
    ------
    TypeError
        `input` is not a float32 / float16 / bfloat16 tensor.
    ValueError
        Unknown backend, layout or recipe; fewer than 2 dimensions; K not a positive multiple of 32; an alignment
        that does not pad K to a multiple of 32.

    Examples
    --------
    >>> import torch, flashinfer_sm12x as fs
    >>> x_q, sf = fs.mxfp8_quantize(torch.randn(16, 4096), is_sf_swizzled_layout=False)  # CPU: the torch reference
    >>> x_q.dtype, x_q.shape, sf.shape  # linear scales: 16 rows x 128 blocks, flat
    (torch.float8_e4m3fn, torch.Size([16, 4096]), torch.Size([2048]))
    >>> x_q, sf = fs.mxfp8_quantize(torch.randn(16, 4096, device="cuda"))  # one kernel  # doctest: +SKIP
    """
    if sf_swizzle_layout is not None:
        layout = as_sf_layout(sf_swizzle_layout)
    else:
        layout = SfLayout.layout_128x4 if is_sf_swizzled_layout else SfLayout.layout_linear
    target = _servable(input, 32)
    valid_alignment = isinstance(alignment, int) and not isinstance(alignment, bool) and alignment > 0
    kp = round_up(input.shape[-1], alignment) if target is not None and valid_alignment else -1
    if target is None or kp % 32 or backend not in ("cuda", "cute-dsl") or recipe not in RECIPES:
        return reference.mxfp8_quantize(input, is_sf_swizzled_layout, alignment, enable_pdl, backend,
                                        sf_swizzle_layout, recipe=recipe)
    x = _rows_view(input)
    rows = x.shape[0]
    x_q = torch.empty(rows, kp, dtype=torch.uint8, device=input.device)
    sf = _scales(rows, kp // 32, layout, input.device)
    with on_device(x.device.index):
        _module(target, "mxfp8").run(x, x_q, sf, None, int(layout), RECIPES.index(recipe))
    return x_q.view(torch.float8_e4m3fn).view(*input.shape[:-1], kp), sf


# ---------------------------------------------------------------------------------------------------- NVFP4
def nvfp4_quantize(
    a: torch.Tensor,
    a_global_sf: torch.Tensor | float,
    sfLayout: SfLayout = SfLayout.layout_128x4,
    do_shuffle: bool = False,
    sf_vec_size: int = 16,
    enable_pdl: bool | None = None,
    backend: str = "cuda",
    per_token_activation: bool = False,
    expanded_idx_to_permuted_idx: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
    nvfp4_4over6: object = _UNSET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4 quantization: E2M1 elements, blocks of 16, E4M3 scales, an fp32 global scale gs.

    Per block: sf = e4m3_rn(gs * (amax * fl32(1/6))); elements e2m1_rn(x * min(1 / (sf * (1 / gs)), FLT_MAX)),
    with correctly rounded float32 operations (see flashinfer_sm12x.formats.quantize.nvfp4_quantize).

    Parameters
    ----------
    a : torch.Tensor
        float32 / float16 / bfloat16 [..., M, K], K a multiple of 16; column-major inputs as in mxfp4_quantize.
    a_global_sf : torch.Tensor or float
        The global scale: one value, or one per row (rows = numel / K).
    sfLayout : SfLayout, int or str
        Scale layout (128x4 default, 8x4, linear).
    do_shuffle, per_token_activation, expanded_idx_to_permuted_idx, out_scale, nvfp4_4over6
        Not implemented (NotImplementedError unless left at their defaults), as in the reference.
    sf_vec_size : int
        Must be 16.
    enable_pdl : bool or None
        Accepted for compatibility; ignored.
    backend : str
        "cuda", "cute-dsl" or "cake".

    Returns
    -------
    tuple of torch.Tensor
        (x_q uint8 [..., K/2], sf uint8 2-D, shaped as in mxfp4_quantize with K/16 scale columns).

    Raises
    ------
    TypeError
        `a` is not a float32 / float16 / bfloat16 tensor.
    ValueError
        Unknown backend or layout, sf_vec_size != 16, a bad shape, or a global scale of neither 1 nor rows values.
    NotImplementedError
        An option the reference does not implement.

    Examples
    --------
    The usual global scale maps the tensor's amax to the largest E4M3 scale times the largest E2M1 value; the GEMM
    multiplies by ``1 / (gs_a * gs_b)`` (mm_fp4's `alpha`):

    >>> import torch, flashinfer_sm12x as fs
    >>> x = torch.randn(16, 4096)
    >>> gs = 448 * 6 / x.abs().amax()
    >>> x_q, sf = fs.nvfp4_quantize(x, gs)  # CPU: the torch reference
    >>> x_q.shape, sf.shape, sf.dtype  # E4M3 scale bytes per 16 elements, 128x4 layout
    (torch.Size([16, 2048]), torch.Size([128, 256]), torch.uint8)
    """
    layout = as_sf_layout(sfLayout)
    unsupported = (do_shuffle or per_token_activation or expanded_idx_to_permuted_idx is not None
                   or out_scale is not None or (nvfp4_4over6 is not _UNSET and nvfp4_4over6 is not None)
                   or sf_vec_size != 16 or backend not in ("cuda", "cute-dsl", "cake"))

    def run_reference() -> tuple[torch.Tensor, torch.Tensor]:
        return reference.nvfp4_quantize(a, a_global_sf, layout, do_shuffle, sf_vec_size, enable_pdl, backend,
                                        per_token_activation, expanded_idx_to_permuted_idx, out_scale, nvfp4_4over6)

    if unsupported:
        return run_reference()
    if _is_column_major(a):
        x_q, sf = nvfp4_quantize(a.transpose(-2, -1), a_global_sf, layout, nvfp4_4over6=nvfp4_4over6)
        return x_q.transpose(-2, -1), sf.transpose(-2, -1)
    target = _servable(a, 16)
    if target is None:
        return run_reference()
    reference.check_global_scale_device(a_global_sf, a.device, "nvfp4_quantize")
    x = _rows_view(a)
    rows, k = x.shape
    gs = torch.as_tensor(a_global_sf, dtype=torch.float32).to(device=a.device, dtype=torch.float32).detach().reshape(-1)
    if gs.numel() not in (1, rows):
        return run_reference()  # raises the reference's ValueError
    if not gs.is_contiguous():
        gs = gs.contiguous()
    x_q = torch.empty(rows, k // 2, dtype=torch.uint8, device=a.device)
    sf = _scales(rows, k // 16, layout, a.device)
    with on_device(x.device.index):
        _module(target, "nvfp4").run(x, x_q, sf, gs, int(layout), 0)
    return x_q.view(*a.shape[:-1], k // 2), _sf_2d(sf, rows, k // 16, layout)


__all__ = ["BLOCK", "mxfp4_quantize", "mxfp8_quantize", "nvfp4_quantize"]
