# SPDX-License-Identifier: Apache-2.0
"""The binding's launch cache on a GPU (SM90 through the emulated MMA atom; the host path is the same natively):
a repeated call hits, a call with any operand at another address misses and reads that operand (a stale TMA
descriptor would read the old one), and a stream-K hit re-initialises its workspace."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels.family import Tactic
from flashinfer_sm12x.ops import mm_fp4 as op
from flashinfer_sm12x.testing.gemm_reference import mm_fp4_reference
from flashinfer_sm12x.testing.mm_fp4_cases import TOLERANCE, make_operands, prebuild

pytestmark = [pytest.mark.emulation, pytest.mark.usefixtures("emulate")]

DECODE = Tactic("pingpong", 128, 32, 128)  # the heuristic's pick for decode on a narrow layer
STREAM_K = Tactic("streamk", 128, 128, 128)  # the one tactic with a workspace (stream-K reduction flags)


@pytest.fixture(scope="module", autouse=True)
def _prebuilt() -> None:
    prebuild([("mxfp4", DECODE, torch.bfloat16), ("mxfp4", STREAM_K, torch.bfloat16)], parse_target("sm_90a"))


def _check(out: torch.Tensor, ops: dict) -> None:
    ref = mm_fp4_reference(ops["a"], ops["b"], ops["a_descale"], ops["b_descale"], ops["alpha"], torch.float64,
                           32, False)
    err = (out.double() - ref).abs()
    bound = TOLERANCE[out.dtype] * ref.abs() + 1e-5 * (ref.abs().max().item() or 1.0)
    assert not out.isnan().any() and bool((err <= bound).all()), f"max error {err.max().item():.3e}"


def _launch(ops: dict, out: torch.Tensor, tactic: Tactic) -> op.Plan:
    p = op.validate(ops["a"], ops["b"], ops["a_descale"], ops["b_descale"], ops["alpha"], torch.bfloat16, out, 32,
                    False, False)
    pl = op.plan(p, tactic)
    op.run(p, pl)
    torch.cuda.synchronize()
    return pl


def test_repeated_call_hits_and_a_moved_operand_misses() -> None:
    m, n, k = 5, 200, 640
    first = make_operands("mxfp4", m, n, k, seed=1)
    other = make_operands("mxfp4", m, n, k, seed=2)  # different values at different addresses
    first["alpha"] = torch.tensor([0.5], device="cuda")
    other["alpha"] = torch.tensor([-2.0], device="cuda")
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    pl = _launch(first, out, DECODE)
    _check(out, first)
    module = pl.module
    hits, misses = module.launch_cache_hits(), module.launch_cache_misses()
    out.fill_(float("nan"))
    _launch(first, out, DECODE)
    _check(out, first)
    assert module.launch_cache_hits() == hits + 1 and module.launch_cache_misses() == misses

    current = dict(first)
    for name in ("a", "b", "a_descale", "b_descale", "alpha"):
        current[name] = other[name]
        out.fill_(float("nan"))
        misses = module.launch_cache_misses()
        _launch(current, out, DECODE)
        assert module.launch_cache_misses() == misses + 1, f"moving {name} must miss the cache"
        _check(out, current)
    moved_out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    _launch(current, moved_out, DECODE)
    _check(moved_out, current)
    current["alpha"] = None  # alpha = 1: the null pointer is part of the key too
    _launch(current, moved_out, DECODE)
    _check(moved_out, current)


def test_stream_k_hit_reinitialises_its_workspace() -> None:
    """Two CTAs per output tile reduce through the workspace's flags; a hit must zero them again, or the second
    call would read the first call's flags (garbage here) and sum the wrong partials."""
    m, n, k = 128, 128, 16384  # one output tile: stream-K splits its K over many CTAs
    ops = make_operands("mxfp4", m, n, k, seed=7)
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    p = op.validate(ops["a"], ops["b"], ops["a_descale"], ops["b_descale"], None, torch.bfloat16, out, 32, False,
                    False)
    pl = op.plan(p, STREAM_K)
    assert pl.workspace_bytes > 0
    workspace = torch.empty(pl.workspace_bytes, dtype=torch.uint8, device="cuda")
    hits = pl.module.launch_cache_hits()
    for _ in range(3):
        out.fill_(float("nan"))
        workspace.random_(0, 256)
        pl.launch(p.a, p.b, p.sfa, p.sfb, None, out, workspace, False)
        torch.cuda.synchronize()
        _check(out, ops)
    assert pl.module.launch_cache_hits() >= hits + 2  # same addresses: the later calls were hits


def test_workspace_too_small_is_refused_before_launch() -> None:
    """On a miss and on a hit (same address, fewer bytes): ValueError, nothing launched."""
    ops = make_operands("mxfp4", 128, 256, 8192, seed=8)
    out = torch.empty((128, 256), dtype=torch.bfloat16, device="cuda")
    p = op.validate(ops["a"], ops["b"], ops["a_descale"], ops["b_descale"], None, torch.bfloat16, out, 32, False,
                    False)
    pl = op.plan(p, STREAM_K)
    with pytest.raises(ValueError, match="workspace too small"):
        pl.launch(p.a, p.b, p.sfa, p.sfb, None, out, None, False)
    workspace = torch.empty(pl.workspace_bytes, dtype=torch.uint8, device="cuda")
    pl.launch(p.a, p.b, p.sfa, p.sfb, None, out, workspace, False)  # stores the entry for these addresses
    torch.cuda.synchronize()
    out.fill_(3.0)
    hits = pl.module.launch_cache_hits()
    with pytest.raises(ValueError, match="workspace too small"):
        pl.launch(p.a, p.b, p.sfa, p.sfb, None, out, workspace[: pl.workspace_bytes // 2], False)
    assert pl.module.launch_cache_hits() == hits + 1  # the check on the hit path refused it
    torch.cuda.synchronize()
    assert bool((out == 3.0).all())
