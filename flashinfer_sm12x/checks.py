# SPDX-License-Identifier: Apache-2.0
"""Argument checks shared by every op: typed errors (TypeError for types and dtypes, ValueError for shapes, layouts
and devices) raised before anything is allocated or launched. Each message starts with the function's name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def round_up(x: int, to: int) -> int:
    """The smallest multiple of `to` that is >= x (x >= 0, to > 0)."""
    return -(-x // to) * to


def _prefix(fn: str | None) -> str:
    return f"{fn}: " if fn else ""


def require_tensor(name: str, t: Any, fn: str | None = None) -> torch.Tensor:
    """`t` itself if it is a torch.Tensor, else TypeError."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{_prefix(fn)}{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_tensor(t: Any, name: str, fn: str | None, dtypes: torch.dtype | Sequence[torch.dtype], *,
                 ndim: int | None = None, shape: tuple[int, ...] | None = None, numel: int | None = None,
                 contiguous: bool = True) -> torch.Tensor:
    """A tensor of one of `dtypes` (TypeError otherwise) with the given rank, shape, element count and
    contiguity (ValueError otherwise)."""
    t = require_tensor(name, t, fn)
    allowed = (dtypes,) if isinstance(dtypes, torch.dtype) else tuple(dtypes)
    if t.dtype not in allowed:
        raise TypeError(f"{_prefix(fn)}{name} must have dtype in {[str(d) for d in allowed]}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{_prefix(fn)}{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{_prefix(fn)}{name} must have shape {shape}, got {tuple(t.shape)}")
    if numel is not None and t.numel() != numel:
        raise ValueError(f"{_prefix(fn)}{name} must have {numel} elements (128x4 layout), got {t.numel()}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{_prefix(fn)}{name} must be contiguous (call .contiguous() first)")
    return t


def check_count(n: Any, name: str, fn: str | None) -> int:
    """A positive int (bool is refused: True as a count is a caller bug)."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"{_prefix(fn)}{name} must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{_prefix(fn)}{name} must be >= 1, got {n}")
    return n


def one_device(tensors: Sequence[torch.Tensor | None], fn: str | None, what: str = "all tensors") -> torch.device:
    """The single device the given tensors (None skipped) live on, else ValueError naming the devices."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        raise ValueError(f"{_prefix(fn)}{what} must be on one device, got {sorted(map(str, devices))}")
    return next(iter(devices))


# The kernels take sizes and row counts as 32-bit ints (the bindings cast them; CUTLASS's scale-factor layouts are
# built from int shapes): a count above this would wrap. Element offsets inside the kernels are 64-bit.
INDEX_LIMIT = 2**31 - 1


def check_index_range(fn: str | None, **counts: int) -> None:
    """ValueError naming the first count above INDEX_LIMIT (the 32-bit line of the kernels' sizes)."""
    for name, value in counts.items():
        if value > INDEX_LIMIT:
            raise ValueError(f"{_prefix(fn)}{name} = {value} exceeds {INDEX_LIMIT} (2^31 - 1): the kernels index it "
                             "with 32-bit integers; split the call")


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[first, last) bytes of `t` inside its storage (an over-estimate for strided views, never an under-estimate)."""
    if t.numel() == 0:
        return 0, 0
    extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride(), strict=True))
    first = t.storage_offset() * t.element_size()
    return first, first + extent * t.element_size()


def overlaps(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether two tensors may share memory: same storage and intersecting byte spans. Empty tensors never do;
    tensors on different devices never do; meta tensors (no storage) compare by storage identity alone."""
    if x.numel() == 0 or y.numel() == 0 or x.device != y.device:
        return False
    sx, sy = x.untyped_storage(), y.untyped_storage()
    # Meta storages have no address: the same storage object is the only sharing there is.
    same = sx._cdata == sy._cdata if x.device.type == "meta" else sx.data_ptr() == sy.data_ptr()
    if not same:
        return False
    (a0, a1), (b0, b1) = _byte_span(x), _byte_span(y)
    return a0 < b1 and b0 < a1


def check_no_alias(out: torch.Tensor, inputs: Sequence[tuple[str, Any]], fn: str | None,
                   out_name: str = "out") -> None:
    """ValueError when `out` shares memory with one of the named inputs (non-tensors and None skipped): a kernel
    that writes its output while reading an overlapping input reads values it has already overwritten."""
    for name, t in inputs:
        if isinstance(t, torch.Tensor) and overlaps(out, t):
            raise ValueError(f"{_prefix(fn)}{out_name} overlaps {name} in memory; pass a separate output tensor")
