# SPDX-License-Identifier: Apache-2.0
"""Launch on the tensors' GPU. The bindings take their stream and addresses from the tensors they are given, but a
kernel launch goes to the current CUDA device: a call whose tensors live on another GPU (cuda:1 while cuda:0 is
current) makes that GPU current for the call and puts the previous one back. The usual case (the tensors' GPU is
the current one) costs one device query."""

from __future__ import annotations

from typing import Any

import torch


class _Unchanged:
    """The current device is already the tensors' one: nothing to switch."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_UNCHANGED = _Unchanged()


def on_device(index: int | None) -> Any:
    """A context that makes CUDA device `index` current while it is open (a no-op when it already is, or for None).

    Parameters
    ----------
    index : int or None
        The tensors' device index (``tensor.device.index``).

    Returns
    -------
    context manager
    """
    if index is None or torch.cuda.current_device() == index:
        return _UNCHANGED
    return torch.cuda.device(index)
