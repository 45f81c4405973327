# SPDX-License-Identifier: Apache-2.0
"""The MoE glue family `moe_glue` (include/flashinfer_sm12x/moe/{routing,glue,plan_scatter,finalize}.cuh,
jit/moe_glue.cu.jinja): the kernels around the two grouped GEMMs of the fused MoE.

    K1 plan          router logits (top-k + softmax) or precomputed ids -> ids, weights, stable ranks, per-expert
                     counts, tile-padded expert starts, expert_of_tile (one launch; the last CTA scans)
    K2 scatter       one CTA per (token, slot) pair: its dest row, and the hidden row gathered there and quantized
                     to the activation format (or pre-quantized MXFP8 rows and scales copied); padding rows' scales
                     zeroed, their data left as it is (their GEMM outputs are never read)
    K1+K2 plan_scatter   decode sizes (T <= FUSED_MAX_TOKENS, T*k <= FUSED_MAX_PAIRS): one CTA per pair, each
                     computing the whole plan in shared memory, then its row; the same workspace and bytes as K1 + K2
    K3 activation    one CTA per pair: GEMM1 row -> g1, fc1 bias, SwiGLU (GPT-OSS clamp or plain) -> activation
                     format; padding rows' scales zeroed
    K4 finalize      out[t] = sum_s w[t, s] * (g2[e] * y[dest] + b2[e]), float32, slot order, no atomics

One module per (target, activation format); input dtypes are run-time choices among instantiations in the module.
The kernels use no block-scaled MMA, so the sm_90a build is a native SM90 build (its H200 timings are real), and
the compile proof requires the quantizer's conversion instruction and no spills.
"""

from __future__ import annotations

from ..jit.arch import Target
from ..jit.module import ModuleSpec, Source
from ..jit.render import render
from .family import VariantFamily

MENU = {"act_format": ("mxfp4", "mxfp8")}
# Limits the kernels are written for (include/flashinfer_sm12x/moe/routing.cuh).
MAX_EXPERTS = 512
MAX_TOP_K = 16
TOKENS_PER_CHUNK = 128  # tokens per plan CTA
# What plan_scatter serves (include/flashinfer_sm12x/moe/plan_scatter.cuh): one plan chunk, every pair's id and
# weight in shared memory. ops/moe_glue.py picks it below these limits (fused_plan_scatter_serves).
FUSED_MAX_TOKENS = TOKENS_PER_CHUNK
FUSED_MAX_PAIRS = 1024
# What the compile proof requires in the SASS: the native e2m1 / e4m3 conversion on SM12x (F2FP ... E2M1 / E4M3),
# none on sm_90a for e2m1 (an exact integer path) but the e4m3 one exists there.
REQUIRED_INSTRUCTION = {("mxfp4", True): "F2FP.SATFINITE.E2M1.F32", ("mxfp8", True): "F2FP.SATFINITE.E4M3.F32",
                        ("mxfp8", False): "F2FP.SATFINITE.E4M3.F32"}


def moe_glue_spec(target: Target, act_format: str) -> ModuleSpec:
    """The glue module of `act_format` ("mxfp4" or "mxfp8") for `target` (values checked against MENU)."""
    text = render("moe_glue.cu.jinja", {"act_format": act_format}, MENU)
    return ModuleSpec(op="moe_glue", group=act_format, target=target, sources=(Source("moe_glue.cu", text),))


def required_instruction(act_format: str, target: Target) -> str | None:
    """The conversion instruction the compile proof looks for (None: the exact software path, nothing to find)."""
    return REQUIRED_INSTRUCTION.get((act_format, not target.emulated))


FAMILY = VariantFamily("moe_glue", MENU["act_format"], moe_glue_spec, required_instruction)
