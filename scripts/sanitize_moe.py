#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A small fused-MoE workload for compute-sanitizer: both grouped GEMM tiles, the glue kernels (impl="kernels":
plan from logits over one and several chunks, from int64 ids with out-of-range ids clamped, pre-quantized MXFP8
scatter in both scale layouts, each through plan + scatter and, at decode sizes, plan_scatter) and the torch
pipeline, skewed and empty experts.

    FLASHINFER_SM12X_EMULATE=1 compute-sanitizer --tool memcheck python scripts/sanitize_moe.py
    FLASHINFER_SM12X_EMULATE=1 compute-sanitizer --tool racecheck python scripts/sanitize_moe.py --glue-only
"""

import sys

import torch

from flashinfer_sm12x.formats.quantize import mxfp8_quantize
from flashinfer_sm12x.kernels.grouped_mm_fp4 import CANDIDATES
from flashinfer_sm12x.moe.fused_moe import fused_moe
from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
from flashinfer_sm12x.ops.moe_glue import glue_module, glue_views, plan_and_scatter, row_plan
from flashinfer_sm12x.testing.moe_cases import make_inputs, make_weights


def glue_workload() -> None:
    """Every glue kernel on its own (racecheck is slow: no GEMMs)."""
    dev = torch.device("cuda")
    for act, tactic in (("mxfp4", CANDIDATES[0]), ("mxfp8", CANDIDATES[1])):
        module = glue_module(dev, act)
        for num_t, num_e in ((1, 8), (300, 8), (129, 64), (64, 64)):
            plan = row_plan(num_t, 4, num_e, "mxfp4", tactic, None)
            v = glue_views(dev, plan, 384, 256, act)  # H = 320, I = 192 padded to 128 multiples
            hidden, logits = make_inputs(num_t, 320, num_e)
            ids = torch.randint(-2, num_e + 2, (num_t, 4), dtype=torch.int64, device="cuda")
            weights = torch.rand(num_t, 4, device="cuda")
            # plan + scatter, and plan_scatter (one kernel) where the forward would use it
            for fused in (False, True) if plan.fused_plan_scatter else (False,):
                plan_and_scatter(module, plan, v, logits.cuda(), hidden.cuda(), 384, fused=fused)
                plan_and_scatter(module, plan, v, (ids, weights), hidden.cuda(), 384, fused=fused)
                if act == "mxfp8":
                    for swizzled in (True, False):
                        xq, xsf = mxfp8_quantize(torch.randn(num_t, 384, device="cuda"), swizzled, 32)
                        plan_and_scatter(module, plan, v, (ids, weights), xq.view(torch.uint8), 384,
                                         input_sf=xsf.view(torch.uint8).reshape(-1), swizzled_input_sf=swizzled,
                                         fused=fused)
            v.h.normal_()
            module.activation(v.h, v.workspace, v.a, v.a_sf, num_t, 4, num_e, tactic.tile_m, 0, True, None, None,
                              None, None, None, 1.702, 1.0, 7.0, True)
            v.y.normal_()
            module.finalize(v.y, v.workspace, torch.empty(num_t, 320, device="cuda"), 4, num_e, tactic.tile_m, None,
                            None)
            torch.cuda.synchronize()
            print(f"glue {act} T={num_t} E={num_e}: ok", flush=True)


glue_workload()
if "--glue-only" not in sys.argv:
    raw = {k: v.cuda() for k, v in make_weights(8, 320, 192).items()}
    w = prepare_gpt_oss_weights(**raw, pad_to=128)
    cases = [("kernels", tactic, num_t) for tactic in CANDIDATES for num_t in (1, 70)]
    cases.append(("reference", CANDIDATES[0], 70))
    for impl, tactic, num_t in cases:
        hidden, logits = make_inputs(num_t, 320, 8)
        out = fused_moe(hidden.cuda(), logits.cuda(), w, top_k=4, tactic=tactic, impl=impl)
        torch.cuda.synchronize()
        print(f"fused_moe {impl} {tactic.name} T={num_t}: finite={bool(out.isfinite().all())}", flush=True)
print("sanitizer moe workload done")
