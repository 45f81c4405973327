# SPDX-License-Identifier: Apache-2.0
"""route / permute / finalize / clamp_expert_ids: properties, round trips, skew, sync-freedom, errors."""

from __future__ import annotations

import pytest
import torch

from flashinfer_sm12x.moe import clamp_expert_ids, finalize, permute, route
from flashinfer_sm12x.moe.reference import _select_experts
from flashinfer_sm12x.testing.moe_cases import loop_route


def _logits(t: int, e: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(t, e, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize(("t", "e", "k"), [(5, 4, 2), (33, 128, 4), (7, 32, 4), (3, 8, 8), (4, 6, 1)])
def test_route_matches_topk_and_softmax(t: int, e: int, k: int) -> None:
    logits = _logits(t, e, seed=t * e)
    ids, weights = route(logits, k)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32 and ids.shape == weights.shape == (t, k)
    top = torch.topk(logits, k, dim=1)  # random floats: no ties, so topk's order is unambiguous
    assert torch.equal(ids.long(), top.indices)
    torch.testing.assert_close(weights, torch.softmax(top.values, dim=1))
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(t))
    # Renormalised top-k softmax == softmax over all experts, gathered, divided by its sum (vLLM's order).
    full = torch.softmax(logits, dim=1).gather(1, top.indices)
    torch.testing.assert_close(weights, full / full.sum(dim=1, keepdim=True))
    ids_nr, w_nr = route(logits, k, renormalize=False)
    assert torch.equal(ids_nr, ids)
    torch.testing.assert_close(w_nr, full)


def test_route_ties_are_deterministic_lower_id_first() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 1.0, 3.0], [0.0] * 5, [2.0, 1.0, 2.0, 1.0, 2.0]])
    ids, weights = route(logits, 3)
    assert ids.tolist() == [[1, 2, 4], [0, 1, 2], [0, 2, 4]]
    torch.testing.assert_close(weights, torch.full((3, 3), 1 / 3))
    # bf16 logits tie often; the choice must equal a plain (-logit, id) sort and the reference's rank count.
    lg = (_logits(64, 32, seed=5) * 0.05).bfloat16()
    ids, weights = route(lg, 4)
    want_ids, want_w = loop_route(lg.float(), 4)
    assert ids.tolist() == want_ids
    torch.testing.assert_close(weights.double(), torch.tensor(want_w, dtype=torch.float64), rtol=1e-6, atol=1e-7)
    ref_ids, ref_w = _select_experts(lg, 4)
    assert torch.equal(ids.long(), ref_ids)
    assert torch.equal(route(lg, 4)[0], ids)  # run to run


def _check_permutation(ids: torch.Tensor, num_e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    offsets, ptok, inv = permute(ids, num_e)
    t, k = ids.shape
    assert offsets.dtype == torch.int64 and ptok.dtype == torch.int32 and inv.dtype == torch.int32
    counts = torch.bincount(ids.reshape(-1).long(), minlength=num_e)
    assert offsets.tolist() == [0] + torch.cumsum(counts, 0).tolist()
    flat = ids.reshape(-1).long()
    order = torch.empty_like(inv.long()).scatter_(0, inv.long(), torch.arange(t * k))  # permuted -> expanded
    assert sorted(order.tolist()) == list(range(t * k))  # inverse is a permutation
    assert torch.equal(ptok.long(), order // k)
    for e in range(num_e):
        rows = order[offsets[e] : offsets[e + 1]]
        assert bool((flat[rows] == e).all())
        assert rows.tolist() == sorted(rows.tolist())  # stable: ascending token within an expert
    return offsets, ptok, inv


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_permute_finalize_round_trip(dtype: torch.dtype) -> None:
    t, e, k, h = 9, 6, 3, 16
    ids, weights = route(_logits(t, e, seed=11), k)
    ids = ids.to(dtype)
    _, ptok, inv = _check_permutation(ids, e)
    x = torch.randn(t, h, generator=torch.Generator().manual_seed(2))
    # A stand-in for the experts: row r of expert e returns x[token] * (e + 1).
    expert_of_row = torch.empty(t * k, dtype=torch.int64).scatter_(0, inv.long(), ids.reshape(-1).long())
    expert_out = x[ptok.long()] * (expert_of_row + 1).unsqueeze(1).float()
    got = finalize(expert_out, inv, weights)
    want = torch.einsum("tk,th->th", weights * (ids.float() + 1), x)
    torch.testing.assert_close(got, want)
    # Plain weighted sum of the same row: finalize(permute(x)) == (sum_j w_tj) * x.
    torch.testing.assert_close(finalize(x[ptok.long()], inv, weights), weights.sum(1, keepdim=True) * x)
    assert finalize(expert_out.bfloat16(), inv, weights).dtype == torch.bfloat16
    assert finalize(expert_out.bfloat16(), inv, weights, out_dtype=torch.float32).dtype == torch.float32


def test_skewed_routing() -> None:
    t, e, h = 11, 8, 4
    x = torch.randn(t, h, generator=torch.Generator().manual_seed(3))
    one = torch.full((t, 1), 5, dtype=torch.int32)  # every token to expert 5, top-1
    offsets, ptok, inv = _check_permutation(one, e)
    assert offsets.tolist() == [0] * 6 + [t] * 3
    assert ptok.tolist() == list(range(t))
    torch.testing.assert_close(finalize(x[ptok.long()] * 2, inv, torch.ones(t, 1)), 2 * x)
    two = torch.tensor([[3, 1]] * t, dtype=torch.int32)  # all tokens to experts {1, 3}; 0, 2, 4.. empty
    offsets, ptok, inv = _check_permutation(two, e)
    assert offsets.tolist() == [0, 0, t, t, 2 * t, 2 * t, 2 * t, 2 * t, 2 * t]
    w = torch.tensor([[0.25, 0.75]] * t)
    y = x[ptok.long()] * torch.tensor([1.0] * t + [3.0] * t).unsqueeze(1)  # expert 1 rows first, then 3
    torch.testing.assert_close(finalize(y, inv, w), (0.25 * 3 + 0.75 * 1) * x)


def test_empty_batch() -> None:
    ids = torch.zeros(0, 4, dtype=torch.int32)
    offsets, ptok, inv = permute(ids, 8)
    assert offsets.tolist() == [0] * 9 and ptok.numel() == 0 and inv.numel() == 0
    assert finalize(torch.zeros(0, 16), inv, torch.zeros(0, 4)).shape == (0, 16)
    assert route(torch.zeros(0, 8), 4)[0].shape == (0, 4)


def test_clamp_expert_ids_flags_without_sync() -> None:
    good = torch.tensor([[0, 3], [2, 1]], dtype=torch.int32)
    ids, flag = clamp_expert_ids(good, 4)
    assert torch.equal(ids, good) and flag.tolist() == [0] and flag.dtype == torch.int32
    bad = torch.tensor([[0, 7], [-2, 1]])
    ids, flag = clamp_expert_ids(bad, 4)
    assert ids.tolist() == [[0, 3], [0, 1]] and flag.tolist() == [1]
    offsets, _, _ = permute(ids, 4, validate_ids=False)
    assert offsets.tolist() == [0, 2, 3, 3, 4]


def test_device_ops_need_no_host_values() -> None:
    # Meta tensors carry no data: any op that reads values back to the host (.item(), bincount's output
    # size, nonzero, ...) raises here. This is the CPU-checkable half of "CUDA-graph capturable".
    logits = torch.empty(7, 128, device="meta")
    ids, weights = route(logits, 4)
    offsets, ptok, inv = permute(ids, 128, validate_ids=False)
    assert offsets.shape == (129,) and ptok.shape == inv.shape == (28,)
    assert finalize(torch.empty(28, 64, device="meta"), inv, weights).shape == (7, 64)
    assert clamp_expert_ids(ids, 128)[1].shape == (1,)
    with pytest.raises(RuntimeError):  # the host check does read a value
        permute(ids, 128, validate_ids=True)


def _route_bad() -> list[tuple[str, tuple, dict, type[Exception]]]:
    lg = torch.zeros(4, 8)
    return [
        ("not a tensor", ([[0.0] * 8],), {}, TypeError),
        ("int logits", (torch.zeros(4, 8, dtype=torch.int32),), {}, TypeError),
        ("fp64 logits", (torch.zeros(4, 8, dtype=torch.float64),), {}, TypeError),
        ("1-D", (torch.zeros(8),), {}, ValueError),
        ("non-contiguous", (torch.zeros(8, 4).t(),), {}, ValueError),
        ("top_k > E", (lg,), {"top_k": 9}, ValueError),
        ("top_k 0", (lg,), {"top_k": 0}, ValueError),
        ("top_k float", (lg,), {"top_k": 2.0}, TypeError),
        ("top_k bool", (lg,), {"top_k": True}, TypeError),
    ]


@pytest.mark.parametrize(("what", "args", "kw", "exc"), _route_bad(), ids=[c[0] for c in _route_bad()])
def test_route_rejects(what: str, args: tuple, kw: dict, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        route(*args, **{"top_k": 2, **kw})


def _permute_bad() -> list[tuple[str, torch.Tensor, dict, type[Exception]]]:
    ok = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    return [
        ("float ids", ok.float(), {}, TypeError),
        ("int16 ids", ok.to(torch.int16), {}, TypeError),
        ("1-D ids", ok.reshape(-1), {}, ValueError),
        ("non-contiguous", torch.zeros(2, 4, dtype=torch.int32).t(), {}, ValueError),
        ("id == E", torch.tensor([[0, 4]], dtype=torch.int32), {}, ValueError),
        ("negative id", torch.tensor([[-1, 0]]), {}, ValueError),
        ("top_k > E", torch.zeros(2, 5, dtype=torch.int32), {}, ValueError),
        ("num_experts 0", ok, {"num_experts": 0}, ValueError),
        ("num_experts float", ok, {"num_experts": 4.0}, TypeError),
        ("validate_ids str", ok, {"validate_ids": "host"}, TypeError),
    ]


@pytest.mark.parametrize(("what", "ids", "kw", "exc"), _permute_bad(), ids=[c[0] for c in _permute_bad()])
def test_permute_rejects(what: str, ids: torch.Tensor, kw: dict, exc: type[Exception]) -> None:
    kw = {"num_experts": 4, **kw}
    with pytest.raises(exc):
        permute(ids, kw.pop("num_experts"), **kw)


def test_clamp_and_finalize_reject() -> None:
    with pytest.raises(TypeError):
        clamp_expert_ids(torch.zeros(2, 2), 4)
    with pytest.raises(ValueError):
        clamp_expert_ids(torch.zeros(2, 2, dtype=torch.int32), 0)
    y, inv, w = torch.zeros(6, 8), torch.arange(6, dtype=torch.int32), torch.ones(3, 2)
    finalize(y, inv, w)
    cases = [
        ((torch.zeros(5, 8), inv, w), ValueError),  # rows != T*k
        ((y, inv[:5], w), ValueError),
        ((y, inv.float(), w), TypeError),
        ((y, inv, torch.ones(3, 2, dtype=torch.int32)), TypeError),
        ((y.int(), inv, w), TypeError),
        ((torch.zeros(8, 6).t(), inv, w), ValueError),  # non-contiguous
        ((y, inv, torch.ones(2, 3).t()), ValueError),
        ((y.reshape(-1), inv, w), ValueError),
    ]
    for args, exc in cases:
        with pytest.raises(exc):
            finalize(*args)
    with pytest.raises(TypeError):
        finalize(y, inv, w, out_dtype=torch.int32)
