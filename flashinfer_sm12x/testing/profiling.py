# SPDX-License-Identifier: Apache-2.0
"""Counting what one call launches on the GPU (kernels, memsets, copies), for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def device_launches(fn: Callable[[], Any]) -> list[str]:
    """Names of the device activities (kernels, memsets, memcpys) one call of `fn` runs, in order.

    Parameters
    ----------
    fn : callable
        Called once under torch.profiler (warm it up first, so JIT builds and allocations are not counted).

    Returns
    -------
    list of str
        One name per device activity.
    """
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def kernel_launches(fn: Callable[[], Any]) -> int:
    """How many kernels one call of `fn` launches (memsets and copies not counted); see `device_launches`."""
    return sum(1 for name in device_launches(fn) if "Memcpy" not in name and "Memset" not in name)
