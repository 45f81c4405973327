# SPDX-License-Identifier: Apache-2.0
"""vLLM plugin: GPT-OSS MXFP4 MoE layers on SM120/SM121 run flashinfer_sm12x.fused_moe instead of Marlin.

Registered through the `vllm.general_plugins` entry point (pyproject.toml), which vLLM calls in every process
before it builds a model. `register()` changes nothing unless all hold:
- opt-in: `VLLM_FLASHINFER_MOE_BACKEND=sm12x` (the variable users reach for; vLLM >= 0.24 no longer defines it,
  so this plugin owns it) or `FLASHINFER_SM12X_MOE=1`;
- the GPU is SM12x (`current_platform.is_device_capability_family(120)`: RTX 50xx / RTX PRO 6000 / DGX Spark);
- vLLM 0.33.x or 0.34.x (one code path: the MoE-method API below is the same in both; others are left untouched,
  with a warning);
- not `VLLM_RELOAD_MODE=direct` (vLLM 0.34's direct weight reload writes checkpoint-layout scales into the
  parameters we hold swizzled: refused with a warning, vLLM's own backend serves the model).

How: `gpt_oss_mxfp4` is re-registered (register_quantization_config allows overriding a built-in name) with a
subclass of vLLM's GptOssMxfp4Config whose MoE method subclasses GptOssMxfp4MoEMethod. Names stay
"gpt_oss_mxfp4" because vLLM's GPT-OSS weight loader checks them. A layer our kernels do not serve keeps vLLM's
own method and backend, with one log line per reason and process: an explicit `--moe-backend` other than "auto"
(vLLM's explicit choice wins over the plugin's opt-in, an environment variable often set image-wide), data
parallelism combined with expert parallelism over an all2all backend other than vLLM's default
`allgather_reducescatter` and DeepEP (high-throughput, low-latency; DeepEP with bf16 activations and an even expert
split only), EPLB, an expert placement other than "linear", LoRA, another activation.
Served: one GPU, tensor parallelism (each rank holds I/tp, padded to 128; vLLM all-reduces the output and loads
the fc2 bias on TP rank 0 only) and expert parallelism with DP = 1 (each rank holds a contiguous slice of the
experts; vLLM hands over global expert ids and all-reduces; the slice becomes fused_moe's expert_offset /
num_global_experts once, at load time), and data parallelism with expert parallelism: the layer runs vLLM's
modular kernel, vLLM's prepare/finalize (all2all dispatch and combine) around our experts class of its activation
format (`vllm_modular.Sm12xMxfp4Experts` for Standard rows: all-gather, DeepEP high-throughput;
`vllm_modular.Sm12xMxfp4BatchedExperts` for per-expert batched rows: DeepEP low-latency), built at load time.
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
ENV_RELOAD = "VLLM_RELOAD_MODE"  # vLLM 0.34: "direct" reloads checkpoint data straight into the parameters
SUPPORTED_VLLM = ((0, 33), (0, 34))  # major.minor versions whose MoE-method API this plugin implements
QUANT_NAME = "gpt_oss_mxfp4"
_PAD = 128  # H and I multiples: the W4A8 kernel's K alignment and the 128x4 scale layout's row tile


class ExpertMapError(ValueError):
    """vLLM's expert_map cannot be served: not a contiguous slice, or of the wrong size, dtype or device."""


@dataclasses.dataclass(frozen=True)
class ExpertSlice:
    """The experts one EP rank holds: global ids [offset, offset + num_local) of num_global."""

    offset: int
    num_local: int
    num_global: int


_logged: set[str] = set()


def _log_once(level: int, msg: str) -> None:
    """One line per distinct message and process (a model has dozens of MoE layers that share a reason)."""
    if msg not in _logged:
        _logged.add(msg)
        logger.log(level, msg)


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


def reload_conflict() -> str | None:
    """Why vLLM's weight-reload mode rules our in-place adoption out, or None."""
    mode = os.environ.get(ENV_RELOAD, "").strip().lower()
    if mode == "direct":
        return (f"{ENV_RELOAD}=direct writes checkpoint-layout weights and scales straight into the parameters, "
                "which this plugin holds with scales swizzled in place: it would corrupt them")
    return None


def sm12x_gpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cuda() and current_platform.is_device_capability_family(120))


def register() -> None:
    """The entry point. Opt-in, SM12x only, vLLM 0.33.x / 0.34.x only; otherwise vLLM is left as it is."""
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
    conflict = reload_conflict()
    if conflict is not None:
        logger.warning("flashinfer_sm12x vLLM plugin: %s; leaving vLLM's MoE untouched (unset %s to use the "
                       "plugin)", conflict, ENV_RELOAD)
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


def why_not_ours(moe: Any, placement: str = "linear") -> str | None:
    """None when our fused MoE serves a layer with this FusedMoEConfig, else the reason it does not.

    Parameters
    ----------
    moe : vllm FusedMoEConfig
        The layer's MoE config (its parallel config, activation, dtype, vLLM's requested backend).
    placement : str
        vLLM's `expert_placement_strategy` (parallel config): only "linear" gives each EP rank a contiguous slice.

    Returns
    -------
    str or None
        The reason the layer keeps vLLM's backend, or None when ours serves it.
    """
    backend = getattr(moe, "moe_backend", "auto")
    if backend not in (None, "auto"):
        return (f"vLLM's --moe-backend={backend} was chosen explicitly, and an explicit vLLM choice wins over "
                f"{ENV_BACKEND}/{ENV_ENABLE}")
    pc = moe.moe_parallel_config
    if pc.use_ep:
        if getattr(pc, "enable_eplb", False):
            return "expert parallelism with EPLB (redundant, moving experts)"
        if pc.use_all2all_kernels:
            from .vllm_modular import all2all_reason

            reason = all2all_reason(pc, getattr(moe, "num_experts", None), getattr(moe, "in_dtype", None))
            if reason is not None:
                return reason
        if placement != "linear":
            return f"expert placement {placement!r} (the plugin serves contiguous expert slices: 'linear')"
    if getattr(moe, "is_lora_enabled", False):
        return "LoRA"
    if getattr(moe.activation, "name", str(moe.activation)) != "SWIGLUOAI":
        return f"activation {moe.activation} (ours: GPT-OSS swiglu_oai)"
    if moe.in_dtype not in (torch.bfloat16, torch.float16):
        return f"activation dtype {moe.in_dtype}"
    return None


def expert_slice(expert_map: torch.Tensor | None, num_local: int, num_global: int,
                 device: torch.device | None = None) -> ExpertSlice | None:
    """vLLM's expert_map (int32 [E_global]: local slot of each global expert, or -1) -> the rank's slice.

    Runs once at load time on the host (one copy of E_global ints), so `apply` passes two ints and never syncs.

    Parameters
    ----------
    expert_map : torch.Tensor or None
        The layer's `expert_map`; None (no expert parallelism) gives None.
    num_local : int
        The experts this rank holds (the loaded weights' first dimension).
    num_global : int
        The model's experts (routing ids lie in [0, num_global)).
    device : torch.device, optional
        Where the map must live (the layer's weights' device); None skips the check.

    Returns
    -------
    ExpertSlice or None

    Raises
    ------
    ExpertMapError
        A map of the wrong type, dtype, size or device, or one that is not the contiguous slice
        [offset, offset + num_local) -> [0, num_local) with -1 elsewhere (round-robin placement, EPLB).
    """
    if expert_map is None:
        return None
    if not isinstance(expert_map, torch.Tensor):
        raise ExpertMapError(f"expert_map must be a tensor, got {type(expert_map).__name__}")
    if expert_map.dtype != torch.int32:
        raise ExpertMapError(f"expert_map must be int32, got {expert_map.dtype}")
    if tuple(expert_map.shape) != (num_global,):
        raise ExpertMapError(f"expert_map must have shape ({num_global},), got {tuple(expert_map.shape)}")
    if device is not None and expert_map.device != torch.device(device):
        raise ExpertMapError(f"expert_map is on {expert_map.device}, the layer's weights on {device}")
    host = expert_map.cpu().tolist()  # load time: one small copy, never in the forward
    mine = [g for g, slot in enumerate(host) if slot != -1]
    if len(mine) != num_local or not mine:
        raise ExpertMapError(f"expert_map gives this rank {len(mine)} experts, its weights hold {num_local}")
    offset = mine[0]
    if any(host[offset + i] != i for i in range(num_local)) or any(s < -1 for s in host):
        raise ExpertMapError("expert_map is not a contiguous slice of the experts in order (round-robin placement "
                             "or EPLB): the plugin serves [offset, offset + n) -> [0, n) only")
    return ExpertSlice(offset, num_local, num_global)


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


def _placement() -> str:
    """vLLM's expert placement strategy from the current config ("linear" when none is set)."""
    try:
        from vllm.config import get_current_vllm_config

        return str(getattr(get_current_vllm_config().parallel_config, "expert_placement_strategy", "linear"))
    except Exception:  # no current config (unit use outside an engine): vLLM's default
        return "linear"


def make_method_class(base: type) -> type:
    """Our MoE method as a subclass of vLLM's GptOssMxfp4MoEMethod (`base`), falling back to it per layer."""

    class Sm12xGptOssMxfp4MoEMethod(base):
        def __init__(self, moe: Any) -> None:
            self.sm12x_reason = why_not_ours(moe, _placement())
            if self.sm12x_reason is not None:
                _log_once(logging.WARNING, f"flashinfer_sm12x: MoE layers keep vLLM's own backend: {self.sm12x_reason}")
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
            self.sm12x_slice: ExpertSlice | None = None
            pc = moe.moe_parallel_config
            # DP > 1 with EP (or PCP / SP with EP): vLLM's modular kernel, its prepare/finalize (all2all dispatch
            # and combine) around our experts, built once the weights are adopted; otherwise `apply` calls fused_moe.
            self.sm12x_modular = bool(pc.use_ep and pc.use_all2all_kernels)
            path = (f"vLLM's modular kernel (all2all {pc.all2all_backend!r} dispatch/combine around our experts)"
                    if self.sm12x_modular else "fused_moe called from the MoE method")
            _log_once(logging.INFO, f"flashinfer_sm12x: GPT-OSS MoE layers run flashinfer_sm12x.fused_moe "
                                    f"({self.sm12x_act}; tp {pc.tp_size}, dp {pc.dp_size}, "
                                    f"ep {pc.ep_size if pc.use_ep else 1}; path: {path})")

        @property
        def uses_sm12x(self) -> bool:
            return self.sm12x_reason is None

        @property
        def is_monolithic(self) -> bool:
            return False if self.uses_sm12x else super().is_monolithic

        @property
        def accepts_quantized_input(self) -> bool:
            # vLLM 0.34 may hand a method pre-quantized activations when this is True; ours quantize bf16 inputs
            # themselves (MXFP8/MXFP4 in the glue), so we always want the unquantized hidden states.
            if self.uses_sm12x:
                return False
            return bool(getattr(super(), "accepts_quantized_input", False))

        def maybe_roundup_sizes(self, hidden_size: int, intermediate_size_per_partition: int, act_dtype: Any,
                                moe_parallel_config: Any) -> tuple[int, int]:
            if not self.uses_sm12x:
                return super().maybe_roundup_sizes(hidden_size, intermediate_size_per_partition, act_dtype,
                                                   moe_parallel_config)
            # vLLM's all2all rounding first (DeepEP: 512-byte rows for high-throughput, its supported sizes for
            # low-latency), then our multiples of 128; the GPT-OSS backends' own rounding is not ours to apply.
            from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase

            hidden_size, _ = FusedMoEMethodBase.maybe_roundup_sizes(self, hidden_size, intermediate_size_per_partition,
                                                                    act_dtype, moe_parallel_config)
            return round_up(hidden_size, _PAD), round_up(intermediate_size_per_partition, _PAD)

        def process_weights_after_loading(self, layer: Any) -> None:
            if not self.uses_sm12x:
                return super().process_weights_after_loading(layer)
            # Validate the EP slice before touching the weights: a bad map leaves them as vLLM loaded them.
            num_local = layer.w13_weight.shape[0]
            self.sm12x_slice = expert_slice(getattr(layer, "expert_map", None), num_local,
                                            self.moe.num_experts, layer.w13_weight.device)
            self.sm12x_weights = adopt_layer_weights(layer, self.sm12x_act)
            if self.sm12x_modular:
                from .vllm_modular import make_kernel

                ep = self.sm12x_slice
                self.moe_kernel = make_kernel(self.moe, self.sm12x_weights,
                                              0 if ep is None else ep.offset, None if ep is None else ep.num_global)
                _log_once(logging.INFO, "flashinfer_sm12x: data + expert parallel MoE layers run vLLM's modular "
                                        f"kernel {type(self.moe_kernel.prepare_finalize).__name__} + "
                                        f"{type(self.moe_kernel.fused_experts).__name__}")
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
            if self.moe_kernel is not None:  # DP + EP: dispatch, our experts, combine (vllm_modular)
                return self.moe_kernel.apply(hidden_states=x, w1=layer.w13_weight, w2=layer.w2_weight,
                                             topk_weights=topk_weights, topk_ids=topk_ids, activation=layer.activation,
                                             global_num_experts=layer.global_num_experts,
                                             expert_map=layer.expert_map,
                                             apply_router_weight_on_input=layer.apply_router_weight_on_input)
            # vLLM's ids are valid by construction and this runs inside graph capture: no host-side id check.
            # Under EP they are global ids; the slice (fixed at load time) tells fused_moe which are ours.
            ep = self.sm12x_slice
            kw = {} if ep is None else {"expert_offset": ep.offset, "num_global_experts": ep.num_global}
            return fused_moe(x, (topk_ids, topk_weights), self.sm12x_weights, validate_ids=False, out_dtype=x.dtype,
                             **kw)

    return Sm12xGptOssMxfp4MoEMethod
