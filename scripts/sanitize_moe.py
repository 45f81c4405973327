#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A small fused-MoE workload for compute-sanitizer; the log names every case as it passes and ends with the count.

--act mxfp4 (default): every W4A4 grouped GEMM tile through fused_moe, the glue kernels on their own
(impl="kernels": plan from logits over one and several chunks, from int32/int64 ids with out-of-range ids clamped,
pre-quantized MXFP8 scatter in both scale layouts, each through plan + scatter and, at decode sizes, the one-kernel
plan_scatter) and the torch pipeline, skewed and empty experts.
--act mxfp8 (W4A8): the W4A8 grouped GEMM, each tactic shipped for the target, on its own against the per-tile
float64 reference; then fused_moe with MXFP8 activations end to end (E = 32, small T, each W4A8 tactic, skewed
routing that leaves most experts without a token, router logits, the torch pipeline) and the FlashInfer-compatible
cutlass_fused_moe, each against the float64 GPT-OSS reference with MXFP8 activations.

    FLASHINFER_SM12X_EMULATE=1 python scripts/sanitize_moe.py --act mxfp8 --build-only   # modules first
    FLASHINFER_SM12X_EMULATE=1 compute-sanitizer --tool memcheck python scripts/sanitize_moe.py [--act mxfp8]
    FLASHINFER_SM12X_EMULATE=1 compute-sanitizer --tool racecheck python scripts/sanitize_moe.py --glue-only
    python scripts/sanitize_moe.py --arch sm_90a --act mxfp8 --list-cases   # the cases and modules, no GPU needed
"""

from __future__ import annotations

import argparse
import sys

import torch

from flashinfer_sm12x.errors import Sm12xError
from flashinfer_sm12x.jit.arch import Target
from flashinfer_sm12x.jit.module import ModuleSpec
from flashinfer_sm12x.kernels.family import Tactic
from flashinfer_sm12x.kernels.grouped_mm_fp4 import ACTIVATIONS, CANDIDATES, gemm_format
from flashinfer_sm12x.kernels.grouped_mm_fp4 import FAMILY as GROUPED
from flashinfer_sm12x.kernels.moe_glue import moe_glue_spec
from flashinfer_sm12x.kernels.quantize import quantize_spec
from flashinfer_sm12x.testing.workloads import build_modules, unique_specs, workload_target

H, INTER = 320, 192  # padded to 384 and 256 inside (128 multiples)
TOL = 0.02  # relative L2 against the float64 reference with the same activation quantization


def glue_workload() -> None:
    """Every glue kernel on its own (racecheck is slow: no GEMMs)."""
    from flashinfer_sm12x.formats.quantize import mxfp8_quantize
    from flashinfer_sm12x.moe.pipeline import glue_views, plan_and_scatter, row_plan
    from flashinfer_sm12x.ops.moe_glue import glue_module
    from flashinfer_sm12x.testing.moe_cases import make_inputs

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


def w4a4_cases() -> list[tuple[str, Tactic, int]]:
    """(impl, tactic, T) of the W4A4 fused_moe runs (E = 8, router logits)."""
    cases = [("kernels", tactic, num_t) for tactic in CANDIDATES for num_t in (1, 70)]
    return [*cases, ("reference", CANDIDATES[0], 70)]


def w4a4_workload() -> int:
    from flashinfer_sm12x.moe.fused_moe import fused_moe
    from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
    from flashinfer_sm12x.testing.moe_cases import make_inputs, make_weights

    raw = {k: v.cuda() for k, v in make_weights(8, H, INTER).items()}
    w = prepare_gpt_oss_weights(**raw, pad_to=128)
    for impl, tactic, num_t in w4a4_cases():
        hidden, logits = make_inputs(num_t, H, 8)
        out = fused_moe(hidden.cuda(), logits.cuda(), w, top_k=4, tactic=tactic, impl=impl)
        torch.cuda.synchronize()
        print(f"fused_moe {impl} {tactic.name} T={num_t}: finite={bool(out.isfinite().all())}", flush=True)
    return len(w4a4_cases())


# --- W4A8 --------------------------------------------------------------------------------------------------------
W4A8_EXPERTS = 32
W4A8_GROUPED_SHAPE = (8, 3, 200, 384)  # experts, M tiles, N (not a multiple of any tile), K (W4A8: 128 multiple)


def skewed_routing(num_t: int, num_e: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token's first expert is 5; the others come from {0..4, 6} and, for token 0 only, the last expert:
    8 of the experts get tokens, the rest none (including the gap 7..num_e-2). Distinct experts per token, random
    positive weights summing to 1."""
    t = torch.arange(num_t)
    ids = torch.stack([torch.full_like(t, 5), t % 3, 3 + t % 2, torch.where(t == 0, num_e - 1, 6)], dim=1)
    w = torch.rand(num_t, 4, generator=torch.Generator().manual_seed(seed)) + 0.05
    return ids.to(torch.int32).cuda(), (w / w.sum(dim=1, keepdim=True)).cuda()


def w4a8_cases(target: Target) -> list[tuple[str, str, Tactic | None, int]]:
    """(entry point, routing, tactic, T) of the W4A8 MoE runs; tactic None: the heuristic's pick."""
    cases: list[tuple[str, str, Tactic | None, int]] = []
    for tactic in GROUPED.shipped("mxfp8_mxfp4", target):
        cases += [("fused_moe kernels", "skewed ids", tactic, 70), ("fused_moe kernels", "skewed ids", tactic, 1),
                  ("fused_moe kernels", "logits", tactic, 5)]
    return [*cases, ("fused_moe reference", "skewed ids", None, 70), ("cutlass_fused_moe", "skewed ids", None, 33)]


def w4a8_workload(target: Target) -> int:
    from flashinfer_sm12x.formats import mxfp8_quantize
    from flashinfer_sm12x.integrations.flashinfer_cutlass_fused_moe import cutlass_fused_moe
    from flashinfer_sm12x.moe.fused_moe import fused_moe
    from flashinfer_sm12x.moe.reference import gpt_oss_moe_reference
    from flashinfer_sm12x.moe.routing import route
    from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
    from flashinfer_sm12x.testing.grouped_mm_fp4_cases import run_grouped_case
    from flashinfer_sm12x.testing.moe_accuracy import relative_l2
    from flashinfer_sm12x.testing.moe_cases import make_inputs, make_weights

    count = 0
    num_e, tiles, n, k = W4A8_GROUPED_SHAPE
    for tactic in GROUPED.shipped("mxfp8_mxfp4", target):
        run_grouped_case(tactic, num_e, tiles, n, k, act="mxfp8")  # asserts against the per-tile reference
        print(f"grouped_mm_fp4 mxfp8_mxfp4 {tactic.name} E={num_e} tiles={tiles} n={n} k={k}: ok", flush=True)
        count += 1

    num_e = W4A8_EXPERTS
    raw_cpu = make_weights(num_e, H, INTER)  # the reference runs on the CPU: no sanitized launches of its own
    raw = {key: v.cuda() for key, v in raw_cpu.items()}
    w = prepare_gpt_oss_weights(**raw, pad_to=128, act="mxfp8")
    w_fi = prepare_gpt_oss_weights(**raw, pad_to=128, act="mxfp8", interleaved=False, up_first=True)
    per_e = {name: torch.full((num_e,), v, device="cuda")
             for name, v in (("swiglu_alpha", 1.702), ("swiglu_beta", 1.0), ("swiglu_limit", 7.0))}
    for entry, routing_kind, tactic, num_t in w4a8_cases(target):
        hidden, logits = make_inputs(num_t, H, num_e)
        hidden = hidden.cuda()
        ids, topk = route(logits.cuda(), 4) if routing_kind == "logits" else skewed_routing(num_t, num_e)
        if entry == "cutlass_fused_moe":
            xq, xsf = mxfp8_quantize(torch.nn.functional.pad(hidden.float(), (0, w_fi.hidden_size_padded - H)), True,
                                     32)
            out = cutlass_fused_moe(xq, ids, topk, w_fi.w13, w_fi.w2, torch.bfloat16, w_fi.flashinfer_quant_scales(),
                                    w_fi.w13_bias, w_fi.w2_bias, xsf, use_mxfp8_act_scaling=True, **per_e)[:, :H]
        else:
            impl = entry.split()[1]
            routing = logits.cuda() if routing_kind == "logits" else (ids, topk)
            out = fused_moe(hidden, routing, w, top_k=4, tactic=tactic, impl=impl)
        torch.cuda.synchronize()
        ref = gpt_oss_moe_reference(hidden.cpu(), (ids.cpu(), topk.cpu()), **raw_cpu, act_quant="mxfp8")
        err = relative_l2(out.cpu(), ref)
        busy = int(torch.bincount(ids.long().flatten(), minlength=num_e).count_nonzero())
        name = tactic.name if tactic else "heuristic tactic"
        print(f"{entry} w4a8 {name} T={num_t} E={num_e} ({routing_kind}, {busy} experts with tokens): "
              f"rel L2 {err:.2e}", flush=True)
        if not err < TOL:
            raise AssertionError(f"{entry} {name} T={num_t}: rel L2 {err:.2e} against the reference (limit {TOL})")
        count += 1
    return count


def modules(target: Target, act: str, glue_only: bool) -> list[ModuleSpec]:
    """The modules the workload loads."""
    specs = [moe_glue_spec(target, "mxfp4"), moe_glue_spec(target, "mxfp8")] if act == "mxfp4" else []
    if glue_only:
        return specs
    fmt = gemm_format(act)
    tactics = CANDIDATES if act == "mxfp4" else GROUPED.shipped(fmt, target)
    specs += [GROUPED.spec(target, fmt, tactic, torch.bfloat16) for tactic in tactics]
    # the glue kernels of fused_moe's kernels path; the quantizer of its torch pipeline (impl="reference")
    specs += [moe_glue_spec(target, act), quantize_spec(target, act)]
    return unique_specs(specs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--act", choices=ACTIVATIONS, default="mxfp4",
                        help="mxfp4: W4A4 and the glue kernels (default); mxfp8: the W4A8 GEMMs and MoE")
    parser.add_argument("--glue-only", action="store_true", help="only the glue kernels (with --act mxfp4)")
    parser.add_argument("--arch", default=None, help="target (default: this GPU's)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--build-only", action="store_true", help="build the workload's modules and exit")
    what.add_argument("--list-cases", action="store_true", help="print the cases and modules and exit")
    args = parser.parse_args()
    if args.glue_only and args.act != "mxfp4":
        parser.error("--glue-only runs the glue kernels of both formats; leave --act at mxfp4")
    try:
        target = workload_target(args.arch)
    except (RuntimeError, Sm12xError) as exc:
        parser.error(str(exc))
    specs = modules(target, args.act, args.glue_only)
    if args.list_cases:
        if args.act == "mxfp8":
            num_e, tiles, n, k = W4A8_GROUPED_SHAPE
            for tactic in GROUPED.shipped("mxfp8_mxfp4", target):
                print(f"case grouped_mm_fp4 mxfp8_mxfp4 {tactic.name} E={num_e} tiles={tiles} n={n} k={k}")
            for entry, routing_kind, tactic, num_t in w4a8_cases(target):
                print(f"case {entry} w4a8 {tactic.name if tactic else 'heuristic tactic'} T={num_t} "
                      f"E={W4A8_EXPERTS} ({routing_kind})")
        else:
            print("case glue kernels mxfp4, mxfp8: T in (1, 300, 129), E in (8, 8, 64)")
            if not args.glue_only:
                for impl, tactic, num_t in w4a4_cases():
                    print(f"case fused_moe {impl} w4a4 {tactic.name} T={num_t} E=8 (logits)")
        for spec in specs:
            print(f"module {spec.op}/{spec.group}/{spec.target_name}")
        return 0
    if args.build_only:
        return 0 if build_modules(specs, "sanitize_moe") else 1

    print(f"target {target.name}: act {args.act}{' (glue only)' if args.glue_only else ''}", flush=True)
    if args.act == "mxfp8":
        count = w4a8_workload(target)
    else:
        glue_workload()
        count = 6 + (0 if args.glue_only else w4a4_workload())
    print(f"sanitizer moe workload done: {count} cases", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
