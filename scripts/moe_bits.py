#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The MoE grid's outputs, saved to compare two checkouts bit for bit (a refactor or a kernel change must not move
one bit of fused_moe's or cutlass_fused_moe's output).

Grid: GPT-OSS shapes (H = I = 2880), E = 32 and 128, top-4, T in {1, 7, 64, 300, 2048}, W4A4 and W4A8 weights; router
logits and precomputed ids; skewed routing (every token on the same four experts); the unfused pipeline at two
sizes; a CUDA graph replay; cutlass_fused_moe (FlashInfer's W4A8 convention) at two sizes; and the dense GEMM's
64-row tile (MXFP4, NVFP4) at three shapes. Inputs are seeded and made on the CPU, so both checkouts see the same
bits. Only entry points both checkouts have are used.

    FLASHINFER_SM12X_EMULATE=1 python scripts/moe_bits.py --build-only   # its modules, in parallel
    FLASHINFER_SM12X_EMULATE=1 python scripts/moe_bits.py --out new.pt
    PYTHONPATH=/path/to/old/checkout python scripts/moe_bits.py --out old.pt
    python scripts/moe_bits.py --compare old.pt new.pt
"""

from __future__ import annotations

import argparse
import sys

import torch

TOKENS = (1, 7, 64, 300, 2048)
EXPERTS = (32, 128)
H = INTER = 2880
TOP_K = 4


def _inputs(num_t: int, num_e: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(num_t, H, generator=g) * 2).bfloat16()
    logits = torch.randn(num_t, num_e, generator=g)
    ids = torch.randint(0, num_e, (num_t, TOP_K), generator=g, dtype=torch.int32)
    weights = torch.rand(num_t, TOP_K, generator=g)
    return hidden, logits, ids, weights


def run_grid() -> dict[str, torch.Tensor]:
    import flashinfer_sm12x as fs
    from flashinfer_sm12x.testing.moe_cases import make_weights

    dev = torch.device("cuda")
    out: dict[str, torch.Tensor] = {}
    for num_e in EXPERTS:
        raw = {k: v.to(dev) for k, v in make_weights(num_e, H, INTER, seed=num_e).items()}
        for act in ("mxfp4", "mxfp8"):
            w = fs.prepare_gpt_oss_weights(**raw, pad_to=128, act=act)
            for num_t in TOKENS:
                hidden, logits, ids, tw = (t.to(dev) for t in _inputs(num_t, num_e, 10 * num_t + num_e))
                key = f"E{num_e}/{act}/T{num_t}"
                out[f"{key}/logits"] = fs.fused_moe(hidden, logits, w, top_k=TOP_K)
                out[f"{key}/ids"] = fs.fused_moe(hidden, (ids, tw), w, validate_ids=False)
                skew = torch.zeros_like(logits)
                skew[:, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0], device=dev)
                out[f"{key}/skewed"] = fs.fused_moe(hidden, skew, w, top_k=TOP_K)
                if num_t in (7, 300):
                    out[f"{key}/unfused"] = fs.fused_moe(hidden, logits, w, top_k=TOP_K, fused_epilogue=False)
            hidden, _, ids, tw = (t.to(dev) for t in _inputs(64, num_e, 5))
            fs.fused_moe(hidden, (ids, tw), w, validate_ids=False)  # warm: modules and buffers of this plan
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                y = fs.fused_moe(hidden, (ids, tw), w, validate_ids=False)
            graph.replay()
            out[f"E{num_e}/{act}/graph"] = y.clone()
            del w
        w8 = fs.prepare_gpt_oss_weights(**raw, pad_to=128, interleaved=False, up_first=True, act="mxfp8")
        limit = torch.full((num_e,), 7.0, device=dev)
        for num_t in (5, 300):
            hidden, _, ids, tw = (t.to(dev) for t in _inputs(num_t, num_e, 99 + num_t))
            x = torch.nn.functional.pad(hidden.float(), (0, w8.hidden_size_padded - H))
            xq, xsf = fs.mxfp8_quantize(x, True, 32)
            out[f"E{num_e}/cutlass_fused_moe/T{num_t}"] = fs.cutlass_fused_moe(
                xq, ids, tw, w8.w13, w8.w2, torch.bfloat16, w8.flashinfer_quant_scales(), w8.w13_bias, w8.w2_bias,
                input_sf=xsf, swiglu_alpha=torch.full((num_e,), 1.702, device=dev),
                swiglu_beta=torch.ones(num_e, device=dev), swiglu_limit=limit, use_mxfp8_act_scaling=True)
        del raw, w8
    out.update(dense_cases(dev))
    torch.cuda.synchronize()
    return {k: v.cpu() for k, v in out.items()}


DENSE_SHAPES = ((1, 128, 256), (64, 256, 512), (200, 384, 1024))


def dense_cases(dev: torch.device) -> dict[str, torch.Tensor]:
    """mm_fp4 with the 64-row tile pinned (the mainloop both checkouts must agree on)."""
    import flashinfer_sm12x as fs
    from flashinfer_sm12x.kernels.family import Tactic
    from flashinfer_sm12x.ops import mm_fp4 as op

    out = {}
    for m, n, k in DENSE_SHAPES:
        g = torch.Generator().manual_seed(m + n + k)
        x, w = torch.randn(m, k, generator=g).to(dev), torch.randn(n, k, generator=g).to(dev)
        a, a_sf = fs.mxfp4_quantize(x)
        b, b_sf = fs.mxfp4_quantize(w)
        p = op.validate(a, b.T, a_sf, b_sf.T, None, torch.bfloat16, None, 32, False, False)
        out[f"mm_fp4/mxfp4/{m}x{n}x{k}"] = op.run_tactic(p, Tactic("pingpong", 64, 128, 128))
        gs = torch.tensor([448.0 * 6 / float(x.abs().max())], device=dev)
        gw = torch.tensor([448.0 * 6 / float(w.abs().max())], device=dev)
        (a, a_sf), (b, b_sf) = fs.nvfp4_quantize(x, gs), fs.nvfp4_quantize(w, gw)
        p = op.validate(a, b.T, a_sf, b_sf.T, 1.0 / (gs * gw), torch.bfloat16, None, 16, False, True)
        out[f"mm_fp4/nvfp4/{m}x{n}x{k}"] = op.run_tactic(p, Tactic("pingpong", 64, 128, 128))
    return out


def module_specs(target):  # type: ignore[no-untyped-def]
    """The modules the grid loads: GPT-OSS-20B's deployments for 2048 tokens (every MoE tactic the grid's sizes pick,
    E = 128 included) and the two dense 64-row modules."""
    from flashinfer_sm12x import registry
    from flashinfer_sm12x.kernels.family import Tactic
    from flashinfer_sm12x.kernels.mm_fp4 import FAMILY

    specs = []
    for act in ("mxfp4", "mxfp8"):
        deployment = registry.Deployment(registry.MODELS["gpt-oss-20b"], act, 2048)
        for family in registry.DEPLOYMENT.values():
            specs += family(target, deployment)
    specs += [FAMILY.spec(target, fmt, Tactic("pingpong", 64, 128, 128), torch.bfloat16) for fmt in ("mxfp4", "nvfp4")]
    return specs


def compare(old_path: str, new_path: str) -> int:
    old, new = torch.load(old_path), torch.load(new_path)
    if set(old) != set(new):
        print(f"different cases: only old {sorted(set(old) - set(new))}, only new {sorted(set(new) - set(old))}")
        return 1
    differ = [k for k in old if old[k].shape != new[k].shape
              or not torch.equal(old[k].view(torch.uint8) if old[k].dtype != torch.uint8 else old[k],
                                 new[k].view(torch.uint8) if new[k].dtype != torch.uint8 else new[k])]
    for k in differ:
        diff = (old[k].float() - new[k].float()).abs().max().item() if old[k].shape == new[k].shape else "shape"
        print(f"DIFFERS {k}: max |old - new| = {diff}")
    print(f"moe_bits: {len(old) - len(differ)} of {len(old)} outputs bit-identical")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the grid's outputs here (needs a GPU)")
    parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"))
    parser.add_argument("--build-only", action="store_true", help="build the grid's modules in parallel, then exit")
    parser.add_argument("--jobs", type=int, default=None, help="builds at once with --build-only")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.build_only:
        from flashinfer_sm12x.jit.arch import parse_target
        from flashinfer_sm12x.testing.workloads import build_modules

        return 0 if build_modules(module_specs(parse_target("sm_90a")), "moe_bits", args.jobs) else 1
    if not args.out:
        parser.error("--out or --compare")
    outputs = run_grid()
    torch.save(outputs, args.out)
    print(f"moe_bits: {len(outputs)} outputs written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
