# SPDX-License-Identifier: Apache-2.0
"""Data + expert parallelism through vLLM's modular kernel beyond the all-gather: our batched experts
(`vllm_modular.Sm12xMxfp4BatchedExperts`, vLLM's BatchedExperts format) and DeepEP, on the CPU with a real vLLM.
The grouped GEMM is the torch model of its contract (`impl="reference"`), as in test_vllm_plugin_modular.py.

- vLLM's own `BatchedPrepareAndFinalize` (constructible without any communication library) around our batched
  experts: one rank equals the full layer; EP ranks (2 and 3) sum to it; an idle rank; full and empty experts.
- DeepEP high-throughput and low-latency: vLLM's real prepare/finalize classes (`prepare_finalize/deepep_ht.py`,
  `deepep_ll.py`), picked by vLLM's `maybe_make_prepare_finalize`, with `deep_ep` replaced by a stub module and its
  Buffer by a simulated EP world that moves the tokens in one process as DeepEP's dispatch and combine define them
  (HT: each token once per rank holding one of its experts, DeepEP-local ids with -1 for other ranks' experts, the
  combine sums the ranks' rows; LL: per-expert batched rows with stale padding, the combine weights and sums).
- The plugin's selection (which class for which backend, the refusals kept) and its hidden-size rounding."""

from __future__ import annotations

import importlib
import logging
import sys
import types
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

from flashinfer_sm12x.integrations import vllm_plugin as vp
from flashinfer_sm12x.moe.fused_moe import fused_moe
from flashinfer_sm12x.moe.weights import prepare_gpt_oss_weights
from flashinfer_sm12x.testing.moe_cases import make_inputs, make_weights
from flashinfer_sm12x.testing.moe_shards import ep_shard

vllm = pytest.importorskip("vllm", reason="vLLM is not installed in this environment (see README: vLLM tests)")
import vllm.model_executor.layers.fused_moe.modular_kernel as mk  # noqa: E402
from vllm.model_executor.layers import quantization as vq  # noqa: E402
from vllm.model_executor.layers.fused_moe import all2all_utils  # noqa: E402
from vllm.model_executor.layers.fused_moe.activation import MoEActivation  # noqa: E402
from vllm.model_executor.layers.fused_moe.prepare_finalize.batched import BatchedPrepareAndFinalize  # noqa: E402

from flashinfer_sm12x.integrations import vllm_modular as vm  # noqa: E402

from .vllm_layers import moe_config  # noqa: E402

NUM_E, HIDDEN, INTER, TOP_K, MAX_TOKENS = 12, 256, 256, 4, 16  # 12 experts: an even split over 2 and 3 ranks
# vLLM's naive batched finalize (TopKWeightAndReduceNaiveBatched) weights the bf16 expert rows with bf16 router
# weights and sums them in bf16: per rank a few bf16 roundings of terms as large as the output (the experts' own rows
# are checked tightly in tests/moe/test_batched_experts.py).
BATCHED_FINALIZE_TOL = 2.0 ** -6


def _moe(num_local: int = NUM_E, dp: int = 1, ep: int = 1, ep_rank: int = 0, backend: str | None = None,
         in_dtype: torch.dtype = torch.bfloat16):
    """vLLM's FusedMoEConfig of this file's GPT-OSS-shaped layer (tests/integrations/vllm_layers.py)."""
    return moe_config(NUM_E, HIDDEN, INTER, TOP_K, num_local, dp=dp, ep=ep, ep_rank=ep_rank, backend=backend,
                      in_dtype=in_dtype, max_num_tokens=MAX_TOKENS)


def _routing(num_t: int, seed: int = 1, skew: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, logits = make_inputs(num_t, HIDDEN, NUM_E, seed)
    if skew:  # every token to experts 0..3: expert 0 is full (count = tokens), the others of rank 1+ empty
        logits[:, :TOP_K] += 100.0
    ids = torch.topk(logits, TOP_K, dim=1).indices.to(torch.int32)
    weights = torch.softmax(logits.gather(1, ids.long()), dim=1)
    return x.bfloat16(), ids, weights


def _full(raw, x, ids, weights, act: str) -> torch.Tensor:
    return fused_moe(x, (ids, weights), prepare_gpt_oss_weights(**raw, act=act), impl="reference",
                     out_dtype=torch.float32)


def _apply(kernel, w, x, ids, weights, expert_map=None) -> torch.Tensor:
    """The call vLLM's MoE method makes (GptOssMxfp4MoEMethod.apply), with the layer's packed weights."""
    return kernel.apply(hidden_states=x, w1=w.w13, w2=w.w2, topk_weights=weights, topk_ids=ids,
                        activation=MoEActivation.SWIGLUOAI, global_num_experts=NUM_E, expert_map=expert_map,
                        apply_router_weight_on_input=False)


def _slice(raw, ranks: int, rank: int, act: str):
    from vllm.model_executor.layers.fused_moe.expert_map_manager import determine_expert_map

    count, emap, _ = determine_expert_map(ranks, rank, NUM_E)
    ep = vp.expert_slice(emap, count, NUM_E) or vp.ExpertSlice(0, NUM_E, NUM_E)  # one rank: no map
    return prepare_gpt_oss_weights(**ep_shard(raw, ep.offset, count), act=act), ep, emap


# ------------------------------------------------------------------------------------------------------------------
# vLLM's BatchedPrepareAndFinalize around our batched experts


def test_batched_experts_declare_their_contract() -> None:
    from vllm.model_executor.layers.fused_moe.topk_weight_and_reduce import TopKWeightAndReduceDelegate
    from vllm.model_executor.layers.quantization.utils.quant_utils import kMxfp4Static

    cls = vm.batched_experts_class()
    assert issubclass(cls, mk.FusedMoEExpertsModular) and cls is vm.batched_experts_class()
    assert not issubclass(cls, vm.experts_class()) and not issubclass(vm.experts_class(), cls)
    assert cls.activation_format() == mk.FusedMoEActivationFormat.BatchedExperts and not cls.is_monolithic()
    assert cls._supports_activation(MoEActivation.SWIGLUOAI) and cls._supports_quant_scheme(kMxfp4Static, None)
    ll = _moe(6, dp=2, ep=2, backend="deepep_low_latency").moe_parallel_config
    ht = _moe(6, dp=2, ep=2, backend="deepep_high_throughput").moe_parallel_config
    assert cls._supports_parallel_config(ll) and not cls._supports_parallel_config(ht)
    assert vm.experts_class()._supports_parallel_config(ht) and not vm.experts_class()._supports_parallel_config(ll)
    w = prepare_gpt_oss_weights(**make_weights(NUM_E, HIDDEN, INTER))
    with pytest.raises(ValueError, match="max_num_tokens and num_dispatchers must be set"):
        cls(_moe(), vm.quant_config(), weights=w)
    experts = cls(_moe(), vm.quant_config(), MAX_TOKENS, 1, weights=w)
    # The batched prepare steps refuse to defer quantization; our quant config asks for none (bf16 rows stay bf16).
    assert not experts.expects_unquantized_inputs and vm.quant_config().quant_dtype is None
    assert isinstance(experts.finalize_weight_and_reduce_impl(), TopKWeightAndReduceDelegate)
    assert experts.workspace_shapes(MAX_TOKENS, 2 * INTER, HIDDEN, TOP_K, NUM_E, NUM_E, None,
                                    MoEActivation.SWIGLUOAI) == ((0,), (0,), (NUM_E, MAX_TOKENS, HIDDEN))


def _batched_kernel(raw, act: str, ranks: int, rank: int):
    """make_kernel with vLLM's BatchedPrepareAndFinalize for this rank (as vLLM builds it for a batched backend)."""
    w, ep, emap = _slice(raw, ranks, rank, act)
    pf = BatchedPrepareAndFinalize(max_num_tokens=MAX_TOKENS, num_local_experts=ep.num_local, num_dispatchers=1,
                                   rank=rank)
    moe = _moe(ep.num_local, dp=ranks, ep=ranks, ep_rank=rank, backend="deepep_low_latency")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(all2all_utils, "maybe_make_prepare_finalize", lambda **kw: pf)
        kernel = vm.make_kernel(moe, w, ep.offset, NUM_E, impl="reference")
    assert type(kernel.fused_experts) is vm.batched_experts_class() and kernel.prepare_finalize is pf
    return kernel, w, emap


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_batched_prepare_finalize_ranks_sum_to_the_full_layer(model_gemm: pytest.MonkeyPatch, act: str,
                                                              ranks: int) -> None:
    raw = make_weights(NUM_E, HIDDEN, INTER)
    x, ids, weights = _routing(11)
    total = torch.zeros(11, HIDDEN)
    for rank in range(ranks):
        kernel, w, emap = _batched_kernel(raw, act, ranks, rank)
        out = _apply(kernel, w, x, ids, weights, emap if ranks > 1 else None)
        assert out.shape == (11, HIDDEN) and out.dtype == torch.bfloat16
        total += out.float()
    full = _full(raw, x, ids, weights, act)
    assert float((total - full).abs().max()) <= ranks * BATCHED_FINALIZE_TOL * float(full.abs().max())


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
def test_batched_full_and_empty_experts(model_gemm: pytest.MonkeyPatch, act: str) -> None:
    """Every token on experts 0..3 (rank 0 of 3): expert 0 holds all MAX_TOKENS rows, ranks 1 and 2 none."""
    raw = make_weights(NUM_E, HIDDEN, INTER)
    x, ids, weights = _routing(MAX_TOKENS, skew=True)
    assert int((ids == 0).any(1).sum()) == MAX_TOKENS and int(ids.max()) < 4
    outs = [_apply(*_batched_kernel(raw, act, 3, r)[:2], x, ids, weights).float() for r in range(3)]
    assert not outs[1].any() and not outs[2].any()
    full = _full(raw, x, ids, weights, act)
    assert float((outs[0] - full).abs().max()) <= BATCHED_FINALIZE_TOL * float(full.abs().max())


def test_batched_rank_with_no_tokens(model_gemm: pytest.MonkeyPatch) -> None:
    kernel, w, emap = _batched_kernel(make_weights(NUM_E, HIDDEN, INTER), "mxfp8", 2, 1)
    x, ids, weights = _routing(0)
    out = _apply(kernel, w, x, ids, weights, emap)
    assert out.shape == (0, HIDDEN) and out.dtype == torch.bfloat16


def test_batched_experts_refuse_bad_input(model_gemm: pytest.MonkeyPatch) -> None:
    """What the prepare step hands over is checked before any launch: typed errors."""
    w = prepare_gpt_oss_weights(**make_weights(4, HIDDEN, INTER))
    experts = vm.batched_experts_class()(_moe(4), vm.quant_config(), MAX_TOKENS, 1, weights=w,
                                         expert_offset=0, num_global_experts=NUM_E, impl="reference")
    x = torch.randn(4, MAX_TOKENS, HIDDEN).bfloat16()
    out = torch.empty_like(x)
    meta = mk.ExpertTokensMetadata(expert_num_tokens=torch.tensor([1, 2, 0, 3], dtype=torch.int32),
                                   expert_num_tokens_cpu=None)
    ids, tw = torch.zeros(5, TOP_K, dtype=torch.int32), torch.ones(5, TOP_K)

    def call(**over):
        kw = dict(output=out, hidden_states=x, w1=w.w13, w2=w.w2, topk_weights=tw, topk_ids=ids,
                  activation=MoEActivation.SWIGLUOAI, global_num_experts=NUM_E, expert_map=None, a1q_scale=None,
                  a2_scale=None, workspace13=None, workspace2=None, expert_tokens_meta=meta,
                  apply_router_weight_on_input=False)
        kw.update(over)
        return experts.apply(**kw)

    call()
    assert out[0, 0].any()
    bad_meta = mk.ExpertTokensMetadata(expert_num_tokens=torch.tensor([1, 2, 0]), expert_num_tokens_cpu=None)
    cases = [
        ({"a1q_scale": torch.ones(1)}, ValueError, "quantized"),
        ({"apply_router_weight_on_input": True}, NotImplementedError, "input"),
        ({"global_num_experts": 7}, ValueError, "global experts"),
        ({"expert_tokens_meta": None}, ValueError, "expert_num_tokens"),
        ({"expert_tokens_meta": bad_meta}, ValueError, "at least one count per local expert"),
        ({"hidden_states": x[:3]}, ValueError, r"\[4, M, 256\]"),
        ({"hidden_states": x[:, :, :128].contiguous()}, ValueError, r"\[4, M, 256\]"),
        ({"hidden_states": x.to(torch.int16)}, TypeError, "x must have dtype"),
        ({"output": out[:, :3]}, ValueError, "out must have shape"),
        ({"output": out.transpose(1, 2).contiguous().transpose(1, 2)}, ValueError, "contiguous"),
    ]
    for over, exc, match in cases:
        with pytest.raises(exc, match=match):
            call(**over)


def test_make_kernel_refuses_a_slice_the_prepare_finalize_does_not_assume() -> None:
    """vLLM's batched prepare/finalize takes rank r's experts to start at r * local: a slice elsewhere is refused."""
    w = prepare_gpt_oss_weights(**make_weights(6, HIDDEN, INTER))
    pf = BatchedPrepareAndFinalize(max_num_tokens=MAX_TOKENS, num_local_experts=6, num_dispatchers=1, rank=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(all2all_utils, "maybe_make_prepare_finalize", lambda **kw: pf)
        with pytest.raises(ValueError, match="start at global id 6"):
            vm.make_kernel(_moe(6, dp=2, ep=2, ep_rank=1, backend="deepep_low_latency"), w, 0, NUM_E)
        assert type(vm.make_kernel(_moe(6, dp=2, ep=2, ep_rank=1, backend="deepep_low_latency"), w, 6,
                                   NUM_E).fused_experts) is vm.batched_experts_class()


# ------------------------------------------------------------------------------------------------------------------
# DeepEP: vLLM's real prepare/finalize classes over a simulated Buffer


class _Event:
    event = None

    def current_stream_wait(self) -> None:
        pass


@pytest.fixture
def deep_ep_stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A `deep_ep` module with what vLLM's DeepEP prepare/finalize modules touch at import and per call (Buffer's
    config getters); vLLM's modules imported against it and dropped again afterwards."""
    stub = types.ModuleType("deep_ep")

    class Buffer:
        @staticmethod
        def get_dispatch_config(num_ranks: int) -> None:
            return None

        @staticmethod
        def get_combine_config(num_ranks: int) -> None:
            return None

    stub.Buffer, stub.Config, stub.EventOverlap = Buffer, object, _Event
    monkeypatch.setitem(sys.modules, "deep_ep", stub)
    names = [f"vllm.model_executor.layers.fused_moe.prepare_finalize.deepep_{k}" for k in ("ht", "ll")]
    for name in names:
        sys.modules.pop(name, None)
    yield stub
    for name in names:
        sys.modules.pop(name, None)


class _World:
    """The EP ranks of one step, run one after the other: every rank's (x, ids, weights) chunk is known, `rank` is
    the one calling now; the combines are recorded and summed by `combined`."""

    def __init__(self, chunks, ranks: int) -> None:
        self.chunks, self.ranks, self.local, self.rank = chunks, ranks, NUM_E // ranks, 0
        self.records: list[tuple[int, object, torch.Tensor]] = []

    def capture(self) -> None:
        return None

    def _mine(self, ids: torch.Tensor) -> torch.Tensor:
        lo = self.rank * self.local
        return (ids >= lo) & (ids < lo + self.local)


class _HTBuffer(_World):
    """DeepEP high-throughput: dispatch sends each token once to every rank holding one of its experts, with the
    top-k ids made rank-local (-1: another rank's expert) and their weights; combine sums the ranks' rows back."""

    def get_dispatch_layout(self, topk_idx, num_experts, previous_event, async_finish, allocate_on_comm_stream):
        assert topk_idx.dtype == torch.int64 and num_experts == NUM_E
        return None, None, None, None, _Event()

    def dispatch(self, x, handle, num_tokens_per_rank, num_tokens_per_rdma_rank, is_token_in_rank,
                 num_tokens_per_expert, topk_idx, topk_weights, expert_alignment, config, previous_event,
                 async_finish, allocate_on_comm_stream):
        own_x, own_ids, _ = self.chunks[self.rank]
        assert isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16 and torch.equal(x, own_x)  # no scales
        assert torch.equal(topk_idx, own_ids.long())
        rows, ids, weights, src = [], [], [], []
        for s, (xs, ids_s, w_s) in enumerate(self.chunks):
            mine = self._mine(ids_s.long())
            sel = mine.any(1)
            rows.append(xs[sel])
            ids.append(torch.where(mine, ids_s.long() - self.rank * self.local, -1)[sel])
            weights.append(torch.where(mine, w_s, 0.0)[sel])
            src += [(s, int(t)) for t in sel.nonzero().flatten()]
        recv_ids = torch.cat(ids)
        counts = [int((recv_ids == j).sum()) for j in range(self.local)]
        return torch.cat(rows), recv_ids, torch.cat(weights).float(), counts, src, _Event()

    def combine(self, x, handle, topk_weights, config, previous_event, async_finish, allocate_on_comm_stream):
        assert x.dtype == torch.bfloat16 and x.shape[0] == len(handle)
        self.records.append((self.rank, handle, x.float().clone()))
        return torch.zeros(self.chunks[self.rank][0].shape[0], HIDDEN, dtype=torch.bfloat16), None, _Event()

    def combined(self) -> list[torch.Tensor]:
        totals = [torch.zeros(c[0].shape[0], HIDDEN) for c in self.chunks]
        for _, src, rows in self.records:
            for i, (s, t) in enumerate(src):
                totals[s][t] += rows[i]
        return totals


class _LLBuffer(_World):
    """DeepEP low-latency: dispatch lays each rank's experts out as [local experts, max tokens * ranks, H] with
    expert_num_tokens (stale rows past the counts: NaN here); combine weights each row by its pair's router weight
    and sums into the source tokens."""

    def low_latency_dispatch(self, x, topk_idx, max_tokens, num_experts, use_fp8=False, round_scale=False,
                             use_ue8m0=False, async_finish=False, return_recv_hook=False):
        assert not use_fp8 and x.dtype == torch.bfloat16 and topk_idx.dtype == torch.int64
        slots = max_tokens * self.ranks
        expert_x = torch.full((self.local, slots, HIDDEN), float("nan"), dtype=torch.bfloat16)
        counts = torch.zeros(self.local, dtype=torch.int32)
        placed: list[list[tuple[int, int, int]]] = [[] for _ in range(self.local)]
        for s, (xs, ids_s, _) in enumerate(self.chunks):
            for t, k in self._mine(ids_s.long()).nonzero().tolist():
                j = int(ids_s[t, k]) - self.rank * self.local
                expert_x[j, len(placed[j])] = xs[t]
                placed[j].append((s, t, k))
                counts[j] += 1
        return expert_x, counts, placed, None, lambda: None

    def low_latency_combine(self, x, topk_idx, topk_weights, handle, async_finish=False, zero_copy=False,
                            return_recv_hook=False, out=None):
        assert x.shape[0] == self.local and x.dtype == torch.bfloat16
        self.records.append((self.rank, handle, x.float().clone()))
        out.zero_()
        return out, None, (lambda: None) if return_recv_hook else None

    def combined(self) -> list[torch.Tensor]:
        totals = [torch.zeros(c[0].shape[0], HIDDEN) for c in self.chunks]
        for _, placed, rows in self.records:
            for j, pairs in enumerate(placed):
                for i, (s, t, k) in enumerate(pairs):
                    totals[s][t] += float(self.chunks[s][2][t, k]) * rows[j, i]
        return totals


def _deepep_kernels(monkeypatch: pytest.MonkeyPatch, world: _World, backend: str, raw, act: str):
    """Each rank's kernel as vLLM's maybe_make_prepare_finalize builds it (its DeepEP classes, our experts)."""
    base = "vllm.model_executor.layers.fused_moe.prepare_finalize."
    ht = importlib.import_module(base + "deepep_ht")
    ll = importlib.import_module(base + "deepep_ll")
    monkeypatch.setattr(all2all_utils, "DeepEPHTPrepareAndFinalize", ht.DeepEPHTPrepareAndFinalize, raising=False)
    monkeypatch.setattr(all2all_utils, "DeepEPLLPrepareAndFinalize", ll.DeepEPLLPrepareAndFinalize, raising=False)
    monkeypatch.setattr(all2all_utils, "DEEPEP_QUANT_BLOCK_SHAPE", ll.DEEPEP_QUANT_BLOCK_SHAPE, raising=False)
    # DeepEP LL's kernels serve hidden sizes 2048..8192; the CPU model runs H = 256 (a size rule, not logic).
    monkeypatch.setattr(ll.DeepEPLLPrepareAndFinalize, "SUPPORTED_HIDDEN_SIZES", [HIDDEN])
    # DeepEP HT's receiver copies the per-expert counts into pinned host memory: no pinning without a GPU.
    monkeypatch.setattr(mk, "PIN_MEMORY", False, raising=False)
    kernels = []
    for rank in range(world.ranks):
        w, ep, emap = _slice(raw, world.ranks, rank, act)
        manager = SimpleNamespace(world_size=world.ranks, dp_world_size=world.ranks, rank=rank,
                                  get_handle=lambda args: world)
        monkeypatch.setattr(all2all_utils, "get_ep_all2all_manager", lambda *a, m=manager, **k: m)
        moe = _moe(ep.num_local, dp=world.ranks, ep=world.ranks, ep_rank=rank, backend=backend)
        assert vp.why_not_ours(moe) is None
        kernel = vm.make_kernel(moe, w, ep.offset, NUM_E, impl="reference")
        kernels.append((kernel, w, emap))
    return kernels


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
@pytest.mark.parametrize("case", ["uneven", "idle_rank", "nothing_for_rank_1"])
def test_dp_ep_through_vllms_deepep_ht(model_gemm: pytest.MonkeyPatch, deep_ep_stub, act: str, case: str) -> None:
    """DeepEP high-throughput (Standard format): vLLM's receiver maps DeepEP's local ids back to global ones (and -1
    to an expert of another rank), our experts skip other ranks' pairs, weight and sum; DeepEP's combine sums the
    ranks. The sum equals the full layer on every rank's tokens; a rank that receives no token returns nothing."""
    raw = make_weights(NUM_E, HIDDEN, INTER)
    sizes = {"uneven": (7, 5), "idle_rank": (6, 0), "nothing_for_rank_1": (5, 4)}[case]
    chunks = [_routing(n, seed=3 + r, skew=case == "nothing_for_rank_1") for r, n in enumerate(sizes)]
    chunks = [(x, ids.long(), w) for x, ids, w in chunks]  # DeepEP HT's topk_indices_dtype: int64
    world = _HTBuffer(chunks, 2)
    kernels = _deepep_kernels(model_gemm, world, "deepep_high_throughput", raw, act)
    ht = sys.modules["vllm.model_executor.layers.fused_moe.prepare_finalize.deepep_ht"]
    for rank, (kernel, w, emap) in enumerate(kernels):
        assert type(kernel.prepare_finalize) is ht.DeepEPHTPrepareAndFinalize
        assert type(kernel.fused_experts) is vm.experts_class()
        world.rank = rank
        x, ids, weights = chunks[rank]
        assert _apply(kernel, w, x, ids, weights, emap).shape == (sizes[rank], HIDDEN)
    if case == "nothing_for_rank_1":
        assert world.records[1][2].shape == (0, HIDDEN)
    for s, total in enumerate(world.combined()):
        x, ids, weights = chunks[s]
        full = _full(raw, x, ids, weights, act)
        assert total.shape == full.shape == (sizes[s], HIDDEN)
        if sizes[s]:
            assert float((total - full).abs().max()) <= 2 * 2.0 ** -8 * float(full.abs().max())


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
@pytest.mark.parametrize("sizes", [(7, 5), (6, 0), (16, 16)])
def test_dp_ep_through_vllms_deepep_ll(model_gemm: pytest.MonkeyPatch, deep_ep_stub, act: str,
                                       sizes: tuple[int, int]) -> None:
    """DeepEP low-latency (BatchedExperts format): vLLM's real prepare/finalize around our batched experts; the
    dispatch's stale rows (NaN) are never read; DeepEP's weighted combine of the ranks equals the full layer."""
    raw = make_weights(NUM_E, HIDDEN, INTER)
    chunks = [(x, ids.long(), w) for x, ids, w in (_routing(n, seed=5 + r) for r, n in enumerate(sizes))]
    world = _LLBuffer(chunks, 2)
    kernels = _deepep_kernels(model_gemm, world, "deepep_low_latency", raw, act)
    ll = sys.modules["vllm.model_executor.layers.fused_moe.prepare_finalize.deepep_ll"]
    for rank, (kernel, w, emap) in enumerate(kernels):
        assert type(kernel.prepare_finalize) is ll.DeepEPLLPrepareAndFinalize
        assert type(kernel.fused_experts) is vm.batched_experts_class()
        assert kernel.fused_experts.max_num_tokens == MAX_TOKENS and kernel.fused_experts.num_dispatchers == 2
        world.rank = rank
        x, ids, weights = chunks[rank]
        assert _apply(kernel, w, x, ids, weights, emap).shape == (sizes[rank], HIDDEN)
    for s, total in enumerate(world.combined()):
        x, ids, weights = chunks[s]
        assert torch.isfinite(total).all()
        if sizes[s]:
            full = _full(raw, x, ids, weights, act)
            assert float((total - full).abs().max()) <= 2 * 2.0 ** -8 * float(full.abs().max())


# ------------------------------------------------------------------------------------------------------------------
# The plugin: selection, refusals, hidden-size rounding


def test_plugin_selection_per_backend() -> None:
    for backend in ("allgather_reducescatter", "deepep_high_throughput", "deepep_low_latency"):
        assert vp.why_not_ours(_moe(6, dp=2, ep=2, backend=backend)) is None, backend
    for backend in ("flashinfer_nvlink_one_sided", "flashinfer_nvlink_two_sided", "nixl_ep", "passthrough"):
        reason = vp.why_not_ours(_moe(6, dp=2, ep=2, backend=backend))
        assert reason is not None and backend in reason and "deepep_low_latency" in reason, backend
    # MORI's FusedMoEConfig needs ROCm AITER (vLLM asserts it): its parallel config alone.
    assert "'mori'" in vm.all2all_reason(SimpleNamespace(all2all_backend="mori", ep_size=2))
    for backend in ("deepep_high_throughput", "deepep_low_latency"):
        fp16 = vp.why_not_ours(_moe(6, dp=2, ep=2, backend=backend, in_dtype=torch.float16))
        assert fp16 is not None and "bfloat16 only" in fp16
        uneven = vp.why_not_ours(_moe(4, dp=3, ep=3, backend=backend))  # 12 experts over 3: even
        assert uneven is None
    pc = _moe(4, dp=2, ep=5, backend="deepep_low_latency")  # 12 experts over 5 ranks
    assert "even split" in vp.why_not_ours(pc)
    assert vp.why_not_ours(_moe(6, dp=2, ep=5, backend="allgather_reducescatter")) is None  # global ids: any split
    eplb = _moe(6, dp=2, ep=2, backend="deepep_low_latency")
    eplb.moe_parallel_config.enable_eplb = True
    assert "EPLB" in vp.why_not_ours(eplb)


def test_plugin_serves_deepep_ll_with_the_batched_experts(model_gemm: pytest.MonkeyPatch, deep_ep_stub,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """DP = EP = 2 over DeepEP low-latency: the method builds vLLM's modular kernel with vLLM's DeepEP LL
    prepare/finalize and our batched experts at load time, logs it, and `apply` goes through it."""
    from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config

    from tests.integrations.test_vllm_plugin_modular import _Layer

    saved = dict(vq._CUSTOMIZED_METHOD_TO_QUANT_CONFIG)
    raw = make_weights(NUM_E, HIDDEN, INTER)
    x, ids, weights = _routing(9)
    world = _LLBuffer([(x, ids.long(), weights), (x[:0], ids[:0].long(), weights[:0])], 2)
    world.rank = 0
    _deepep_kernels(model_gemm, world, "deepep_low_latency", raw, "mxfp8")  # installs vLLM's DeepEP classes
    manager = SimpleNamespace(world_size=2, dp_world_size=2, rank=0, get_handle=lambda args: world)
    model_gemm.setattr(all2all_utils, "get_ep_all2all_manager", lambda *a, **k: manager)
    w, ep, emap = _slice(raw, 2, 0, "mxfp8")
    moe = _moe(ep.num_local, dp=2, ep=2, ep_rank=0, backend="deepep_low_latency")
    vp._logged.clear()
    try:
        with caplog.at_level(logging.INFO, logger=vp.logger.name), \
                set_current_vllm_config(VllmConfig(device_config=DeviceConfig(device="cpu"))):
            method = vp.install()()._make_moe_method(moe)
            layer = _Layer(ep_shard(raw, ep.offset, ep.num_local), emap)
            layer.global_num_experts = NUM_E
            method.process_weights_after_loading(layer)
    finally:
        vq._CUSTOMIZED_METHOD_TO_QUANT_CONFIG.clear()
        vq._CUSTOMIZED_METHOD_TO_QUANT_CONFIG.update(saved)
    assert method.uses_sm12x and method.sm12x_modular
    assert type(method.moe_kernel.fused_experts) is vm.batched_experts_class()
    assert "DeepEPLLPrepareAndFinalize + Sm12xMxfp4BatchedExperts" in caplog.text
    out = method.apply(layer, x, weights, ids.long(), None, None)
    assert out.shape == (9, HIDDEN)
    mine = fused_moe(x, (ids, weights), method.sm12x_weights, impl="reference", expert_offset=0,
                     num_global_experts=NUM_E, out_dtype=torch.float32)
    got = world.combined()[0]
    assert float((got - mine).abs().max()) <= 2.0 ** -8 * float(mine.abs().max())


def test_hidden_size_rounding_takes_vllms_all2all_rounding_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepEP rounds the hidden size (HT: 512-byte rows, 2880 -> 3072 in bf16; LL: its supported sizes); the plugin
    applies vLLM's all2all rounding, then its own multiple of 128 (2880 alone -> 2944)."""
    seen = []

    def deepep_like(hidden_size, act_dtype, moe_parallel_config):
        seen.append(moe_parallel_config.all2all_backend)
        return 3072 if moe_parallel_config.use_all2all_kernels else hidden_size

    monkeypatch.setattr(all2all_utils, "maybe_roundup_layer_hidden_size", deepep_like)
    method = vp.make_method_class(importlib.import_module(
        "vllm.model_executor.layers.quantization.mxfp4").GptOssMxfp4MoEMethod)
    for name in (vp.ENV_BACKEND, vp.ENV_ENABLE, vp.ENV_ACT, vp.ENV_RELOAD):
        monkeypatch.delenv(name, raising=False)
    ht = _moe(6, dp=2, ep=2, backend="deepep_high_throughput")
    m = method(ht)
    assert m.uses_sm12x
    assert m.maybe_roundup_sizes(2880, 720, torch.bfloat16, ht.moe_parallel_config) == (3072, 768)
    plain = _moe()
    assert method(plain).maybe_roundup_sizes(2880, 2880, torch.bfloat16, plain.moe_parallel_config) == (2944, 2944)
    assert seen == ["deepep_high_throughput", plain.moe_parallel_config.all2all_backend]
