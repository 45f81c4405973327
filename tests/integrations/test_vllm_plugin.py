# SPDX-License-Identifier: Apache-2.0
"""The vLLM plugin on the CPU with a real installed vLLM (0.33, in its own environment, see README): the entry
point, plugin loading, the `gpt_oss_mxfp4` override, the MoE method's choices, and a whole layer forward
(weights adopted from vLLM's loaded layout, vLLM's top-k) against the float64 reference, with the grouped GEMM
replaced by the torch model of its contract. The SM12x GPU run is tests/sm12x/test_vllm.py."""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest
import torch

from flashinfer_sm12x.integrations import vllm_plugin as vp
from flashinfer_sm12x.moe.reference import gpt_oss_moe_reference
from flashinfer_sm12x.testing.moe_cases import grouped_gemm_model, make_inputs, make_weights

fm = importlib.import_module("flashinfer_sm12x.moe.pipeline")  # where the MoE calls its grouped GEMM


vllm = pytest.importorskip("vllm", reason="vLLM is not installed in this environment (see README: vLLM tests)")
from vllm.model_executor.layers import quantization as vq  # noqa: E402


@pytest.fixture
def registry() -> None:
    saved = dict(vq._CUSTOMIZED_METHOD_TO_QUANT_CONFIG)
    yield
    vq._CUSTOMIZED_METHOD_TO_QUANT_CONFIG.clear()
    vq._CUSTOMIZED_METHOD_TO_QUANT_CONFIG.update(saved)


def _config_cls() -> type:
    return vq._CUSTOMIZED_METHOD_TO_QUANT_CONFIG.get(vp.QUANT_NAME) or vq.get_quantization_config(vp.QUANT_NAME)


def test_supported_vllm_is_installed() -> None:
    assert vp.supported_version(vllm.__version__), vllm.__version__


def test_entry_point_is_registered() -> None:
    eps = importlib.metadata.entry_points(group="vllm.general_plugins")
    ours = [ep for ep in eps if ep.name == "flashinfer_sm12x_moe"]
    assert len(ours) == 1 and ours[0].load() is vp.register


@pytest.mark.parametrize(("env", "gpu", "ours"), [({}, True, False), ({vp.ENV_BACKEND: "sm12x"}, False, False),
                                                  ({vp.ENV_BACKEND: "sm12x"}, True, True),
                                                  ({vp.ENV_ENABLE: "1"}, True, True)])
def test_vllm_plugin_loading_selects_our_config(clean_env: pytest.MonkeyPatch, registry: None, env: dict,
                                                gpu: bool, ours: bool) -> None:
    import vllm.plugins as plugins

    for k, v in env.items():
        clean_env.setenv(k, v)
    clean_env.setattr(vp, "sm12x_gpu", lambda: gpu)  # this machine has no GPU: the SM12x check is the switch
    clean_env.setattr(plugins, "plugins_loaded", False)
    clean_env.delenv("VLLM_PLUGINS", raising=False)
    plugins.load_general_plugins()  # vLLM's own loader, through the installed entry point
    cls = _config_cls()
    from vllm.model_executor.layers.quantization.mxfp4 import GptOssMxfp4Config

    assert issubclass(cls, GptOssMxfp4Config) and cls.get_name() == vp.QUANT_NAME
    assert (cls.__name__ == "Sm12xGptOssMxfp4Config") == ours


def _moe_config(use_ep: bool = False, hidden: int = 128, inter: int = 128, experts: int = 8):
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.config import (
        FusedMoEConfig,
        FusedMoEParallelConfig,
        RoutingMethodType,
    )

    pc = FusedMoEParallelConfig.make_no_parallel()
    if use_ep:
        pc.use_ep = True
    return FusedMoEConfig(num_experts=experts, experts_per_token=4, hidden_dim=hidden, intermediate_size=inter,
                          num_local_experts=experts, num_logical_experts=experts,
                          activation=MoEActivation.SWIGLUOAI, device="cpu",
                          routing_method=RoutingMethodType.Renormalize, moe_parallel_config=pc,
                          in_dtype=torch.bfloat16, has_bias=True), pc


def test_method_choices(registry: None) -> None:
    from vllm.config import set_current_vllm_config

    cfg_cls = vp.install()
    moe, pc = _moe_config()
    with set_current_vllm_config(_cpu_config()):
        method = cfg_cls()._make_moe_method(moe)
    assert method.uses_sm12x and not method.is_monolithic and method.weight_dtype == vp.QUANT_NAME
    assert method.maybe_roundup_sizes(2880, 2880, torch.bfloat16, pc) == (2944, 2944)
    assert method.maybe_roundup_sizes(2880, 1440, torch.bfloat16, pc) == (2944, 1536)  # TP=2 shard
    assert method.accepts_quantized_input is False  # vLLM 0.34 must hand us bf16 hidden states
    assert vp.why_not_ours(_moe_config(use_ep=True)[0]) is None  # TP+EP with DP = 1: ours
    ep_eplb = _moe_config(use_ep=True)[0]
    ep_eplb.moe_parallel_config.enable_eplb = True
    assert "EPLB" in vp.why_not_ours(ep_eplb)
    dp_ep = _moe_config(use_ep=True)[0]
    dp_ep.moe_parallel_config.dp_size = 2
    assert vp.why_not_ours(dp_ep) is None  # DP + EP over vLLM's default all2all: vLLM's modular kernel, our experts
    dp_ep.moe_parallel_config.all2all_backend = "deepep_low_latency"
    assert vp.why_not_ours(dp_ep) is None  # DeepEP LL: vLLM's modular kernel, our batched experts
    dp_ep.moe_parallel_config.all2all_backend = "nixl_ep"
    assert "data parallelism" in vp.why_not_ours(dp_ep)
    assert "round_robin" in vp.why_not_ours(_moe_config(use_ep=True)[0], "round_robin")


def _cpu_config():
    from vllm.config import DeviceConfig, VllmConfig

    return VllmConfig(device_config=DeviceConfig(device="cpu"))  # no GPU here: vLLM cannot infer the device


class _Layer(torch.nn.Module):
    """The parameters vLLM's GptOssMxfp4MoEMethod.create_weights registers, holding a loaded checkpoint."""

    def __init__(self, raw: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for ours, theirs in (("w13", "w13_weight"), ("w13_scale", "w13_weight_scale"), ("w13_bias", "w13_bias"),
                             ("w2", "w2_weight"), ("w2_scale", "w2_weight_scale"), ("w2_bias", "w2_bias")):
            self.register_parameter(theirs, torch.nn.Parameter(raw[ours].clone(), requires_grad=False))


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
def test_layer_forward_matches_reference(registry: None, clean_env: pytest.MonkeyPatch, act: str) -> None:
    from vllm.config import set_current_vllm_config

    clean_env.setenv(vp.ENV_ACT, act)
    clean_env.setattr(fm, "grouped_mm_fp4", grouped_gemm_model)
    moe, _ = _moe_config()
    with set_current_vllm_config(_cpu_config()):
        method = vp.install()()._make_moe_method(moe)
    raw = make_weights(8, 128, 128)
    layer = _Layer(raw)
    before = layer.w13_weight_scale.data_ptr()
    method.process_weights_after_loading(layer)
    assert layer.w13_weight_scale.data_ptr() != before  # adopted in place: the layer holds the swizzled scales
    assert method.sm12x_weights.w13_sf.data_ptr() == layer.w13_weight_scale.data_ptr()
    x, logits = make_inputs(10, 128, 8)
    ids = torch.topk(logits, 4, dim=1).indices.to(torch.int32)
    weights = torch.softmax(logits.gather(1, ids.long()), dim=1)
    out = method.apply(layer, x.bfloat16(), weights, ids, None, None)
    ref = gpt_oss_moe_reference(x.bfloat16(), (ids, weights), **raw, act_quant=act)
    assert out.shape == x.shape and out.dtype == torch.bfloat16
    assert float((out.double() - ref).abs().max() / ref.abs().max()) < 1e-2
    with pytest.raises(NotImplementedError, match="shared experts"):
        method.apply(layer, x.bfloat16(), weights, ids, object(), x)


def test_direct_reload_is_refused(clean_env: pytest.MonkeyPatch, registry: None,
                                  caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> None:
        raise AssertionError("install() ran under VLLM_RELOAD_MODE=direct")

    clean_env.setenv(vp.ENV_ENABLE, "1")
    clean_env.setenv(vp.ENV_RELOAD, "direct")
    clean_env.setattr(vp, "sm12x_gpu", lambda: True)
    clean_env.setattr(vp, "install", boom)
    with caplog.at_level("WARNING", logger=vp.logger.name):
        vp.register()
    assert "VLLM_RELOAD_MODE=direct" in caplog.text and "untouched" in caplog.text
    clean_env.setenv(vp.ENV_RELOAD, "layerwise")  # vLLM's default mode reruns post-load processing: ours
    with pytest.raises(AssertionError, match="install"):
        vp.register()


def test_explicit_moe_backend_wins_with_one_log_line(registry: None, caplog: pytest.LogCaptureFixture) -> None:
    moe, _ = _moe_config()
    assert vp.why_not_ours(moe) is None
    moe.moe_backend = "marlin"
    reason = vp.why_not_ours(moe)
    assert reason is not None and "--moe-backend=marlin" in reason and "wins" in reason
    vp._logged.clear()
    with caplog.at_level("WARNING", logger=vp.logger.name):
        for _ in range(3):  # a model's many MoE layers: one line
            vp._log_once(30, f"flashinfer_sm12x: MoE layers keep vLLM's own backend: {reason}")
    assert caplog.text.count("--moe-backend=marlin") == 1


def _parallel(monkeypatch: pytest.MonkeyPatch, size: int, rank: int, ep: bool):
    """vLLM's own FusedMoEParallelConfig.make for rank `rank` of a TP group of `size` (DP = PCP = 1)."""
    from vllm.config import ParallelConfig
    from vllm.model_executor.layers.fused_moe import config as moe_cfg

    monkeypatch.setattr(moe_cfg, "get_tensor_model_parallel_rank", lambda: rank)
    return moe_cfg.FusedMoEParallelConfig.make(tp_size_=size, pcp_size_=1, dp_size_=1, sp_size_=1,
                                               vllm_parallel_config=ParallelConfig(enable_expert_parallel=ep))


class _Stub:
    def __init__(self, quant_config: object) -> None:
        self.quant_config = quant_config


def _rank_layer(monkeypatch: pytest.MonkeyPatch, raw: dict[str, torch.Tensor], size: int, rank: int, ep: bool,
                cfg: object) -> tuple[object, torch.nn.Module]:
    """One rank's GPT-OSS MoE layer built as vLLM builds it: its parallel config, FusedMoEConfig (I per partition),
    our method's padding, vLLM's create_weights and vLLM's GPT-OSS MXFP4 checkpoint loader with its weight loader."""
    import functools
    import types

    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.config import FusedMoEConfig, RoutingMethodType
    from vllm.model_executor.layers.fused_moe.expert_map_manager import determine_expert_map
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
    from vllm.model_executor.models import gpt_oss

    num_e, two_i, half_h = raw["w13"].shape
    hidden, inter = 2 * half_h, two_i // 2
    pc = _parallel(monkeypatch, size, rank, ep)
    num_local, expert_map, _ = determine_expert_map(pc.ep_size, pc.ep_rank, num_e) if ep else (num_e, None, None)
    moe = FusedMoEConfig(num_experts=num_e, experts_per_token=4, hidden_dim=hidden, intermediate_size=inter,
                         num_local_experts=num_local, num_logical_experts=num_e, activation=MoEActivation.SWIGLUOAI,
                         device="cpu", routing_method=RoutingMethodType.Renormalize, moe_parallel_config=pc,
                         in_dtype=torch.bfloat16, has_bias=True)
    with set_current_vllm_config(_cpu_config()):
        method = cfg._make_moe_method(moe)
    assert method.uses_sm12x, method.sm12x_reason
    hp, ip = method.maybe_roundup_sizes(hidden, moe.intermediate_size_per_partition, torch.bfloat16, pc)
    experts = torch.nn.Module()
    experts.expert_map = expert_map
    method.create_weights(experts, num_local, hp, ip, torch.bfloat16,
                          weight_loader=functools.partial(RoutedExperts.weight_loader, _Stub(cfg)))
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Module()])
    model.layers[0].mlp = torch.nn.Module()
    model.layers[0].mlp.experts = experts
    model.parallel_config = types.SimpleNamespace(enable_expert_parallel=ep)
    model.config = types.SimpleNamespace(num_local_experts=num_e, intermediate_size=inter)
    model._try_load_streamed_expert = gpt_oss.GptOssModel._try_load_streamed_expert
    one = types.SimpleNamespace(world_size=1, rank_in_group=0)
    monkeypatch.setattr(gpt_oss, "get_tensor_model_parallel_world_size", lambda: size)
    monkeypatch.setattr(gpt_oss, "get_dp_group", lambda: one)
    monkeypatch.setattr(gpt_oss, "get_pcp_group", lambda: one)
    names = {"w13": "w13_weight", "w13_scale": "w13_weight_scale", "w13_bias": "w13_bias", "w2": "w2_weight",
             "w2_scale": "w2_weight_scale", "w2_bias": "w2_bias"}
    per_rank = num_e // size  # the GPT-OSS loader's own EP split (load_weights)
    checkpoint = [(f"layers.0.mlp.experts.{names[k]}", v.clone()) for k, v in raw.items()]
    gpt_oss.GptOssModel._load_weights_mxfp4(model, (rank + 1) * per_rank, rank * per_rank, checkpoint, [])
    method.process_weights_after_loading(experts)
    return method, experts


@pytest.mark.parametrize("act", ["mxfp8", "mxfp4"])
@pytest.mark.parametrize(("size", "ep"), [(2, False), (4, False), (8, False), (2, True), (4, True)])
def test_parallel_ranks_built_by_vllm_sum_to_the_full_layer(registry: None, clean_env: pytest.MonkeyPatch, act: str,
                                                            size: int, ep: bool) -> None:
    """TP: each rank holds I/tp (vLLM's block split, padded to 128) and the fc2 bias on rank 0 only; EP: a
    contiguous expert slice, global ids. The sum over ranks (vLLM's all-reduce) equals the unsharded layer."""
    clean_env.setenv(vp.ENV_ACT, act)
    clean_env.setattr(fm, "grouped_mm_fp4", grouped_gemm_model)
    cfg = vp.install()()
    num_e, hidden_size, inter = 8, 128, 960  # I = 30 blocks of 32: uneven over 4 and 8 ranks, like GPT-OSS's 90
    raw = make_weights(num_e, hidden_size, inter)
    x, logits = make_inputs(10, hidden_size, num_e)
    ids = torch.topk(logits, 4, dim=1).indices.to(torch.int32)
    weights = torch.softmax(logits.gather(1, ids.long()), dim=1)
    total = torch.zeros(10, hidden_size)
    for rank in range(size):
        method, layer = _rank_layer(clean_env, raw, size, rank, ep, cfg)
        if ep:
            assert layer.w13_weight.shape[0] == num_e // size
            assert method.sm12x_slice == vp.ExpertSlice(rank * (num_e // size), num_e // size, num_e)
        else:
            assert layer.w2_weight.shape[2] * 2 == -(-(inter // size) // 128) * 128  # I/tp padded to 128
            assert bool(layer.w2_bias.any()) == (rank == 0)  # vLLM loads the fc2 bias on TP rank 0 only
        total += method.apply(layer, x.bfloat16(), weights, ids, None, None).float()
    ref = gpt_oss_moe_reference(x.bfloat16(), (ids, weights), **raw, act_quant=act)
    assert float((total.double() - ref).abs().max() / ref.abs().max()) < 2e-2


def test_expert_map_from_vllm_becomes_a_slice() -> None:
    from vllm.model_executor.layers.fused_moe.expert_map_manager import determine_expert_map

    slices = []
    for rank in range(3):  # E = 32 over 3 ranks: uneven
        n, emap, _ = determine_expert_map(3, rank, 32)
        slices.append(vp.expert_slice(emap, n, 32, emap.device))
        assert slices[-1].num_local == n and int((emap >= 0).sum()) == n
    # The slices tile [0, 32) in rank order, unevenly.
    assert [s.offset for s in slices] == [0, slices[0].num_local, slices[0].num_local + slices[1].num_local]
    assert sum(s.num_local for s in slices) == 32 and len({s.num_local for s in slices}) == 2
    n, emap, _ = determine_expert_map(3, 1, 32, "round_robin")
    with pytest.raises(vp.ExpertMapError, match="contiguous"):
        vp.expert_slice(emap, n, 32)
