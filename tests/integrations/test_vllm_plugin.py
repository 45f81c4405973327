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

fm = importlib.import_module("flashinfer_sm12x.moe.fused_moe")


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
    assert vp.why_not_ours(_moe_config(use_ep=True)[0]).startswith("expert parallelism")


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
