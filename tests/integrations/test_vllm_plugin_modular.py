# SPDX-License-Identifier: Apache-2.0
"""Data + expert parallelism through vLLM's modular kernel (issue #20, step 2), on the CPU with a real vLLM: our
experts class (`vllm_modular`) inside vLLM's own `FusedMoEKernel` with vLLM's in-process prepare/finalize
(`MoEPrepareAndFinalizeNoDPEPModular`: no dispatch, global ids, the finalize only copies), `impl="reference"` with
the grouped GEMM replaced by the torch model of its contract. Checks: one rank equals our own full-layer
`fused_moe`; EP ranks (2 and 3, uneven) sum to the full layer; ids outside a rank's slice contribute nothing; a
rank with no tokens; the plugin's selection for DP + EP (and its refusals); and vLLM's own all-gather /
reduce-scatter prepare/finalize, picked by vLLM's maybe_make_prepare_finalize, around our experts with the EP group
simulated in one process (a real multi-process vLLM world needs vLLM's CPU platform or GPUs: not run here)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

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
from vllm.model_executor.layers.fused_moe.activation import MoEActivation  # noqa: E402
from vllm.model_executor.layers.fused_moe.prepare_finalize.no_dp_ep import (  # noqa: E402
    MoEPrepareAndFinalizeNoDPEPModular,
)

from flashinfer_sm12x.integrations import vllm_modular as vm  # noqa: E402

from .vllm_layers import moe_config  # noqa: E402

NUM_E, HIDDEN, INTER, TOP_K = 8, 256, 256, 4


@pytest.fixture
def registry() -> Iterator[None]:
    saved = dict(vq._CUSTOMIZED_METHOD_TO_QUANT_CONFIG)
    yield
    vq._CUSTOMIZED_METHOD_TO_QUANT_CONFIG.clear()
    vq._CUSTOMIZED_METHOD_TO_QUANT_CONFIG.update(saved)


def _moe(num_local: int = NUM_E, dp: int = 1, ep: int = 1, ep_rank: int = 0, backend: str | None = None):
    """vLLM's FusedMoEConfig of this file's GPT-OSS-shaped layer (tests/integrations/vllm_layers.py)."""
    return moe_config(NUM_E, HIDDEN, INTER, TOP_K, num_local, dp=dp, ep=ep, ep_rank=ep_rank, backend=backend)


def _routing(num_t: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, logits = make_inputs(num_t, HIDDEN, NUM_E, seed)
    ids = torch.topk(logits, TOP_K, dim=1).indices.to(torch.int32)
    weights = torch.softmax(logits.gather(1, ids.long()), dim=1)
    return x.bfloat16(), ids, weights


def _kernel(raw: dict[str, torch.Tensor], act: str, offset: int = 0, count: int = NUM_E, moe=None):
    """vLLM's FusedMoEKernel: its in-process prepare/finalize around our experts holding [offset, offset + count)."""
    w = prepare_gpt_oss_weights(**ep_shard(raw, offset, count), act=act)
    experts = vm.experts_class()(moe if moe is not None else _moe(count), vm.quant_config(), weights=w,
                                 expert_offset=offset, num_global_experts=NUM_E, impl="reference")
    return mk.FusedMoEKernel(MoEPrepareAndFinalizeNoDPEPModular(), experts), w


def _apply(kernel, w, x, ids, weights, expert_map=None) -> torch.Tensor:
    """The call vLLM's MoE method makes (GptOssMxfp4MoEMethod.apply), with the layer's packed weights."""
    return kernel.apply(hidden_states=x, w1=w.w13, w2=w.w2, topk_weights=weights, topk_ids=ids,
                        activation=MoEActivation.SWIGLUOAI, global_num_experts=NUM_E, expert_map=expert_map,
                        apply_router_weight_on_input=False)


def test_experts_declare_their_contract() -> None:
    from vllm.model_executor.layers.fused_moe.topk_weight_and_reduce import TopKWeightAndReduceNoOP
    from vllm.model_executor.layers.quantization.utils.quant_utils import kMxfp4Static

    cls = vm.experts_class()
    assert issubclass(cls, mk.FusedMoEExpertsModular) and cls is vm.experts_class()
    assert cls.activation_format() == mk.FusedMoEActivationFormat.Standard and not cls.is_monolithic()
    assert cls._supports_activation(MoEActivation.SWIGLUOAI) and not cls._supports_activation(MoEActivation.SILU)
    assert cls._supports_quant_scheme(kMxfp4Static, None) and not cls._supports_no_act_and_mul()
    assert cls._supports_parallel_config(_moe(4, dp=2, ep=2).moe_parallel_config)
    assert not cls._supports_parallel_config(_moe(4, dp=2, ep=2, backend="deepep_low_latency").moe_parallel_config)
    experts = cls(_moe(), vm.quant_config(), weights=prepare_gpt_oss_weights(**make_weights(NUM_E, HIDDEN, INTER)))
    assert experts.expects_unquantized_inputs and experts.supports_expert_map()
    assert isinstance(experts.finalize_weight_and_reduce_impl(), TopKWeightAndReduceNoOP)  # weighted and reduced
    assert experts.workspace_shapes(7, 2 * INTER, HIDDEN, TOP_K, NUM_E, NUM_E, None,
                                    MoEActivation.SWIGLUOAI) == ((0,), (0,), (7, HIDDEN))
    with pytest.raises(TypeError, match="PreparedMoEWeights"):
        cls(_moe(), vm.quant_config(), weights=make_weights(NUM_E, HIDDEN, INTER))


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
def test_one_rank_equals_our_full_layer(model_gemm: pytest.MonkeyPatch, act: str) -> None:
    raw = make_weights(NUM_E, HIDDEN, INTER)
    kernel, w = _kernel(raw, act)
    x, ids, weights = _routing(10)
    out = _apply(kernel, w, x, ids, weights)
    ref = fused_moe(x, (ids, weights), w, impl="reference", out_dtype=torch.bfloat16)
    assert out.shape == (10, HIDDEN) and out.dtype == torch.bfloat16
    assert float((out.float() - ref.float()).abs().max()) <= 2.0 ** -8 * float(ref.float().abs().max())


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_ep_ranks_sum_to_the_full_layer(model_gemm: pytest.MonkeyPatch, act: str, ranks: int) -> None:
    """vLLM's own linear expert map per rank (8 experts over 3 ranks: uneven), global ids, the rank's slice."""
    from vllm.model_executor.layers.fused_moe.expert_map_manager import determine_expert_map

    raw = make_weights(NUM_E, HIDDEN, INTER)
    x, ids, weights = _routing(12)
    full = fused_moe(x, (ids, weights), prepare_gpt_oss_weights(**raw, act=act), impl="reference",
                     out_dtype=torch.float32)
    total, counts = torch.zeros(12, HIDDEN), []
    for rank in range(ranks):
        count, emap, _ = determine_expert_map(ranks, rank, NUM_E)
        ep = vp.expert_slice(emap, count, NUM_E)
        counts.append(count)
        kernel, w = _kernel(raw, act, ep.offset, count, _moe(count, dp=ranks, ep=ranks, ep_rank=rank))
        total += _apply(kernel, w, x, ids, weights, emap).float()
    assert sum(counts) == NUM_E and (ranks == 2 or len(set(counts)) == 2)
    err = float((total - full).abs().max()) / float(full.abs().max())
    assert err <= ranks * 2.0 ** -8, err


def test_ids_outside_the_slice_contribute_nothing(model_gemm: pytest.MonkeyPatch) -> None:
    """Every pair routed to rank 0's experts: rank 1's output rows are exact zeros; tokens partly on rank 1 are
    exactly its pairs' share."""
    raw = make_weights(NUM_E, HIDDEN, INTER)
    x, _, weights = _routing(6)
    ids = torch.tensor([[0, 1, 2, 3]] * 6, dtype=torch.int32)  # rank 0 holds [0, 4)
    kernel, w = _kernel(raw, "mxfp8", 4, 4)
    out = _apply(kernel, w, x, ids, weights)
    assert out.shape == (6, HIDDEN) and not out.any()
    mixed = torch.tensor([[0, 5, 2, 7]] * 6, dtype=torch.int32)
    got = _apply(kernel, w, x, mixed, weights).float()
    only_mine = fused_moe(x, (mixed, weights), w, impl="reference", expert_offset=4, num_global_experts=NUM_E,
                          out_dtype=torch.bfloat16)
    assert torch.equal(got, only_mine.float()) and got.any()


def test_rank_with_no_tokens(model_gemm: pytest.MonkeyPatch) -> None:
    raw = make_weights(NUM_E, HIDDEN, INTER)
    kernel, w = _kernel(raw, "mxfp8", 0, 4)
    x, ids, weights = _routing(0)
    out = _apply(kernel, w, x, ids, weights)
    assert out.shape == (0, HIDDEN) and out.dtype == torch.bfloat16


class _Layer(torch.nn.Module):
    """What the plugin's method reads from vLLM's RoutedExperts: the loaded parameters and the routing facts."""

    def __init__(self, raw: dict[str, torch.Tensor], expert_map: torch.Tensor) -> None:
        super().__init__()
        for ours, theirs in (("w13", "w13_weight"), ("w13_scale", "w13_weight_scale"), ("w13_bias", "w13_bias"),
                             ("w2", "w2_weight"), ("w2_scale", "w2_weight_scale"), ("w2_bias", "w2_bias")):
            self.register_parameter(theirs, torch.nn.Parameter(raw[ours].clone(), requires_grad=False))
        self.expert_map, self.global_num_experts = expert_map, NUM_E
        self.activation, self.apply_router_weight_on_input = MoEActivation.SWIGLUOAI, False


def test_plugin_serves_dp_ep_through_the_modular_kernel(model_gemm: pytest.MonkeyPatch, registry: None,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """DP = 2 with EP = 2 over vLLM's default all2all: the method builds vLLM's modular kernel around our experts at
    load time (vLLM's own maybe_make_prepare_finalize, which would ask for the EP group: replaced here by its
    in-process prepare/finalize) and `apply` goes through it."""
    from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.fused_moe import all2all_utils
    from vllm.model_executor.layers.fused_moe.expert_map_manager import determine_expert_map

    made = []

    def prepare_finalize(moe, quant_config, **kwargs):
        made.append((moe.moe_parallel_config.all2all_backend, quant_config, kwargs))
        return MoEPrepareAndFinalizeNoDPEPModular()

    model_gemm.setattr(all2all_utils, "maybe_make_prepare_finalize", prepare_finalize)
    raw = make_weights(NUM_E, HIDDEN, INTER)
    count, emap, _ = determine_expert_map(2, 1, NUM_E)
    moe = _moe(count, dp=2, ep=2, ep_rank=1)
    assert moe.moe_parallel_config.use_all2all_kernels and vp.why_not_ours(moe) is None
    vp._logged.clear()
    with caplog.at_level(logging.INFO, logger=vp.logger.name), \
            set_current_vllm_config(VllmConfig(device_config=DeviceConfig(device="cpu"))):
        method = vp.install()()._make_moe_method(moe)
        layer = _Layer(ep_shard(raw, 4, count), emap)
        method.process_weights_after_loading(layer)
    assert method.uses_sm12x and method.sm12x_modular and method.supports_internal_mk and not method.is_monolithic
    assert isinstance(method.moe_kernel.fused_experts, vm.experts_class())
    assert made and made[0][0] == "allgather_reducescatter" and made[0][2].get("allow_new_interface", True)
    assert "modular kernel" in caplog.text and "MoEPrepareAndFinalizeNoDPEPModular + Sm12xMxfp4Experts" in caplog.text
    x, ids, weights = _routing(9)
    out = method.apply(layer, x, weights, ids, None, None)
    ref = fused_moe(x, (ids, weights), method.sm12x_weights, impl="reference", expert_offset=4,
                    num_global_experts=NUM_E, out_dtype=torch.bfloat16)
    assert float((out.float() - ref.float()).abs().max()) <= 2.0 ** -8 * float(ref.float().abs().max())


def test_unserved_dp_ep_configs_keep_vllms_backend() -> None:
    for backend in ("flashinfer_nvlink_one_sided", "nixl_ep"):
        reason = vp.why_not_ours(_moe(4, dp=2, ep=2, backend=backend))
        assert reason is not None and backend in reason and "allgather_reducescatter" in reason
    for backend in ("deepep_low_latency", "deepep_high_throughput"):  # served (test_vllm_plugin_batched.py)
        assert vp.why_not_ours(_moe(4, dp=2, ep=2, backend=backend)) is None
    eplb = _moe(4, dp=2, ep=2)
    eplb.moe_parallel_config.enable_eplb = True
    assert "EPLB" in vp.why_not_ours(eplb)
    assert vp.why_not_ours(_moe(4, dp=2, ep=2)) is None


def test_a_batched_prepare_finalize_gets_the_batched_experts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batched dispatch (DeepEP low-latency style) gets our BatchedExperts-format class, not the Standard one."""
    from vllm.model_executor.layers.fused_moe import all2all_utils
    from vllm.model_executor.layers.fused_moe.prepare_finalize.batched import BatchedPrepareAndFinalize

    batched = BatchedPrepareAndFinalize(max_num_tokens=16, num_local_experts=4, num_dispatchers=1, rank=0)
    monkeypatch.setattr(all2all_utils, "maybe_make_prepare_finalize", lambda moe, quant_config, **kw: batched)
    w = prepare_gpt_oss_weights(**make_weights(4, HIDDEN, INTER))
    kernel = vm.make_kernel(_moe(4, dp=2, ep=2), w, 0, NUM_E)
    assert type(kernel.fused_experts) is vm.batched_experts_class() and kernel.prepare_finalize is batched


class _SimulatedEPGroup:
    """Stands in for vLLM's EP GroupCoordinator of a DP world run one rank after the other in this process: `dispatch`
    is the all-gather (every rank receives all ranks' tokens, ids and weights), `combine_into_output` records each
    rank's contribution to the reduce-scatter, summed by the test once every rank ran."""

    def __init__(self, chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        self.chunks, self.rank, self.combined = chunks, 0, {}

    def dispatch(self, hidden_states, topk_weights, topk_ids, is_sequence_parallel=False, extra_tensors=None):
        x, ids, weights = self.chunks[self.rank]
        assert extra_tensors is None  # no activation scales: the prepare step left the rows unquantized
        assert torch.equal(hidden_states, x) and hidden_states.dtype == torch.bfloat16
        assert torch.equal(topk_ids, ids) and torch.equal(topk_weights, weights)
        return tuple(torch.cat([c[i] for c in self.chunks]) for i in (0, 2, 1))

    def allocate_combine_input(self, shape, dtype, device, is_sequence_parallel=False):
        return None

    def combine_into_output(self, hidden_states, output, is_sequence_parallel=False):
        self.combined[self.rank] = hidden_states.clone()
        output.zero_()  # the reduce-scatter's result is assembled by the test
        return output


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
@pytest.mark.parametrize("tokens", [(7, 5), (6, 0)])
def test_dp_ep_through_vllms_allgather_prepare_finalize(model_gemm: pytest.MonkeyPatch, act: str,
                                                        tokens: tuple[int, int]) -> None:
    """DP = EP = 2 over vLLM's default all2all: vLLM's own maybe_make_prepare_finalize picks its all-gather /
    reduce-scatter prepare/finalize (MoEPrepareAndFinalizeNaiveDPEPModular) for our experts; with the EP group
    simulated, the reduce-scatter of the ranks' outputs equals the full layer on every rank's tokens (an idle DP
    rank included)."""
    from types import SimpleNamespace

    from vllm.model_executor.layers.fused_moe import all2all_utils
    from vllm.model_executor.layers.fused_moe.expert_map_manager import determine_expert_map
    from vllm.model_executor.layers.fused_moe.prepare_finalize import naive_dp_ep

    raw = make_weights(NUM_E, HIDDEN, INTER)
    chunks = [_routing(n, seed=3 + r) for r, n in enumerate(tokens)]
    group = _SimulatedEPGroup(chunks)
    model_gemm.setattr(all2all_utils, "get_ep_all2all_manager", lambda *a, **k: SimpleNamespace(world_size=2))
    model_gemm.setattr(naive_dp_ep, "get_ep_group", lambda: group)
    for rank in range(2):
        count, emap, _ = determine_expert_map(2, rank, NUM_E)
        ep = vp.expert_slice(emap, count, NUM_E)
        w = prepare_gpt_oss_weights(**ep_shard(raw, ep.offset, count), act=act)
        kernel = vm.make_kernel(_moe(count, dp=2, ep=2, ep_rank=rank), w, ep.offset, NUM_E, impl="reference")
        assert type(kernel.prepare_finalize) is naive_dp_ep.MoEPrepareAndFinalizeNaiveDPEPModular
        group.rank = rank
        x, ids, weights = chunks[rank]
        out = _apply(kernel, w, x, ids, weights, emap)
        assert out.shape == (tokens[rank], HIDDEN)
    x_all, ids_all, w_all = (torch.cat([c[i] for c in chunks]) for i in range(3))
    total = group.combined[0].float() + group.combined[1].float()  # the reduce-scatter's sum, before the scatter
    full = fused_moe(x_all, (ids_all, w_all), prepare_gpt_oss_weights(**raw, act=act), impl="reference",
                     out_dtype=torch.float32)
    assert total.shape == full.shape == (sum(tokens), HIDDEN)
    assert float((total - full).abs().max()) <= 2 * 2.0 ** -8 * float(full.abs().max())
