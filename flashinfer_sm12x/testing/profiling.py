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


def kernel_durations_us(fn: Callable[[], Any], repeats: int = 20) -> list[float]:
    """Device durations, in microseconds, of every kernel `repeats` back-to-back calls of `fn` run, from the GPU's
    own activity records (torch.profiler / CUPTI): each kernel's execution alone, without launch gaps or a graph's
    submission latency. Warm `fn` up first.

    Parameters
    ----------
    fn : callable
        One call.
    repeats : int
        Calls made under the profiler.

    Returns
    -------
    list of float
        One duration per kernel launched (memsets and copies not counted), in launch order.
    """
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    return [e.time_range.elapsed_us() for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
            and "Memcpy" not in e.name and "Memset" not in e.name]
