#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A small quantizer workload for compute-sanitizer: every format, layout and input dtype, edge row counts (1, 7,
129), MXFP8 alignment padding, a misaligned input; each result compared with the torch reference on the GPU."""

import torch

from flashinfer_sm12x.formats import quantize as reference
from flashinfer_sm12x.ops import quantize as ops

LAYOUTS = ("128x4", "8x4", "linear")


def same(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> bool:
    return all(torch.equal(g.view(torch.uint8), w.view(torch.uint8)) for g, w in zip(got, want, strict=True))


bad = 0
for dtype in (torch.bfloat16, torch.float16, torch.float32):
    for m in (1, 7, 129):
        x = torch.randn(m, 2880, device="cuda").to(dtype)
        gs = torch.tensor([17.0], device="cuda")
        for layout in LAYOUTS:
            cases = {
                "mxfp4": (ops.mxfp4_quantize(x, sfLayout=layout), reference.mxfp4_quantize(x, sfLayout=layout)),
                "nvfp4": (ops.nvfp4_quantize(x, gs, layout), reference.nvfp4_quantize(x, gs, layout)),
                "mxfp8": (ops.mxfp8_quantize(x[:, :2848], alignment=128, sf_swizzle_layout=layout),
                          reference.mxfp8_quantize(x[:, :2848], alignment=128, sf_swizzle_layout=layout)),
            }
            for fmt, (got, want) in cases.items():
                torch.cuda.synchronize()
                ok = same(got, want)
                bad += not ok
                print(f"{fmt} {str(dtype).split('.')[-1]} M={m} {layout}: {'ok' if ok else 'MISMATCH'}", flush=True)
misaligned = torch.randn(7 * 64 + 1, device="cuda", dtype=torch.bfloat16)[1:].view(7, 64)
ok = same(ops.mxfp4_quantize(misaligned), reference.mxfp4_quantize(misaligned))
bad += not ok
print(f"mxfp4 misaligned input: {'ok' if ok else 'MISMATCH'}")
print(f"sanitizer quantize workload done ({bad} mismatches)")
raise SystemExit(1 if bad else 0)
