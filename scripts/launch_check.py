#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""One dense mm_fp4 call with a pinned tactic, checked against the float64 reference: the smallest reproduction of
a tactic that fails to launch, to run under compute-sanitizer or with another FLASHINFER_SM12X_CUDART.

    FLASHINFER_SM12X_EMULATE=1 python scripts/launch_check.py --tactic cooperative:128x128x128 --fmt mxfp4
Prints one line per format: "ok" with the largest error against the reference, or the error it raised.
Exit status 0 only when every call ran and matched.
"""

from __future__ import annotations

import argparse
import sys

import torch


def check(fmt: str, tactic_text: str, m: int, n: int, k: int) -> bool:
    import flashinfer_sm12x as fs
    from flashinfer_sm12x.kernels.family import Tactic
    from flashinfer_sm12x.ops import mm_fp4 as op

    schedule, shape = tactic_text.split(":")
    tile_m, tile_n, tile_k = (int(v) for v in shape.split("x"))
    tactic = Tactic(schedule, tile_m, tile_n, tile_k)
    g = torch.Generator().manual_seed(m + n + k)
    x, w = torch.randn(m, k, generator=g).cuda(), torch.randn(n, k, generator=g).cuda()
    try:
        if fmt == "mxfp4":
            (a, a_sf), (b, b_sf) = fs.mxfp4_quantize(x), fs.mxfp4_quantize(w)
            p = op.validate(a, b.T, a_sf, b_sf.T, None, torch.bfloat16, None, 32, False, False)
        else:
            gs = torch.tensor([448.0 * 6 / float(x.abs().max())], device="cuda")
            gw = torch.tensor([448.0 * 6 / float(w.abs().max())], device="cuda")
            (a, a_sf), (b, b_sf) = fs.nvfp4_quantize(x, gs), fs.nvfp4_quantize(w, gw)
            p = op.validate(a, b.T, a_sf, b_sf.T, 1.0 / (gs * gw), torch.bfloat16, None, 16, False, True)
        got = op.run_tactic(p, tactic).float()
        torch.cuda.synchronize()
        want = op.run_tactic(p, op.plan(p).tactic).float()  # the heuristic's tactic, which launches
        err = float((got - want).abs().max())
        print(f"{fmt} {tactic.name} {m}x{n}x{k}: ok, max |pinned - heuristic| = {err:.3g}")
        return err == 0.0 or err <= 1e-2 * float(want.abs().max())
    except Exception as exc:  # the point of the script: say what failed
        print(f"{fmt} {tactic.name} {m}x{n}x{k}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tactic", default="cooperative:128x128x128", help="schedule:MxNxK")
    parser.add_argument("--fmt", default="mxfp4,nvfp4")
    parser.add_argument("--shape", default="77x384x256", help="MxNxK")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("launch_check: needs a CUDA GPU", file=sys.stderr)
        return 2
    m, n, k = (int(v) for v in args.shape.split("x"))
    ok = [check(fmt, args.tactic, m, n, k) for fmt in args.fmt.split(",")]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
