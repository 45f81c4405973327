# SPDX-License-Identifier: Apache-2.0
"""Our fused MoE as vLLM's modular-kernel experts: data parallelism with expert parallelism (issue #20, step 2).

For DP > 1 with EP, vLLM runs a MoE layer as a *modular kernel* (`modular_kernel.FusedMoEKernel`): a
prepare/finalize object dispatches each rank's tokens to the ranks holding their experts and combines the results
back, around an *experts* object that computes the local experts' contribution. This module gives vLLM an experts
class (`experts_class()`, a subclass of vLLM's `FusedMoEExpertsModular`) that runs `fused_moe` on the dispatched
tokens, and `make_kernel`, which pairs it with the prepare/finalize vLLM itself chooses
(`all2all_utils.maybe_make_prepare_finalize`), as vLLM's own MoE oracles do.

The contract our experts declare (truthfully, per vLLM's base class):

- activation format **Standard** ([tokens, hidden] rows, not the per-expert batched layout of DeepEP low-latency);
- `expects_unquantized_inputs` True: the prepare step dispatches bf16/fp16 rows and our kernels quantize them
  (MXFP8 or MXFP4) themselves;
- top-k ids are **global** expert ids (what vLLM's all-gather dispatch hands over), and `expert_map` is the rank's
  contiguous slice: it was validated once at load time (`vllm_plugin.expert_slice`) and becomes `fused_moe`'s
  `expert_offset` / `num_global_experts`; pairs routed to other ranks' experts contribute nothing;
- the output is **weighted and reduced** over the top-k (`fused_moe` applies the router weights, fc2 bias included,
  and sums): `finalize_weight_and_reduce_impl` is vLLM's `TopKWeightAndReduceNoOP`, and the finalize only combines;
- no workspaces (zero-sized): `fused_moe` allocates its own scratch; the output buffer is [tokens, hidden].

Served all2all backends: `SERVED_ALL2ALL` (vLLM's default `allgather_reducescatter`, whose prepare/finalize is
Standard-format with global ids). The others (DeepEP, MORI, NIXL, FlashInfer NVLink, ...) keep vLLM's own backend,
with a log line (see `vllm_plugin.why_not_ours`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from ..moe.fused_moe import fused_moe
from ..moe.weights import PreparedMoEWeights

SERVED_ALL2ALL = ("allgather_reducescatter",)
_ALPHA, _BETA, _LIMIT = 1.702, 1.0, 7.0  # GPT-OSS's swiglu_oai


def all2all_reason(moe_parallel_config: Any) -> str | None:
    """None when our experts can run under this parallel config's all2all backend, else why not.

    Parameters
    ----------
    moe_parallel_config : vllm FusedMoEParallelConfig
        The layer's parallel config (`use_all2all_kernels` True: DP > 1 with EP, or PCP / SP with EP).

    Returns
    -------
    str or None
    """
    backend = getattr(moe_parallel_config, "all2all_backend", None)
    if backend not in SERVED_ALL2ALL:
        return (f"expert parallelism with data parallelism over the all2all backend {backend!r} (the plugin's "
                f"modular-kernel experts serve {', '.join(SERVED_ALL2ALL)}: Standard-format dispatch, global ids)")
    return None


def formats_match(experts_format: Any, prepare_finalize_format: Any) -> bool:
    """Whether experts of `experts_format` consume a prepare/finalize's `prepare_finalize_format`.

    vLLM 0.34's FusedMoEActivationFormat has `is_superset` (PaddedStandard experts also take Standard input); vLLM
    0.33's has two members compared by equality. One code path for both."""
    superset = getattr(experts_format, "is_superset", None)
    if superset is not None:
        return bool(superset(prepare_finalize_format))
    return experts_format == prepare_finalize_format


def quant_config() -> Any:
    """The FusedMoEQuantConfig our experts declare: unquantized activations (the prepare step must not quantize;
    our kernels do), GPT-OSS's swiglu_oai constants; the weights and biases live in our PreparedMoEWeights."""
    from vllm.model_executor.layers.fused_moe.config import biased_moe_quant_config

    return biased_moe_quant_config(None, None, gemm1_alpha=_ALPHA, gemm1_beta=_BETA, gemm1_clamp_limit=_LIMIT)


@functools.cache
def experts_class() -> type:
    """Our experts as a subclass of the installed vLLM's `modular_kernel.FusedMoEExpertsModular` (built once)."""
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.topk_weight_and_reduce import TopKWeightAndReduceNoOP

    class Sm12xMxfp4Experts(mk.FusedMoEExpertsModular):
        """GPT-OSS MXFP4 experts of one EP rank, computed by flashinfer_sm12x.fused_moe.

        Parameters
        ----------
        moe_config : vllm FusedMoEConfig
        quant_config : vllm FusedMoEQuantConfig
            From `quant_config()`.
        max_num_tokens, num_dispatchers : int, optional
            Batched formats only (vLLM's base class requires None for Standard).
        weights : PreparedMoEWeights
            Keyword-only: the rank's experts, adopted from the layer (`vllm_plugin.adopt_layer_weights`).
        expert_offset, num_global_experts : int, optional
            Keyword-only: the rank's slice [expert_offset, expert_offset + E) of num_global_experts (None: all).
        impl : {"kernels", "reference"}, optional
            Keyword-only: `fused_moe`'s implementation (None: kernels on CUDA, the reference elsewhere).
        """

        def __init__(self, moe_config: Any, quant_config: Any, max_num_tokens: int | None = None,
                     num_dispatchers: int | None = None, *, weights: PreparedMoEWeights, expert_offset: int = 0,
                     num_global_experts: int | None = None, impl: str | None = None) -> None:
            super().__init__(moe_config, quant_config, max_num_tokens, num_dispatchers)
            if not isinstance(weights, PreparedMoEWeights):
                raise TypeError(f"weights must be PreparedMoEWeights, got {type(weights).__name__}")
            self.sm12x_weights = weights
            self.sm12x_offset = int(expert_offset)
            self.sm12x_num_global = weights.num_experts + self.sm12x_offset if num_global_experts is None \
                else int(num_global_experts)
            self.sm12x_impl = impl

        @staticmethod
        def activation_format() -> Any:
            return mk.FusedMoEActivationFormat.Standard

        @property
        def expects_unquantized_inputs(self) -> bool:
            return True  # our kernels quantize the dispatched bf16 rows (MXFP8 / MXFP4) themselves

        def supports_expert_map(self) -> bool:
            return True  # a contiguous slice, fixed at load time (ids stay global)

        @staticmethod
        def _supports_current_device() -> bool:
            from vllm.platforms import current_platform

            return bool(current_platform.is_cuda() and current_platform.is_device_capability_family(120))

        @staticmethod
        def _supports_no_act_and_mul() -> bool:
            return False

        @staticmethod
        def _supports_quant_scheme(weight_key: Any, activation_key: Any) -> bool:
            from vllm.model_executor.layers.quantization.utils.quant_utils import kMxfp4Static

            return weight_key == kMxfp4Static and activation_key is None  # MXFP4 weights, bf16 in

        @staticmethod
        def _supports_activation(activation: Any) -> bool:
            return activation == MoEActivation.SWIGLUOAI

        @staticmethod
        def _supports_parallel_config(moe_parallel_config: Any) -> bool:
            if getattr(moe_parallel_config, "enable_eplb", False):
                return False
            return not moe_parallel_config.use_all2all_kernels or all2all_reason(moe_parallel_config) is None

        def workspace_shapes(self, M: int, N: int, K: int, topk: int, global_num_experts: int,  # noqa: N803
                             local_num_experts: int, expert_tokens_meta: Any,
                             activation: Any) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
            return (0,), (0,), (M, K)  # fused_moe's scratch is its own; the output is weighted and reduced

        def finalize_weight_and_reduce_impl(self) -> Any:
            return TopKWeightAndReduceNoOP()

        def apply(self, output: torch.Tensor, hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: Any, global_num_experts: int,
                  expert_map: torch.Tensor | None, a1q_scale: torch.Tensor | None, a2_scale: torch.Tensor | None,
                  workspace13: torch.Tensor, workspace2: torch.Tensor, expert_tokens_meta: Any,
                  apply_router_weight_on_input: bool) -> None:
            if a1q_scale is not None:
                raise ValueError("Sm12xMxfp4Experts: the prepare step quantized the activations; ours take bf16/fp16 "
                                 "rows (expects_unquantized_inputs)")
            if apply_router_weight_on_input:
                raise NotImplementedError("Sm12xMxfp4Experts: router weights applied on the input (GPT-OSS applies "
                                          "them to the experts' outputs)")
            if global_num_experts not in (-1, self.sm12x_num_global):
                raise ValueError(f"Sm12xMxfp4Experts: {global_num_experts} global experts, the slice was built for "
                                 f"{self.sm12x_num_global}")
            w = self.sm12x_weights
            out = fused_moe(hidden_states, (topk_ids, topk_weights), w, validate_ids=False, out_dtype=output.dtype,
                            impl=self.sm12x_impl, expert_offset=self.sm12x_offset,
                            num_global_experts=self.sm12x_num_global)
            output.copy_(out)

    return Sm12xMxfp4Experts


def make_kernel(moe: Any, weights: PreparedMoEWeights, expert_offset: int = 0, num_global_experts: int | None = None,
                impl: str | None = None) -> Any:
    """vLLM's modular kernel for a layer: the prepare/finalize vLLM picks for its parallel config, our experts.

    Parameters
    ----------
    moe : vllm FusedMoEConfig
        The layer's config (its parallel config picks the prepare/finalize).
    weights : PreparedMoEWeights
        The rank's adopted experts.
    expert_offset, num_global_experts : int, optional
        The rank's expert slice (EP); defaults: all experts are here.
    impl : {"kernels", "reference"}, optional
        `fused_moe`'s implementation (None: its default).

    Returns
    -------
    vllm modular_kernel.FusedMoEKernel

    Raises
    ------
    ValueError
        vLLM's prepare/finalize for this config is not Standard-format (e.g. a batched all2all).
    """
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    from vllm.model_executor.layers.fused_moe.all2all_utils import maybe_make_prepare_finalize

    qc = quant_config()
    cls = experts_class()
    kwargs: dict[str, Any] = {"moe": moe, "quant_config": qc}
    params = inspect.signature(maybe_make_prepare_finalize).parameters
    for name, value in (("routing_tables", None), ("allow_new_interface", True), ("use_monolithic", False)):
        if name in params:
            kwargs[name] = value
    prepare_finalize = maybe_make_prepare_finalize(**kwargs)
    if prepare_finalize is None:
        raise ValueError("vLLM made no prepare/finalize for this MoE config")
    if not formats_match(cls.activation_format(), prepare_finalize.activation_format):
        raise ValueError(f"{type(prepare_finalize).__name__} dispatches {prepare_finalize.activation_format} "
                         "activations; our experts take the Standard format")
    experts = cls(moe, qc, weights=weights, expert_offset=expert_offset, num_global_experts=num_global_experts,
                  impl=impl)
    return mk.FusedMoEKernel(prepare_finalize, experts)
