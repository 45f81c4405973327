#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Concurrency stress of the public ops on a GPU: what a serving process does to a kernel library.

Modes (each runs every op kind, interleaved at random per thread, seeded):
  streams  N threads, each on its own CUDA stream;
  shared   N threads on one shared stream;
  graph    one thread captures fused_moe into a CUDA graph (thread-local capture mode) and replays it while the
           other threads run eagerly on their own streams.
Every output is compared bit for bit with a serial run of the same call made before the threads start. The report
counts calls, mismatches and errors per (mode, op), and the sizes of the host caches afterwards (they must stay
bounded). Exit status 0 only when every call ran and matched.

Ops: mm_fp4 (MXFP4 and NVFP4 at three shapes, the heuristic's tactic and one pinned tactic), mm_mxfp8_mxfp4 (W4A8),
fused_moe (W4A4 and W4A8 weights, T = 1, 7 and 64, router logits and precomputed ids) and the three quantizers.
Only public entry points are used, so the same script runs against an older checkout of the package.

    FLASHINFER_SM12X_EMULATE=1 python tests/stress/stress_concurrency.py --build-only    # the modules, in parallel
    FLASHINFER_SM12X_EMULATE=1 python tests/stress/stress_concurrency.py --threads 8 --calls 1200 --csv out.csv
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import random
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

OPS = ("mm_fp4", "fused_moe", "quantize")
MM_SHAPES = ((1, 256, 512), (77, 384, 256), (300, 512, 1024))
H, INTER, NUM_E, TOP_K = 320, 192, 8, 4  # fused_moe's layer (padded to 384 / 256 inside)


def _pinned() -> dict[str, Any]:
    from flashinfer_sm12x.kernels.family import Tactic

    return {"mxfp4": Tactic("cooperative", 128, 128, 128), "nvfp4": Tactic("cooperative", 128, 128, 128)}


PINNED = _pinned()  # proven for both formats on every target (the batch-invariant tactic)


@dataclass
class Case:
    name: str
    op: str
    run: Callable[[], Any]


def _bytes(x: Any) -> list[torch.Tensor]:
    """An output as a list of byte views (tuples of tensors flattened)."""
    if isinstance(x, torch.Tensor):
        return [x.detach().contiguous().view(torch.uint8).reshape(-1)]
    return [t for part in x for t in _bytes(part)]


def same_bits(a: Any, b: Any) -> bool:
    xs, ys = _bytes(a), _bytes(b)
    return len(xs) == len(ys) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(xs, ys, strict=True))


def make_cases(device: torch.device, ops: tuple[str, ...] = OPS) -> list[Case]:
    """Every call the threads make for the op kinds `ops`, with its inputs made once (outputs are fresh tensors)."""
    import flashinfer_sm12x as fs
    from flashinfer_sm12x.ops import mm_fp4 as dense_op
    from flashinfer_sm12x.testing.moe_cases import make_weights

    g = torch.Generator().manual_seed(0)
    cases: list[Case] = []
    for fmt in ("mxfp4", "nvfp4") if "mm_fp4" in ops else ():
        for m, n, k in MM_SHAPES:
            x = torch.randn(m, k, generator=g).to(device, torch.bfloat16)
            w = torch.randn(n, k, generator=g).to(device, torch.bfloat16)
            if fmt == "mxfp4":
                (a, a_sf), (b, b_sf) = fs.mxfp4_quantize(x), fs.mxfp4_quantize(w)
                kw: dict[str, Any] = dict(block_size=32, use_nvfp4=False)
            else:
                gs = torch.tensor([448.0 * 6 / float(x.abs().max())], device=device)
                gw = torch.tensor([448.0 * 6 / float(w.abs().max())], device=device)
                (a, a_sf), (b, b_sf) = fs.nvfp4_quantize(x, gs), fs.nvfp4_quantize(w, gw)
                kw = dict(block_size=16, use_nvfp4=True, alpha=1.0 / (gs * gw))
            args = (a, b.T, a_sf, b_sf.T)
            cases.append(Case(f"mm_fp4/{fmt}/{m}x{n}x{k}", "mm_fp4",
                              lambda args=args, kw=kw: fs.mm_fp4(*args, **kw, backend="cutlass_sm12x")))
            if (m, n, k) == MM_SHAPES[1]:  # one pinned tactic beside the heuristic's

                def pinned(args: tuple = args, kw: dict = kw, fmt: str = fmt) -> torch.Tensor:
                    p = dense_op.validate(*args, kw.get("alpha"), torch.bfloat16, None, kw["block_size"], False,
                                          kw["use_nvfp4"])
                    return dense_op.run_tactic(p, PINNED[fmt])

                cases.append(Case(f"mm_fp4/{fmt}/{m}x{n}x{k}/{PINNED[fmt].name}", "mm_fp4", pinned))
    if "mm_fp4" in ops:
        x8, x8_sf = fs.mxfp8_quantize(torch.randn(64, 512, generator=g).to(device, torch.bfloat16), True, 32)
        w4, w4_sf = fs.mxfp4_quantize(torch.randn(256, 512, generator=g).to(device, torch.bfloat16))
        cases.append(Case("mm_mxfp8_mxfp4/64x256x512", "mm_fp4",
                          lambda: fs.mm_mxfp8_mxfp4(x8, w4.T, x8_sf, w4_sf.T)))

    raw = {name: t.to(device) for name, t in make_weights(NUM_E, H, INTER, seed=3).items()}
    for act in ("mxfp4", "mxfp8") if "fused_moe" in ops else ():
        weights = fs.prepare_gpt_oss_weights(**raw, pad_to=128, act=act)
        for num_t in (1, 7, 64):
            hidden = (torch.randn(num_t, H, generator=g) * 2).to(device, torch.bfloat16)
            logits = torch.randn(num_t, NUM_E, generator=g).to(device)
            ids = torch.randint(0, NUM_E, (num_t, TOP_K), generator=g, dtype=torch.int32).to(device)
            tw = torch.rand(num_t, TOP_K, generator=g).to(device)
            cases.append(Case(f"fused_moe/{act}/T{num_t}/logits", "fused_moe",
                              lambda h=hidden, r=logits, w=weights: fs.fused_moe(h, r, w, top_k=TOP_K)))
            cases.append(Case(f"fused_moe/{act}/T{num_t}/ids", "fused_moe",
                              lambda h=hidden, r=(ids, tw), w=weights: fs.fused_moe(h, r, w, validate_ids=False)))

    for rows, cols in ((1, 2880), (96, 512), (1000, 1024)) if "quantize" in ops else ():
        x = torch.randn(rows, cols, generator=g).to(device, torch.bfloat16)
        gs = torch.tensor([448.0 * 6 / float(x.abs().max())], device=device)
        cases.append(Case(f"quantize/mxfp4/{rows}x{cols}", "quantize", lambda x=x: fs.mxfp4_quantize(x)))
        cases.append(Case(f"quantize/mxfp8/{rows}x{cols}", "quantize", lambda x=x: fs.mxfp8_quantize(x, True, 32)))
        cases.append(Case(f"quantize/nvfp4/{rows}x{cols}", "quantize", lambda x=x, gs=gs: fs.nvfp4_quantize(x, gs)))
    return cases


@dataclass
class Tally:
    calls: Counter
    mismatches: Counter
    errors: Counter
    first_errors: list[str]
    lock: threading.Lock

    @classmethod
    def new(cls) -> Tally:
        return cls(Counter(), Counter(), Counter(), [], threading.Lock())

    def add(self, op: str, ok: bool | None, error: str | None = None) -> None:
        with self.lock:
            self.calls[op] += 1
            if error is not None:
                self.errors[op] += 1
                if len(self.first_errors) < 5:
                    self.first_errors.append(error)
            elif not ok:
                self.mismatches[op] += 1


def worker(cases: list[Case], refs: dict[str, Any], calls: int, seed: int, stream: torch.cuda.Stream,
           tally: Tally, stop: threading.Event) -> None:
    """`calls` calls, cycling the op kinds, a random case of each; every output checked against its serial run."""
    rng = random.Random(seed)
    kinds = sorted({c.op for c in cases})
    by_op = {op: [c for c in cases if c.op == op] for op in kinds}
    with torch.cuda.stream(stream):
        for i in range(calls):
            if stop.is_set():
                return
            case = rng.choice(by_op[kinds[i % len(kinds)]])
            try:
                out = case.run()
                stream.synchronize()
                tally.add(case.op, same_bits(out, refs[case.name]))
            except Exception as exc:  # a CUDA error poisons the context: record it and stop every thread
                tally.add(case.op, None, f"{case.name}: {type(exc).__name__}: {exc}".splitlines()[0][:300])
                if "CUDA" in str(exc) or "cuda" in type(exc).__name__.lower():
                    stop.set()
                    return


def graph_worker(cases: list[Case], refs: dict[str, Any], replays: int, tally: Tally, stop: threading.Event) -> None:
    """Capture the precomputed-ids fused_moe cases into one CUDA graph on this thread's stream (thread-local
    capture: other threads keep launching), then replay it `replays` times, checking every replay."""
    stream = torch.cuda.Stream()
    chosen = [c for c in cases if c.op == "fused_moe" and c.name.endswith("/ids")]
    try:
        with torch.cuda.stream(stream):
            for c in chosen:  # warm: modules loaded, workspaces allocated on this stream
                c.run()
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                outs = [c.run() for c in chosen]
            for _ in range(replays):
                if stop.is_set():
                    return
                graph.replay()
                stream.synchronize()
                for c, out in zip(chosen, outs, strict=True):
                    tally.add("fused_moe(graph)", same_bits(out, refs[c.name]))
    except Exception as exc:
        tally.add("fused_moe(graph)", None, f"graph: {type(exc).__name__}: {exc}".splitlines()[0][:300])
        stop.set()


def run_mode(mode: str, cases: list[Case], refs: dict[str, Any], threads: int, calls: int) -> Tally:
    tally, stop = Tally.new(), threading.Event()
    shared = torch.cuda.Stream()
    workers = []
    for i in range(threads):
        if mode == "graph" and i == 0:
            workers.append(threading.Thread(target=graph_worker, args=(cases, refs, max(calls // 10, 10), tally,
                                                                      stop)))
            continue
        stream = shared if mode == "shared" else torch.cuda.Stream()
        workers.append(threading.Thread(target=worker, args=(cases, refs, calls, 1000 * i + 7, stream, tally, stop)))
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return tally


def cache_sizes() -> dict[str, int]:
    """Sizes of the package's host caches that a serving loop grows (where this checkout has them)."""
    import importlib

    sizes: dict[str, int] = {}
    for module, name in (("flashinfer_sm12x.ops.mm_fp4", "_PLANS"), ("flashinfer_sm12x.moe.pipeline", "_WORKSPACES"),
                         ("flashinfer_sm12x.ops.moe_glue", "_BUFFERS"), ("flashinfer_sm12x.jit.module", "_loaded")):
        with contextlib.suppress(ImportError, AttributeError):
            sizes[f"{module.rsplit('.', 1)[1]}.{name}"] = len(getattr(importlib.import_module(module), name))
    return sizes


def module_specs(target: Any) -> list[Any]:
    """The modules the cases load on `target` (for --build-only, so they build in parallel before the run)."""
    from flashinfer_sm12x.kernels.grouped_mm_fp4 import FAMILY as GROUPED
    from flashinfer_sm12x.kernels.grouped_mm_fp4 import gemm_format
    from flashinfer_sm12x.kernels.mm_fp4 import FAMILY as DENSE
    from flashinfer_sm12x.kernels.moe_glue import moe_glue_spec
    from flashinfer_sm12x.kernels.quantize import quantize_spec
    from flashinfer_sm12x.moe.pipeline import row_plan

    specs = [quantize_spec(target, fmt) for fmt in ("mxfp4", "mxfp8", "nvfp4")]
    for fmt in ("mxfp4", "nvfp4"):
        specs += [DENSE.spec(target, fmt, DENSE.heuristic(m, n, k, fmt, target)[0], "bfloat16")
                  for m, n, k in MM_SHAPES]
        specs.append(DENSE.spec(target, fmt, PINNED[fmt], "bfloat16"))
    w4a8 = DENSE.heuristic(64, 256, 512, "mxfp8_mxfp4", target)[0]
    specs.append(DENSE.spec(target, "mxfp8_mxfp4", w4a8, "bfloat16"))
    for act in ("mxfp4", "mxfp8"):
        specs.append(moe_glue_spec(target, act))
        for num_t in (1, 7, 64):
            tactic = row_plan(num_t, TOP_K, NUM_E, gemm_format(act), None, target).tactic
            specs += [GROUPED.spec(target, gemm_format(act), tactic, "bfloat16", epilogue)
                      for epilogue in ("store", "swiglu_quantize", "store_routed")
                      if GROUPED.serves(epilogue, gemm_format(act), tactic)]
    return specs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--calls", type=int, default=1200, help="calls per thread (op kinds cycled)")
    parser.add_argument("--modes", default="streams,shared,graph")
    parser.add_argument("--ops", default=",".join(OPS), help="restrict the cases to these op kinds")
    parser.add_argument("--build-only", action="store_true", help="build the modules the cases load, then exit")
    parser.add_argument("--csv", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("stress_concurrency: needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0)
    print(f"device: {torch.cuda.get_device_name(device)}; threads {args.threads}, calls per thread {args.calls}")
    if args.build_only:
        from flashinfer_sm12x.jit.arch import device_facts
        from flashinfer_sm12x.testing.workloads import build_modules

        return 0 if build_modules(module_specs(device_facts(device).target), "stress_concurrency") else 1
    cases = make_cases(device, tuple(args.ops.split(",")))
    t0 = time.time()
    refs, broken = {}, []
    for c in cases:  # the serial run: loads every module, allocates every cache
        try:
            refs[c.name] = c.run()
            torch.cuda.synchronize()
        except Exception as exc:  # a case that fails alone is not a concurrency result: reported, left out
            broken.append(c.name)
            print(f"serial run: {c.name} raised {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    if broken and any("CUDA error" in line for line in broken):
        return 1
    cases = [c for c in cases if c.name not in broken]
    print(f"{len(cases)} cases; serial reference run in {time.time() - t0:.1f} s; caches {cache_sizes()}")
    rows, failed = [], False
    for mode in args.modes.split(","):
        t0 = time.time()
        tally = run_mode(mode, cases, refs, args.threads, args.calls)
        seconds = time.time() - t0
        for op in sorted(tally.calls):
            row = {"mode": mode, "op": op, "threads": args.threads, "calls": tally.calls[op],
                   "mismatches": tally.mismatches[op], "errors": tally.errors[op], "seconds": round(seconds, 1)}
            rows.append(row)
            print(f"{mode:8} {op:18} calls {row['calls']:6} mismatches {row['mismatches']:4} errors {row['errors']:4}")
        for error in tally.first_errors:
            print(f"  error: {error}")
        failed |= bool(sum(tally.mismatches.values()) or sum(tally.errors.values()))
        if any("CUDA" in e for e in tally.first_errors):
            print("  a CUDA error poisoned the context: the remaining modes are not run")
            failed = True
            break
    print(f"caches after: {cache_sizes()}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["mode"])
            writer.writeheader()
            writer.writerows(rows)
    if broken:
        print(f"stress_concurrency: {len(broken)} case(s) failed on their own in the serial run: {broken}")
    print("stress_concurrency: " + ("FAILED" if failed or broken else "all calls bit-identical to the serial run"))
    return 1 if failed or broken else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
