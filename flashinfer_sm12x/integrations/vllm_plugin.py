# SPDX-License-Identifier: Apache-2.0
"""vLLM plugin: GPT-OSS MXFP4 MoE layers on SM120/SM121 run flashinfer_sm12x.fused_moe instead of Marlin.

Registered through the `vllm.general_plugins` entry point (pyproject.toml), which vLLM calls in every process
before it builds a model. `register()` changes nothing unless both hold:
- opt-in: `VLLM_FLASHINFER_MOE_BACKEND=sm12x` (the variable users reach for; vLLM >= 0.24 no longer defines it,
  so this plugin reads it itself) or `FLASHINFER_SM12X_MOE=1`;
- the GPU is SM12x (`current_platform.is_device_capability_family(120)`: RTX 50xx / RTX PRO 6000 / DGX Spark).
Supported vLLM: 0.33.x (the MoE-method API below is 0.33's; other versions are left untouched, with a warning).

How: `gpt_oss_mxfp4` is re-registered (register_quantization_config allows overriding a built-in name) with a
subclass of vLLM's GptOssMxfp4Config whose MoE method subclasses GptOssMxfp4MoEMethod. Names stay
"gpt_oss_mxfp4" because vLLM's GPT-OSS weight loader checks them. A layer our kernels cannot serve (expert
parallelism, LoRA, another activation) keeps vLLM's own method and backend, with a log line saying why.
Our path: sizes padded to multiples of 128, weights adopted in place after loading (scales swizzled to the
128x4 layout, same shapes), and `apply` runs the fused MoE on vLLM's top-k ids/weights (routing stays
vLLM's). Activations: `FLASHINFER_SM12X_MOE_ACT=mxfp8` (W4A8, default) or `mxfp4` (W4A4, lower accuracy).
The fused MoE is sync-free, so vLLM's CUDA-graph capture of the MoE custom op covers it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch

from ..checks import round_up
from ..moe.fused_moe import fused_moe
from ..moe.weights import PreparedMoEWeights, prepare_gpt_oss_weights

logger = logging.getLogger("flashinfer_sm12x.vllm")

ENV_BACKEND = "VLLM_FLASHINFER_MOE_BACKEND"
ENV_ENABLE = "FLASHINFER_SM12X_MOE"
ENV_ACT = "FLASHINFER_SM12X_MOE_ACT"
SUPPORTED_VLLM = ((0, 33),)  # major.minor versions whose MoE-method API this plugin implements
QUANT_NAME = "gpt_oss_mxfp4"
_PAD = 128  # H and I multiples: the W4A8 kernel's K alignment and the 128x4 scale layout's row tile


def enabled() -> bool:
    return os.environ.get(ENV_BACKEND, "").strip().lower() == "sm12x" or os.environ.get(ENV_ENABLE, "") == "1"


def act_format() -> str:
    act = os.environ.get(ENV_ACT, "mxfp8").strip().lower()
    if act not in ("mxfp8", "mxfp4"):
        raise ValueError(f"{ENV_ACT} must be 'mxfp8' (W4A8) or 'mxfp4' (W4A4), got {act!r}")
    return act


def supported_version(version: str) -> bool:
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) in SUPPORTED_VLLM


def sm12x_gpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cuda() and current_platform.is_device_capability_family(120))


def register() -> None:
    """The entry point. Opt-in, SM12x only, vLLM 0.33.x only; otherwise vLLM is left as it is."""
    if not enabled():
        return
    try:
        import vllm
    except ImportError:
        logger.warning("flashinfer_sm12x vLLM plugin: vllm is not importable; nothing registered")
        return
    if not supported_version(vllm.__version__):
        logger.warning("flashinfer_sm12x vLLM plugin supports vLLM %s, not %s: leaving vLLM's MoE untouched",
                       ", ".join(f"{a}.{b}.x" for a, b in SUPPORTED_VLLM), vllm.__version__)
        return
    if not sm12x_gpu():
        logger.info("flashinfer_sm12x vLLM plugin: not an SM120/SM121 GPU; leaving vLLM's MoE untouched")
        return
    act_format()  # a bad value fails here, at startup, not at the first forward
    install()


def install() -> type:
    """Re-register `gpt_oss_mxfp4` with our config class (idempotent: a second call overwrites the entry)."""
    from vllm.model_executor.layers.quantization import register_quantization_config
    from vllm.model_executor.layers.quantization.mxfp4 import GptOssMxfp4Config, GptOssMxfp4MoEMethod

    method_cls = make_method_class(GptOssMxfp4MoEMethod)

    class Sm12xGptOssMxfp4Config(GptOssMxfp4Config):
        def _make_moe_method(self, moe: Any) -> Any:
            return method_cls(moe)

    register_quantization_config(QUANT_NAME)(Sm12xGptOssMxfp4Config)
    logger.info("flashinfer_sm12x: GPT-OSS MXFP4 MoE layers run flashinfer_sm12x.fused_moe (%s activations)",
                act_format())
    return Sm12xGptOssMxfp4Config


def why_not_ours(moe: Any) -> str | None:
    """None when our fused MoE serves a layer with this FusedMoEConfig, else the reason it does not."""
    if moe.moe_parallel_config.use_ep:
        return "expert parallelism (the plugin runs tensor-parallel shards only)"
    if getattr(moe, "is_lora_enabled", False):
        return "LoRA"
    if getattr(moe.activation, "name", str(moe.activation)) != "SWIGLUOAI":
        return f"activation {moe.activation} (ours: GPT-OSS swiglu_oai)"
    if moe.in_dtype not in (torch.bfloat16, torch.float16):
        return f"activation dtype {moe.in_dtype}"
    return None


def adopt_layer_weights(layer: Any, act: str) -> PreparedMoEWeights:
    """vLLM's loaded GPT-OSS expert weights (checkpoint layout, already padded to multiples of 128) -> ours.

    The interleaved gate/up rows stay as they are; scales are swizzled to the 128x4 layout, which for these
    sizes has the linear layout's shape, so the layer's parameters take the new data in place (no second copy
    of the experts stays alive)."""
    b13, b2 = getattr(layer, "w13_bias", None), getattr(layer, "w2_bias", None)
    w = prepare_gpt_oss_weights(layer.w13_weight.data, layer.w13_weight_scale.data,
                                None if b13 is None else b13.data, layer.w2_weight.data,
                                layer.w2_weight_scale.data, None if b2 is None else b2.data,
                                pad_to=_PAD, interleaved=True, act=act)
    for name, new in (("w13_weight", w.w13), ("w13_weight_scale", w.w13_sf), ("w2_weight", w.w2),
                      ("w2_weight_scale", w.w2_sf)):
        param = getattr(layer, name)
        if tuple(param.shape) != tuple(new.shape):
            raise ValueError(f"flashinfer_sm12x vLLM plugin: {name} {tuple(param.shape)} -> {tuple(new.shape)}: "
                             "sizes were not padded to multiples of 128")
        param.data = new
    return dataclasses.replace(w, w13=layer.w13_weight.data, w13_sf=layer.w13_weight_scale.data,
                               w2=layer.w2_weight.data, w2_sf=layer.w2_weight_scale.data)


def make_method_class(base: type) -> type:
    """Our MoE method as a subclass of vLLM's GptOssMxfp4MoEMethod (`base`), falling back to it per layer."""

    class Sm12xGptOssMxfp4MoEMethod(base):
        def __init__(self, moe: Any) -> None:
            self.sm12x_reason = why_not_ours(moe)
            if self.sm12x_reason is not None:
                logger.warning("flashinfer_sm12x: this MoE layer keeps vLLM's own backend: %s", self.sm12x_reason)
                super().__init__(moe)
                return
            # Ours: vLLM's backend selection is skipped (it would pick and set up Marlin for nothing).
            from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
            from vllm.model_executor.layers.fused_moe.oracle.mxfp4 import Mxfp4MoeBackend

            FusedMoEMethodBase.__init__(self, moe)

            self.weight_dtype = QUANT_NAME  # checked by vLLM's GPT-OSS weight loader
            self.mxfp4_backend, self.experts_cls = Mxfp4MoeBackend.NONE, None
            self.max_capture_size = getattr(moe, "max_capture_size", 0)
            self.moe_kernel = None
            self.sm12x_act = act_format()
            self.sm12x_weights: PreparedMoEWeights | None = None

        @property
        def uses_sm12x(self) -> bool:
            return self.sm12x_reason is None

        @property
        def is_monolithic(self) -> bool:
            return False if self.uses_sm12x else super().is_monolithic

        def maybe_roundup_sizes(self, hidden_size: int, intermediate_size_per_partition: int, act_dtype: Any,
                                moe_parallel_config: Any) -> tuple[int, int]:
            if not self.uses_sm12x:
                return super().maybe_roundup_sizes(hidden_size, intermediate_size_per_partition, act_dtype,
                                                   moe_parallel_config)
            return round_up(hidden_size, _PAD), round_up(intermediate_size_per_partition, _PAD)

        def process_weights_after_loading(self, layer: Any) -> None:
            if not self.uses_sm12x:
                return super().process_weights_after_loading(layer)
            self.sm12x_weights = adopt_layer_weights(layer, self.sm12x_act)
            return None

        def get_fused_moe_quant_config(self, layer: Any) -> Any:
            # vLLM's quant config describes its own kernels' operands; ours take nothing from it.
            return None if self.uses_sm12x else super().get_fused_moe_quant_config(layer)

        def apply(self, layer: Any, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                  shared_experts: Any, shared_experts_input: torch.Tensor | None) -> Any:
            if not self.uses_sm12x:
                return super().apply(layer, x, topk_weights, topk_ids, shared_experts, shared_experts_input)
            if shared_experts is not None:
                raise NotImplementedError("flashinfer_sm12x vLLM plugin: shared experts (GPT-OSS has none)")
            if self.sm12x_weights is None:
                raise RuntimeError("flashinfer_sm12x vLLM plugin: apply() before process_weights_after_loading()")
            # vLLM's ids are valid by construction and this runs inside graph capture: no host-side id check.
            return fused_moe(x, (topk_ids, topk_weights), self.sm12x_weights, validate_ids=False, out_dtype=x.dtype)

    return Sm12xGptOssMxfp4MoEMethod
