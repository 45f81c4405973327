#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A small mm_fp4 workload for compute-sanitizer: each shipped tactic once on ragged shapes (M, N not
multiples of the tile, K not a multiple of 128), checked against the reference."""

import torch

from flashinfer_sm12x.jit.arch import target_for_device
from flashinfer_sm12x.kernels.mm_fp4 import EMULATED_FORMATS, FAMILY
from flashinfer_sm12x.testing.mm_fp4_cases import run_and_check

native = torch.cuda.get_device_capability()[0] == 12
formats = ["mxfp4", "nvfp4", "mxfp8_mxfp4"] if native else list(EMULATED_FORMATS)
for fmt in formats:
    target = target_for_device(torch.cuda.get_device_capability())
    menu = FAMILY.shipped(fmt, target)
    # Memcheck slows each run a lot: Pingpong and Cooperative 128x128 and our 64-row mainloop.
    for tactic in [*menu[:2], *[t for t in menu if t.tile_m == 64]]:
        for m, n, k in [(1, 72, 2944 if fmt == "mxfp8_mxfp4" else 2880), (130, 136, 384)]:
            err = run_and_check(fmt, tactic, torch.bfloat16, m, n, k, with_alpha=True)
            print(f"{fmt} {tactic.name} m={m} n={n} k={k}: ok (max rel err {err:.1e})", flush=True)
print("sanitizer workload done")
