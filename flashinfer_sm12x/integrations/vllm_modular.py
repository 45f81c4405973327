# SPDX-License-Identifier: Apache-2.0
"""Our fused MoE as vLLM's modular-kernel experts: data parallelism with expert parallelism (issue #20, step 2).

For DP > 1 with EP, vLLM runs a MoE layer as a *modular kernel* (`modular_kernel.FusedMoEKernel`): a
prepare/finalize object dispatches each rank's tokens to the ranks holding their experts and combines the results
back, around an *experts* object that computes the local experts' contribution. This module gives vLLM an experts
class (`experts_class()`, a subclass of vLLM's `FusedMoEExpertsModular`) that runs `fused_moe` on the dispatched
tokens, and `make_kernel`, which pairs it with the prepare/finalize vLLM itself chooses
(`all2all_utils.maybe_make_prepare_finalize`), as vLLM's own MoE oracles do.

Two experts classes, one per activation format vLLM's prepare/finalize objects speak:

`Sm12xMxfp4Experts` (`experts_class()`), format **Standard** ([tokens, hidden] rows):
- `expects_unquantized_inputs` True: the prepare step dispatches bf16/fp16 rows and our kernels quantize them
  (MXFP8 or MXFP4) themselves;
- top-k ids are **global** expert ids (vLLM's all-gather dispatch hands them over as they are; DeepEP
  high-throughput's prepare maps DeepEP's local ids back to global ones and the pairs of other ranks to an expert
  outside the rank's slice), and `expert_map` is the rank's contiguous slice: it was validated once at load time
  (`vllm_plugin.expert_slice`) and becomes `fused_moe`'s `expert_offset` / `num_global_experts`; pairs routed to
  other ranks' experts contribute nothing;
- the output is **weighted and reduced** over the top-k (`fused_moe` applies the router weights, fc2 bias included,
  and sums): `finalize_weight_and_reduce_impl` is vLLM's `TopKWeightAndReduceNoOP`, and the finalize only combines;
- no workspaces (zero-sized): `fused_moe` allocates its own scratch; the output buffer is [tokens, hidden].

`Sm12xMxfp4BatchedExperts` (`batched_experts_class()`), format **BatchedExperts** ([local experts, max tokens,
hidden] rows with `expert_tokens_meta.expert_num_tokens`: DeepEP low-latency, vLLM's `BatchedPrepareAndFinalize`):
- `expects_unquantized_inputs` False, because both batched prepare steps refuse to defer quantization; our quant
  config declares no activation quantization (`quant_dtype` None), so they hand over the bf16 rows unchanged;
- the rows are already the rank's experts': neither ids nor `expert_map` are read;
- the output is [local experts, max tokens, hidden], **unweighted**: `finalize_weight_and_reduce_impl` is vLLM's
  `TopKWeightAndReduceDelegate` (DeepEP low-latency weights and sums in its combine kernel; the batched
  prepare/finalize in its naive batched reduce);
- computed by `moe.batched.batched_experts` (kernels on CUDA, the torch reference elsewhere).

Served all2all backends: `SERVED_ALL2ALL`. vLLM's `allgather_reducescatter` and DeepEP high-throughput dispatch in
the Standard format, DeepEP low-latency in the batched one. The others (MORI, NIXL, FlashInfer NVLink, ...) keep
vLLM's own backend, with a log line (see `vllm_plugin.why_not_ours`). DeepEP needs bf16 activations (its combine
takes bf16 only) and an even split of the experts over the EP ranks (its prepare/finalize computes each rank's
first expert as rank * local experts).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from ..moe.batched import batched_experts
from ..moe.fused_moe import fused_moe
from ..moe.weights import PreparedMoEWeights

STANDARD_ALL2ALL = ("allgather_reducescatter", "deepep_high_throughput")  # Sm12xMxfp4Experts
BATCHED_ALL2ALL = ("deepep_low_latency",)  # Sm12xMxfp4BatchedExperts
SERVED_ALL2ALL = STANDARD_ALL2ALL + BATCHED_ALL2ALL
_DEEPEP = ("deepep_high_throughput", "deepep_low_latency")
_ALPHA, _BETA, _LIMIT = 1.702, 1.0, 7.0  # GPT-OSS's swiglu_oai


def all2all_reason(moe_parallel_config: Any, num_experts: int | None = None,
                   in_dtype: torch.dtype | None = None) -> str | None:
    """None when our experts can run under this parallel config's all2all backend, else why not.

    Parameters
    ----------
    moe_parallel_config : vllm FusedMoEParallelConfig
        The layer's parallel config (`use_all2all_kernels` True: DP > 1 with EP, or PCP / SP with EP).
    num_experts : int, optional
        The model's experts (DeepEP: they must split evenly over the EP ranks); None skips that check.
    in_dtype : torch.dtype, optional
        The activations' dtype (DeepEP: bf16 only); None skips that check.

    Returns
    -------
    str or None
    """
    backend = getattr(moe_parallel_config, "all2all_backend", None)
    if backend not in SERVED_ALL2ALL:
        return (f"expert parallelism with data parallelism over the all2all backend {backend!r} (the plugin's "
                f"modular-kernel experts serve {', '.join(SERVED_ALL2ALL)})")
    if backend in _DEEPEP:
        ranks = int(getattr(moe_parallel_config, "ep_size", 1))
        if num_experts is not None and num_experts % ranks:
            return (f"{backend} with {num_experts} experts over {ranks} EP ranks (DeepEP's prepare/finalize assumes "
                    "an even split: rank * local experts is each rank's first expert)")
        if in_dtype is not None and in_dtype != torch.bfloat16:
            return f"{backend} with {in_dtype} activations (DeepEP's combine takes bfloat16 only)"
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
def _base_class() -> type:
    """What both our experts classes share: the weights, the device / scheme / activation they serve."""
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    class Sm12xMxfp4ExpertsBase(mk.FusedMoEExpertsModular):
        """GPT-OSS MXFP4 experts of one EP rank (the formats' shared part; not instantiated itself)."""

        served_all2all: tuple[str, ...] = ()  # the all2all backends whose prepare/finalize hands over our format

        @classmethod
        def _supports_parallel_config(cls, moe_parallel_config: Any) -> bool:
            return _serves(moe_parallel_config, cls.served_all2all)

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

        def supports_expert_map(self) -> bool:
            return True  # a contiguous slice, fixed at load time

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

        def _check_call(self, a1q_scale: torch.Tensor | None, apply_router_weight_on_input: bool,
                        global_num_experts: int) -> None:
            name = type(self).__name__
            if a1q_scale is not None:
                raise ValueError(f"{name}: the prepare step quantized the activations; ours take bf16/fp16 rows "
                                 "(our quant config declares no activation quantization)")
            if apply_router_weight_on_input:
                raise NotImplementedError(f"{name}: router weights applied on the input (GPT-OSS applies them to "
                                          "the experts' outputs)")
            if global_num_experts not in (-1, self.sm12x_num_global):
                raise ValueError(f"{name}: {global_num_experts} global experts, the slice was built for "
                                 f"{self.sm12x_num_global}")

    return Sm12xMxfp4ExpertsBase


def _serves(moe_parallel_config: Any, backends: tuple[str, ...]) -> bool:
    """An experts class's `_supports_parallel_config`: no EPLB; an all2all backend of its format."""
    if getattr(moe_parallel_config, "enable_eplb", False):
        return False
    return not moe_parallel_config.use_all2all_kernels or moe_parallel_config.all2all_backend in backends


@functools.cache
def experts_class() -> type:
    """Our Standard-format experts as a subclass of the installed vLLM's `FusedMoEExpertsModular` (built once)."""
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    from vllm.model_executor.layers.fused_moe.topk_weight_and_reduce import TopKWeightAndReduceNoOP

    class Sm12xMxfp4Experts(_base_class()):
        """GPT-OSS MXFP4 experts of one EP rank on [tokens, hidden] rows, computed by flashinfer_sm12x.fused_moe.

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

        served_all2all = STANDARD_ALL2ALL

        @staticmethod
        def activation_format() -> Any:
            return mk.FusedMoEActivationFormat.Standard

        @property
        def expects_unquantized_inputs(self) -> bool:
            return True  # our kernels quantize the dispatched bf16 rows (MXFP8 / MXFP4) themselves

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
            self._check_call(a1q_scale, apply_router_weight_on_input, global_num_experts)
            w = self.sm12x_weights
            out = fused_moe(hidden_states, (topk_ids, topk_weights), w, validate_ids=False, out_dtype=output.dtype,
                            impl=self.sm12x_impl, expert_offset=self.sm12x_offset,
                            num_global_experts=self.sm12x_num_global)
            output.copy_(out)

    return Sm12xMxfp4Experts


@functools.cache
def batched_experts_class() -> type:
    """Our BatchedExperts-format experts as a subclass of the installed vLLM's `FusedMoEExpertsModular`."""
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    from vllm.model_executor.layers.fused_moe.topk_weight_and_reduce import TopKWeightAndReduceDelegate

    class Sm12xMxfp4BatchedExperts(_base_class()):
        """GPT-OSS MXFP4 experts of one EP rank on per-expert batched rows [E_local, M, hidden], computed by
        flashinfer_sm12x.moe.batched.batched_experts (unweighted: the finalize weights and sums).

        Parameters
        ----------
        moe_config : vllm FusedMoEConfig
        quant_config : vllm FusedMoEQuantConfig
            From `quant_config()`.
        max_num_tokens, num_dispatchers : int
            The prepare/finalize's `max_num_tokens_per_rank()` and `num_dispatchers()` (vLLM's base class requires
            both for a batched format).
        weights, expert_offset, num_global_experts : as for `Sm12xMxfp4Experts`
            Keyword-only; the offset is only checked against the prepare/finalize's (rows are already local).
        impl : {"kernels", "reference"}, optional
            Keyword-only: `batched_experts`' implementation (None: kernels on CUDA, the reference elsewhere).
        """

        served_all2all = BATCHED_ALL2ALL

        @staticmethod
        def activation_format() -> Any:
            return mk.FusedMoEActivationFormat.BatchedExperts

        @property
        def expects_unquantized_inputs(self) -> bool:
            # vLLM's batched prepare steps (DeepEP low-latency, BatchedPrepareAndFinalize) refuse to defer the
            # quantization; with our quant config's quant_dtype None they do not quantize: the rows stay bf16.
            return False

        def workspace_shapes(self, M: int, N: int, K: int, topk: int, global_num_experts: int,  # noqa: N803
                             local_num_experts: int, expert_tokens_meta: Any,
                             activation: Any) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
            # M is the batched rows' max tokens per expert; batched_experts allocates its own scratch.
            return (0,), (0,), (local_num_experts, M, K)

        def finalize_weight_and_reduce_impl(self) -> Any:
            return TopKWeightAndReduceDelegate()  # unweighted rows: the prepare/finalize's own weighted reduce

        def apply(self, output: torch.Tensor, hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: Any, global_num_experts: int,
                  expert_map: torch.Tensor | None, a1q_scale: torch.Tensor | None, a2_scale: torch.Tensor | None,
                  workspace13: torch.Tensor, workspace2: torch.Tensor, expert_tokens_meta: Any,
                  apply_router_weight_on_input: bool) -> None:
            self._check_call(a1q_scale, apply_router_weight_on_input, global_num_experts)
            counts = getattr(expert_tokens_meta, "expert_num_tokens", None)
            if counts is None:
                raise ValueError("Sm12xMxfp4BatchedExperts: the prepare step handed over no expert_num_tokens")
            batched_experts(hidden_states, counts, self.sm12x_weights, out_dtype=output.dtype, impl=self.sm12x_impl,
                            out=output)

    return Sm12xMxfp4BatchedExperts


def make_kernel(moe: Any, weights: PreparedMoEWeights, expert_offset: int = 0, num_global_experts: int | None = None,
                impl: str | None = None) -> Any:
    """vLLM's modular kernel for a layer: the prepare/finalize vLLM picks for its parallel config, our experts of
    its activation format (Standard: `Sm12xMxfp4Experts`; BatchedExperts: `Sm12xMxfp4BatchedExperts`).

    Parameters
    ----------
    moe : vllm FusedMoEConfig
        The layer's config (its parallel config picks the prepare/finalize).
    weights : PreparedMoEWeights
        The rank's adopted experts.
    expert_offset, num_global_experts : int, optional
        The rank's expert slice (EP); defaults: all experts are here.
    impl : {"kernels", "reference"}, optional
        The experts' implementation (None: kernels on CUDA).

    Returns
    -------
    vllm modular_kernel.FusedMoEKernel

    Raises
    ------
    ValueError
        vLLM made no prepare/finalize, one of neither format, or one whose idea of this rank's first expert (DeepEP,
        the batched prepare/finalize: rank * local experts) is not the slice's `expert_offset`.
    """
    import vllm.model_executor.layers.fused_moe.modular_kernel as mk
    from vllm.model_executor.layers.fused_moe.all2all_utils import maybe_make_prepare_finalize

    qc = quant_config()
    kwargs: dict[str, Any] = {"moe": moe, "quant_config": qc}
    params = inspect.signature(maybe_make_prepare_finalize).parameters
    for name, value in (("routing_tables", None), ("allow_new_interface", True), ("use_monolithic", False)):
        if name in params:
            kwargs[name] = value
    prepare_finalize = maybe_make_prepare_finalize(**kwargs)
    if prepare_finalize is None:
        raise ValueError("vLLM made no prepare/finalize for this MoE config")
    pf_name, pf_format = type(prepare_finalize).__name__, prepare_finalize.activation_format
    first = prepare_finalize_first_expert(prepare_finalize)
    if first is not None and first != expert_offset:
        raise ValueError(f"{pf_name} takes this rank's experts to start at global id {first}; the rank's expert_map "
                         f"holds [{expert_offset}, {expert_offset + weights.num_experts})")
    for cls in (experts_class(), batched_experts_class()):
        if formats_match(cls.activation_format(), pf_format):
            break
    else:
        raise ValueError(f"{pf_name} dispatches {pf_format} activations; our experts take the Standard and "
                         "BatchedExperts formats")
    batched = {}
    if cls is batched_experts_class():
        batched = {"max_num_tokens": prepare_finalize.max_num_tokens_per_rank(),
                   "num_dispatchers": prepare_finalize.num_dispatchers()}
    experts = cls(moe, qc, **batched, weights=weights, expert_offset=expert_offset,
                  num_global_experts=num_global_experts, impl=impl)
    return mk.FusedMoEKernel(prepare_finalize, experts)


def prepare_finalize_first_expert(prepare_finalize: Any) -> int | None:
    """The global id a prepare/finalize takes this rank's first local expert to have, where it assumes one: DeepEP
    high-throughput's `rank_expert_offset`, vLLM's batched prepare/finalize's rank * num_local_experts; None for
    those that pass global ids through (all-gather) or do not say (DeepEP low-latency splits evenly: checked by
    `all2all_reason`)."""
    offset = getattr(prepare_finalize, "rank_expert_offset", None)
    if offset is not None:
        return int(offset)
    rank, local = getattr(prepare_finalize, "rank", None), getattr(prepare_finalize, "num_local_experts", None)
    if isinstance(rank, int) and isinstance(local, int):
        return rank * local
    return None
