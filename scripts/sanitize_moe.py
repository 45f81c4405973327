#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A small fused-MoE workload for compute-sanitizer (both grouped GEMM tiles, skewed and empty experts)."""

import torch

from flashinfer_sm12x.kernels.grouped_mm_fp4 import CANDIDATES
from flashinfer_sm12x.moe.fused_moe import fused_moe
from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
from flashinfer_sm12x.testing.moe_cases import make_inputs, make_weights

raw = {k: v.cuda() for k, v in make_weights(8, 320, 192).items()}
w = prepare_gpt_oss_weights(**raw, pad_to=128)
for tactic in CANDIDATES:
    for num_t in (1, 70):
        hidden, logits = make_inputs(num_t, 320, 8)
        out = fused_moe(hidden.cuda(), logits.cuda(), w, top_k=4, tactic=tactic)
        torch.cuda.synchronize()
        print(f"fused_moe {tactic.name} T={num_t}: finite={bool(out.isfinite().all())}", flush=True)
print("sanitizer moe workload done")
