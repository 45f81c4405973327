# SPDX-License-Identifier: Apache-2.0
"""The MXFP4 block-scaled MMA probe (include/flashinfer_sm12x/probe/mma_probe.cuh, jit/mma_probe.cu.jinja).

One warp computes D[16, 8] = (A·SFA)(B·SFB)^T over K = 64·k_tiles with the native instruction. It is the
compile-proof kernel of the foundation and, on SM12x hardware, the check of the instruction's fragment and
scale-lane layouts against the CPU reference.
"""

from __future__ import annotations

import torch

from ..checks import check_tensor, one_device
from ..errors import ArchError
from ..jit.arch import device_facts
from ..jit.module import load_module
from ..kernels.mma_probe import MENU, mma_probe_spec
from .device_guard import on_device


def mma_probe(a: torch.Tensor, b: torch.Tensor, sfa: torch.Tensor, sfb: torch.Tensor) -> torch.Tensor:
    """a [16, K/2] and b [8, K/2] packed e2m1, sfa [16, K/32] and sfb [8, K/32] ue8m0 (uint8) -> fp32 [16, 8]."""
    fn = "mma_probe"
    tensors = {"a": a, "b": b, "sfa": sfa, "sfb": sfb}
    for name, t in tensors.items():
        check_tensor(t, name, fn, torch.uint8, contiguous=False)
    device = one_device(list(tensors.values()), fn)
    if device.type != "cuda":
        raise ValueError(f"{fn}: a, b, sfa and sfb must be CUDA tensors, got {device}")
    k = a.shape[-1] * 2
    if k // 64 not in MENU["k_tiles"] or k % 64:
        raise ValueError(f"{fn}: K = {k} is not one of {[64 * t for t in MENU['k_tiles']]}")
    expected = {"a": (16, k // 2), "b": (8, k // 2), "sfa": (16, k // 32), "sfb": (8, k // 32)}
    for name, shape in expected.items():
        check_tensor(tensors[name], name, fn, torch.uint8, shape=shape, contiguous=False)
    target = device_facts(device).target
    if target.emulated:
        raise ArchError("the MMA probe runs the native instruction only; it has no SM90 emulation")
    module = load_module(mma_probe_spec(target, k // 64))
    d = torch.empty(16, 8, dtype=torch.float32, device=a.device)
    with on_device(d.device.index):
        module.run(*(t.contiguous() for t in (a, b, sfa, sfb)), d)
    return d
