#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The MoE grid's outputs, saved to compare two checkouts bit for bit (a refactor or a kernel change must not move
one bit of fused_moe's or cutlass_fused_moe's output).

Grid: GPT-OSS shapes (H = I = 2880), E = 32 and 128, top-4, T in {1, 7, 64, 300, 2048}, W4A4 and W4A8 weights;
router logits and precomputed ids; skewed routing (every token on the same four experts); the unfused pipeline at
two sizes; a CUDA graph replay; one expert-parallel rank (1 of 3, global ids) at T = 1 and 64; cutlass_fused_moe
(FlashInfer's W4A8 convention) at two sizes; and the dense GEMM's 64-row tile (MXFP4, NVFP4) at three shapes. Inputs
are seeded and made on the CPU, so both checkouts see the same bits. Only entry points both checkouts have are used.

    FLASHINFER_SM12X_EMULATE=1 python scripts/moe_bits.py --build-only   # its modules, in parallel
    FLASHINFER_SM12X_EMULATE=1 python scripts/moe_bits.py --out new.json
    PYTHONPATH=/path/to/old/checkout python scripts/moe_bits.py --out old.json
    python scripts/moe_bits.py --compare old.json new.json

Each output is kept as its shape, dtype and the sha256 of its bytes (a few KB for the whole grid, so the two runs'
files travel anywhere); a case that raises is recorded with its error instead of stopping the grid.
"""

# ruff: noqa: B023  (every case's lambda is called at once by _record: no late binding to go wrong)
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable

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


def digest(t: torch.Tensor) -> dict[str, object]:
    """What two runs compare: shape, dtype and the sha256 of the bytes (plus a magnitude, for reading a log)."""
    t = t.detach().contiguous().cpu()
    return {"shape": list(t.shape), "dtype": str(t.dtype),
            "sha256": hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest(),
            "absmax": float(t.float().abs().max()) if t.numel() else 0.0}


def _record(out: dict[str, object], key: str, fn: Callable[[], torch.Tensor]) -> None:
    try:
        out[key] = digest(fn())
    except Exception as exc:  # the grid goes on; the comparison reports the case
        out[key] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}


def run_grid() -> dict[str, object]:
    import flashinfer_sm12x as fs
    from flashinfer_sm12x.testing.moe_cases import make_weights

    dev = torch.device("cuda")
    out: dict[str, object] = {}
    for num_e in EXPERTS:
        raw = {k: v.to(dev) for k, v in make_weights(num_e, H, INTER, seed=num_e).items()}
        for act in ("mxfp4", "mxfp8"):
            w = fs.prepare_gpt_oss_weights(**raw, pad_to=128, act=act)
            for num_t in TOKENS:
                hidden, logits, ids, tw = (t.to(dev) for t in _inputs(num_t, num_e, 10 * num_t + num_e))
                key = f"E{num_e}/{act}/T{num_t}"
                _record(out, f"{key}/logits", lambda: fs.fused_moe(hidden, logits, w, top_k=TOP_K))
                _record(out, f"{key}/ids", lambda: fs.fused_moe(hidden, (ids, tw), w, validate_ids=False))
                skew = torch.zeros_like(logits)
                skew[:, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0], device=dev)
                _record(out, f"{key}/skewed", lambda: fs.fused_moe(hidden, skew, w, top_k=TOP_K))
                if num_t in (7, 300):
                    _record(out, f"{key}/unfused",
                            lambda: fs.fused_moe(hidden, logits, w, top_k=TOP_K, fused_epilogue=False))
            hidden, _, ids, tw = (t.to(dev) for t in _inputs(64, num_e, 5))

            def replayed() -> torch.Tensor:
                fs.fused_moe(hidden, (ids, tw), w, validate_ids=False)  # warm: modules and buffers of this plan
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    y = fs.fused_moe(hidden, (ids, tw), w, validate_ids=False)
                graph.replay()
                return y.clone()

            _record(out, f"E{num_e}/{act}/graph", replayed)
            # Expert parallelism: rank 1 of 3 (a contiguous slice of the experts), global ids.
            offset = count = num_e // 3
            w_ep = fs.prepare_gpt_oss_weights(**{k: v[offset:offset + count] for k, v in raw.items()}, pad_to=128,
                                              act=act)
            for num_t in (1, 64):
                hidden, _, ids, tw = (t.to(dev) for t in _inputs(num_t, num_e, 7 * num_t + num_e))
                _record(out, f"E{num_e}/{act}/T{num_t}/ep_rank1_of_3", lambda: fs.fused_moe(
                    hidden, (ids, tw), w_ep, validate_ids=False, expert_offset=offset, num_global_experts=num_e))
        w8 = fs.prepare_gpt_oss_weights(**raw, pad_to=128, interleaved=False, up_first=True, act="mxfp8")
        limit = torch.full((num_e,), 7.0, device=dev)
        for num_t in (5, 300):
            hidden, _, ids, tw = (t.to(dev) for t in _inputs(num_t, num_e, 99 + num_t))
            x = torch.nn.functional.pad(hidden.float(), (0, w8.hidden_size_padded - H))
            xq, xsf = fs.mxfp8_quantize(x, True, 32)
            _record(out, f"E{num_e}/cutlass_fused_moe/T{num_t}", lambda: fs.cutlass_fused_moe(
                xq, ids, tw, w8.w13, w8.w2, torch.bfloat16, w8.flashinfer_quant_scales(), w8.w13_bias, w8.w2_bias,
                input_sf=xsf, swiglu_alpha=torch.full((num_e,), 1.702, device=dev),
                swiglu_beta=torch.ones(num_e, device=dev), swiglu_limit=limit, use_mxfp8_act_scaling=True))
    dense_cases(dev, out)
    torch.cuda.synchronize()
    return out


DENSE_SHAPES = ((1, 128, 256), (64, 256, 512), (200, 384, 1024))


def _dense_tactics():  # type: ignore[no-untyped-def]
    from flashinfer_sm12x.kernels.family import Tactic

    # the 64-row mainloop both checkouts must agree on, and CUTLASS's Cooperative 128x128 beside it
    return (Tactic("pingpong", 64, 128, 128), Tactic("cooperative", 128, 128, 128))


def dense_cases(dev: torch.device, out: dict[str, object]) -> None:
    """mm_fp4 (MXFP4 and NVFP4) with each of `_dense_tactics` pinned."""
    import flashinfer_sm12x as fs
    from flashinfer_sm12x.ops import mm_fp4 as op

    for m, n, k in DENSE_SHAPES:
        g = torch.Generator().manual_seed(m + n + k)
        x, w = torch.randn(m, k, generator=g).to(dev), torch.randn(n, k, generator=g).to(dev)
        a4, a4_sf = fs.mxfp4_quantize(x)
        b4, b4_sf = fs.mxfp4_quantize(w)
        gs = torch.tensor([448.0 * 6 / float(x.abs().max())], device=dev)
        gw = torch.tensor([448.0 * 6 / float(w.abs().max())], device=dev)
        (an, an_sf), (bn, bn_sf) = fs.nvfp4_quantize(x, gs), fs.nvfp4_quantize(w, gw)
        for tactic in _dense_tactics():
            _record(out, f"mm_fp4/mxfp4/{m}x{n}x{k}/{tactic.name}", lambda t=tactic: op.run_tactic(
                op.validate(a4, b4.T, a4_sf, b4_sf.T, None, torch.bfloat16, None, 32, False, False), t))
            _record(out, f"mm_fp4/nvfp4/{m}x{n}x{k}/{tactic.name}", lambda t=tactic: op.run_tactic(
                op.validate(an, bn.T, an_sf, bn_sf.T, 1.0 / (gs * gw), torch.bfloat16, None, 16, False, True), t))


def module_specs(target):  # type: ignore[no-untyped-def]
    """The modules the grid loads: GPT-OSS-20B's deployments for 2048 tokens (every MoE tactic the grid's sizes pick,
    E = 128 included) and the two dense 64-row modules."""
    from flashinfer_sm12x import registry
    from flashinfer_sm12x.kernels.mm_fp4 import FAMILY

    specs = []
    for act in ("mxfp4", "mxfp8"):
        deployment = registry.Deployment(registry.MODELS["gpt-oss-20b"], act, 2048)
        for family in registry.DEPLOYMENT.values():
            specs += family(target, deployment)
    specs += [FAMILY.spec(target, fmt, t, torch.bfloat16) for fmt in ("mxfp4", "nvfp4") for t in _dense_tactics()]
    return specs


def compare(old_path: str, new_path: str) -> int:
    with open(old_path) as f:
        old = json.load(f)
    with open(new_path) as f:
        new = json.load(f)
    if set(old) != set(new):
        print(f"different cases: only old {sorted(set(old) - set(new))}, only new {sorted(set(new) - set(old))}")
        return 1
    failed = [k for k in old if "error" in old[k] or "error" in new[k]]
    differ = [k for k in old if k not in failed and old[k] != new[k]]
    for k in failed:
        print(f"ERROR {k}: old {old[k].get('error', 'ran')}; new {new[k].get('error', 'ran')}")
    for k in differ:
        print(f"DIFFERS {k}: old {old[k]}, new {new[k]}")
    same = len(old) - len(differ) - len(failed)
    print(f"moe_bits: {same} of {len(old)} outputs bit-identical, {len(differ)} differ, {len(failed)} raised")
    return 1 if differ or failed else 0


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
    with open(args.out, "w") as f:
        json.dump(outputs, f, indent=1, sort_keys=True)
    errors = [k for k, v in outputs.items() if "error" in v]
    for k in errors:
        print(f"ERROR {k}: {outputs[k]['error']}")
    print(f"moe_bits: {len(outputs)} outputs written to {args.out} ({len(errors)} raised)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
