# SPDX-License-Identifier: Apache-2.0
"""`cutlass_fused_moe` with FlashInfer's signature, for its MXFP4 W4A8 convention: callers switch by import.

    from flashinfer.fused_moe import cutlass_fused_moe      # before
    from flashinfer_sm12x import cutlass_fused_moe          # after (SM120/SM121)

The convention (flashinfer/fused_moe/core.py and its binding's isWMxfp4AMxfp8Quant branch, as vLLM's
SM100 MXFP4 x MXFP8 CUTLASS path calls it):
- input float8_e4m3fn [T, Hp] with input_sf (E8M0, 128x4-swizzled over T rows, or linear with
  swizzled_input_sf=False) and use_mxfp8_act_scaling=True;
- fc1_expert_weights uint8 [E, 2*Ip, Hp/2] packed e2m1, rows as halves [up; gate] (FlashInfer's gated
  activation reads the first half as the linear part); fc2_expert_weights uint8 [E, Hp, Ip/2];
- quant_scales = [fc1 block scales int32 [E, 2*Ip, Hp/128] (E8M0 bytes, 128x4-swizzled per expert, 4 per int32),
  fc1 global float32 [E], fc2 block scales int32 [E, Hp, Ip/128], fc2 global float32 [E]];
  PreparedMoEWeights.flashinfer_quant_scales() builds them. Each global scale multiplies its GEMM's product
  before the bias (FlashInfer's per-expert GEMM alpha; vLLM passes ones);
- fc1/fc2 biases [E, 2*Ip] / [E, Hp]; swiglu_alpha / swiglu_beta / swiglu_limit float32 [E] select the
  biased, clamped SwiGLU (GPT-OSS: 1.702, 1.0, 7.0); unset ones mean alpha 1, beta 0, no clamp;
- token_selected_experts int32 [T, k] (global ids when ep_size > 1: this rank owns experts
  [ep_rank * E, (ep_rank + 1) * E)), token_final_scales float32 [T, k];
- returns `output` [T, Hp] in output_dtype (allocated when not given).

Everything else FlashInfer offers (FP8/NVFP4/BF16/W4A16 MoE, all-to-all, min-latency mode, other activations)
raises NotImplementedError naming the option; options that only tune FlashInfer's own kernels (tactics,
workspace, PDL, fused finalize) are accepted and have no effect here. With tp_size > 1 the weights are this
rank's shard, as in FlashInfer; the caller reduces across ranks.
"""

from __future__ import annotations

from typing import Any

import torch

from ..checks import check_no_alias, check_tensor, one_device, require_tensor, round_up
from ..jit.arch import device_facts
from ..moe.pipeline import Experts, Routing, Tokens, run_moe
from ..ops.moe_glue import kernels_support


class _Unset:
    """The default of `nvfp4_4over6` (FlashInfer 0.7.4 reads its environment variables when the option is unset)."""

    def __repr__(self) -> str:
        return "<nvfp4_4over6 unset>"


NVFP4_4OVER6_UNSET = _Unset()
# Keyword-only parameters of newer tested FlashInfer releases than the oldest (0.7.2.post1): accepted always, so a
# caller written for either release works (0.7.4 added nvfp4_4over6).
NEWER_KEYWORDS = ("nvfp4_4over6",)
# Defaults that differ between tested releases (0.7.2.post1, 0.7.4); these options have no effect here.
RELEASE_DEFAULTS = {"use_fused_finalize": (True, None)}
# On CUDA (E <= 512, k <= 16) the MoE pipeline's kernels run (moe/pipeline.py); False selects its device-side torch
# implementation, the oracle the kernels are tested against.
USE_KERNELS = True
_SWIGLU, _SWIGLU_BIAS = 3, 5  # flashinfer.tllm_enums.ActivationType values (IntEnum; compared by value)
_FN = "cutlass_fused_moe"
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _need(cond: bool, msg: str, exc: type[Exception] = ValueError) -> None:
    if not cond:
        raise exc(f"{_FN}: {msg}")


def _per_expert(t: Any, name: str, num_e: int) -> torch.Tensor | None:
    if t is None:
        return None
    t = check_tensor(t, name, _FN, torch.float32, ndim=1)
    _need(t.numel() == num_e, f"{name} must have one value per local expert ({num_e}), got {t.numel()}")
    return t


def _unsupported(**flags: Any) -> None:
    for name, value in flags.items():
        if value:
            raise NotImplementedError(f"{_FN}: {name} is not supported by the SM12x MXFP4 W4A8 MoE")


def cutlass_fused_moe(
    input: torch.Tensor,
    token_selected_experts: torch.Tensor,
    token_final_scales: torch.Tensor,
    fc1_expert_weights: torch.Tensor,
    fc2_expert_weights: torch.Tensor,
    output_dtype: torch.dtype,
    quant_scales: list[torch.Tensor],
    fc1_expert_biases: torch.Tensor | None = None,
    fc2_expert_biases: torch.Tensor | None = None,
    input_sf: torch.Tensor | None = None,
    swiglu_alpha: torch.Tensor | None = None,
    swiglu_beta: torch.Tensor | None = None,
    swiglu_limit: torch.Tensor | None = None,
    tp_size: int = 1,
    tp_rank: int = 0,
    ep_size: int = 1,
    ep_rank: int = 0,
    cluster_size: int = 1,
    cluster_rank: int = 0,
    output: torch.Tensor | None = None,
    enable_alltoall: bool = False,
    use_deepseek_fp8_block_scale: bool = False,
    use_w4_group_scaling: bool = False,
    use_mxfp8_act_scaling: bool = False,
    min_latency_mode: bool = False,
    use_packed_weights: bool = False,
    use_wfp4afp8_humming: bool = False,
    tune_max_num_tokens: int = 8192,
    enable_pdl: bool | None = None,
    activation_type: int = _SWIGLU,
    swizzled_input_sf: bool = True,
    use_fused_finalize: bool | None = None,
    profile_ids: list[int] | None = None,
    workspace_buffer: torch.Tensor | None = None,
    *,
    clamped_relu2_limit: torch.Tensor | None = None,
    situ_beta: torch.Tensor | None = None,
    situ_linear_beta: torch.Tensor | None = None,
    backend: str = "cutlass",
    nvfp4_4over6: Any = NVFP4_4OVER6_UNSET,
) -> torch.Tensor:
    """FlashInfer's `cutlass_fused_moe` for MXFP4 weights x MXFP8 activations (W4A8) on SM120/SM121.

    Same signature as the installed FlashInfer's (0.7.2.post1 or 0.7.4); the module docstring states the convention.

    Parameters
    ----------
    input : torch.Tensor
        float8_e4m3fn [T, Hp], MXFP8-quantized activations (Hp = hidden size padded to a multiple of 128).
    token_selected_experts : torch.Tensor
        int32/int64 [T, k] expert ids (global ids when ep_size > 1).
    token_final_scales : torch.Tensor
        float [T, k] router weights.
    fc1_expert_weights, fc2_expert_weights : torch.Tensor
        uint8 [E, 2*Ip, Hp/2] ([up; gate] halves) and [E, Hp, Ip/2], packed e2m1.
    output_dtype : torch.dtype
        torch.bfloat16 or torch.float16.
    quant_scales : list of torch.Tensor
        [fc1 block scales int32 [E, 2*Ip, Hp/128], fc1 global float32 [E], fc2 block scales int32 [E, Hp, Ip/128],
        fc2 global float32 [E]] (`PreparedMoEWeights.flashinfer_quant_scales()` builds them).
    fc1_expert_biases, fc2_expert_biases : torch.Tensor, optional
        [E, 2*Ip] and [E, Hp].
    input_sf : torch.Tensor
        E8M0 scales of `input`, 128x4-swizzled over T rows (or linear with swizzled_input_sf=False).
    swiglu_alpha, swiglu_beta, swiglu_limit : torch.Tensor, optional
        float32 [E]: the biased, clamped SwiGLU (GPT-OSS: 1.702, 1.0, 7.0); unset means alpha 1, beta 0, no clamp.
    tp_size, tp_rank, ep_size, ep_rank : int
        Parallel layout: the weights are this rank's shard / experts; the caller reduces across TP ranks.
    output : torch.Tensor, optional
        Contiguous [T, Hp] of output_dtype, written and returned.
    use_mxfp8_act_scaling : bool
        Must be True (this path's activation format).

    Other parameters of FlashInfer's signature select modes this path does not serve (NotImplementedError naming
    the option when set) or only tune FlashInfer's own kernels (accepted, no effect).

    Returns
    -------
    torch.Tensor
        [T, Hp] in output_dtype.

    Raises
    ------
    TypeError, ValueError
        Bad input, before any kernel launch.
    NotImplementedError
        A FlashInfer mode this path does not serve.

    Examples
    --------
    The call vLLM makes for MXFP4 x MXFP8 experts, with weights prepared in FlashInfer's layout:

    >>> import torch, flashinfer_sm12x as fs
    >>> from flashinfer_sm12x.testing.moe_cases import make_weights
    >>> ckpt = {k: v.cuda() for k, v in make_weights(32, 2880, 2880).items()}  # doctest: +SKIP
    >>> w = fs.prepare_gpt_oss_weights(**ckpt, interleaved=False, up_first=True, act="mxfp8")  # doctest: +SKIP
    >>> x = torch.randn(4, w.hidden_size_padded, device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> x8, x8_sf = fs.mxfp8_quantize(x)  # doctest: +SKIP
    >>> ids = torch.randint(0, 32, (4, 4), device="cuda", dtype=torch.int32)  # doctest: +SKIP
    >>> scales = torch.full((4, 4), 0.25, device="cuda")  # doctest: +SKIP
    >>> ones = torch.ones(32, device="cuda")  # doctest: +SKIP
    >>> y = fs.cutlass_fused_moe(x8, ids, scales, w.w13, w.w2, torch.bfloat16, w.flashinfer_quant_scales(),
    ...                          w.w13_bias, w.w2_bias, input_sf=x8_sf, swiglu_alpha=1.702 * ones,
    ...                          swiglu_beta=ones, swiglu_limit=7.0 * ones,
    ...                          use_mxfp8_act_scaling=True)  # [4, 2944] bf16  # doctest: +SKIP
    """
    del tune_max_num_tokens, enable_pdl, use_fused_finalize, profile_ids, workspace_buffer, tp_rank  # no effect
    _unsupported(enable_alltoall=enable_alltoall, use_deepseek_fp8_block_scale=use_deepseek_fp8_block_scale,
                 use_w4_group_scaling=use_w4_group_scaling, min_latency_mode=min_latency_mode,
                 use_packed_weights=use_packed_weights, use_wfp4afp8_humming=use_wfp4afp8_humming,
                 clamped_relu2_limit=clamped_relu2_limit is not None, situ_beta=situ_beta is not None,
                 situ_linear_beta=situ_linear_beta is not None, cluster_size=cluster_size != 1 or cluster_rank != 0)
    if nvfp4_4over6 is not NVFP4_4OVER6_UNSET and nvfp4_4over6 is not None:
        raise NotImplementedError(f"{_FN}: nvfp4_4over6={nvfp4_4over6!r}: the 4over6 recipes are NVFP4 "
                                  "quantization options; the SM12x path is MXFP4 W4A8 (leave it unset or None)")
    if backend not in ("cutlass", "sm12x"):
        raise ValueError(f"{_FN}: backend must be 'cutlass' (FlashInfer's name) or 'sm12x', got {backend!r}")
    for name, value in (("tp_size", tp_size), ("ep_size", ep_size), ("ep_rank", ep_rank)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{_FN}: {name} must be an int, got {type(value).__name__}")
    if not isinstance(activation_type, int) or isinstance(activation_type, bool):
        raise TypeError(f"{_FN}: activation_type must be an ActivationType, got {type(activation_type).__name__}")
    require_tensor("input", input, _FN)
    if int(activation_type) not in (_SWIGLU, _SWIGLU_BIAS):
        raise NotImplementedError(f"{_FN}: activation_type {activation_type!r}: only Swiglu / SwigluBias")
    if not use_mxfp8_act_scaling or input.dtype != torch.float8_e4m3fn:
        raise NotImplementedError(
            f"{_FN}: the SM12x path is FlashInfer's MXFP4 W4A8 convention (float8_e4m3fn input with input_sf, "
            f"use_mxfp8_act_scaling=True); got input {input.dtype}, use_mxfp8_act_scaling={use_mxfp8_act_scaling}. "
            "For bf16 activations call flashinfer_sm12x.fused_moe, which quantizes them itself")
    _need(output_dtype in (torch.bfloat16, torch.float16), f"output_dtype must be bf16 or fp16, got {output_dtype}")
    x = check_tensor(input, "input", _FN, (torch.float8_e4m3fn,), ndim=2)
    fc1 = check_tensor(fc1_expert_weights, "fc1_expert_weights", _FN, (torch.uint8,), ndim=3)
    fc2 = check_tensor(fc2_expert_weights, "fc2_expert_weights", _FN, (torch.uint8,), ndim=3)
    ids = check_tensor(token_selected_experts, "token_selected_experts", _FN, (torch.int32, torch.int64), ndim=2)
    num_e, hp, ip = fc2.shape[0], fc2.shape[1], fc2.shape[2] * 2
    num_t, k = ids.shape
    _need(tuple(fc1.shape) == (num_e, 2 * ip, hp // 2),
          f"fc1_expert_weights must be [E, 2*I, H/2] = {(num_e, 2 * ip, hp // 2)} (from fc2 {tuple(fc2.shape)}), "
          f"got {tuple(fc1.shape)}")
    _need(hp % 128 == 0 and ip % 128 == 0, f"hidden {hp} and intermediate {ip} must be padded to multiples of 128")
    _need(x.shape[1] == hp, f"input must be [T, {hp}] (the padded hidden size), got {tuple(x.shape)}")
    scales = check_tensor(token_final_scales, "token_final_scales", _FN, _FLOATS, ndim=2)
    _need(ids.shape[0] == x.shape[0] and scales.shape == ids.shape,
          f"token_selected_experts and token_final_scales must be [T, k] with T = {x.shape[0]}")
    _need(isinstance(ep_size, int) and ep_size >= 1 and 0 <= ep_rank < ep_size,
          f"ep_rank must be in [0, ep_size), got {ep_rank} / {ep_size}")
    _need(isinstance(tp_size, int) and tp_size >= 1, f"tp_size must be a positive int, got {tp_size}")
    _need(k <= num_e * ep_size, f"top_k = {k} exceeds the {num_e * ep_size} experts")
    _need(isinstance(quant_scales, (list, tuple)) and len(quant_scales) == 4,
          "quant_scales must be [fc1 block scales, fc1 global, fc2 block scales, fc2 global] for MXFP4 W4A8")
    sf1 = check_tensor(quant_scales[0], "quant_scales[0] (fc1 block scales)", _FN, (torch.int32,), ndim=3)
    sf2 = check_tensor(quant_scales[2], "quant_scales[2] (fc2 block scales)", _FN, (torch.int32,), ndim=3)
    _need(tuple(sf1.shape) == (num_e, 2 * ip, hp // 128), f"quant_scales[0] must be {(num_e, 2 * ip, hp // 128)}, "
          f"got {tuple(sf1.shape)}")
    _need(tuple(sf2.shape) == (num_e, hp, ip // 128), f"quant_scales[2] must be {(num_e, hp, ip // 128)}, "
          f"got {tuple(sf2.shape)}")
    g1 = _per_expert(quant_scales[1], "quant_scales[1] (fc1 global)", num_e)
    g2 = _per_expert(quant_scales[3], "quant_scales[3] (fc2 global)", num_e)
    alpha = _per_expert(swiglu_alpha, "swiglu_alpha", num_e)
    beta = _per_expert(swiglu_beta, "swiglu_beta", num_e)
    limit = _per_expert(swiglu_limit, "swiglu_limit", num_e)
    b1 = b2 = None
    if fc1_expert_biases is not None:
        b1 = check_tensor(fc1_expert_biases, "fc1_expert_biases", _FN, _FLOATS, shape=(num_e, 2 * ip))
    if fc2_expert_biases is not None:
        b2 = check_tensor(fc2_expert_biases, "fc2_expert_biases", _FN, _FLOATS, shape=(num_e, hp))
    _need(input_sf is not None, "input_sf must be provided when use_mxfp8_act_scaling=True")
    require_tensor("input_sf", input_sf, _FN)
    _need(input_sf.is_contiguous(), "input_sf must be contiguous")
    rows_sf = round_up(num_t, 128) if swizzled_input_sf else num_t
    in_sf = input_sf.view(torch.uint8) if input_sf.dtype != torch.uint8 and input_sf.element_size() == 1 else input_sf
    _need(in_sf.dtype == torch.uint8 and in_sf.numel() == rows_sf * (hp // 32),
          f"input_sf must hold {rows_sf * (hp // 32)} E8M0 bytes ({'swizzled' if swizzled_input_sf else 'linear'} "
          f"over {num_t} rows x {hp // 32} blocks), got {in_sf.numel()} of {in_sf.dtype}")
    if output is not None:
        _need(isinstance(output, torch.Tensor) and output.dtype == output_dtype and tuple(output.shape) == (num_t, hp)
              and output.is_contiguous(), f"output must be a contiguous {output_dtype} tensor of shape {(num_t, hp)}")
    tensors = [t for t in (x, ids, scales, fc1, fc2, sf1, sf2, g1, g2, b1, b2, alpha, beta, limit, in_sf, output)
               if t is not None]
    one_device(tensors, _FN)
    if output is not None:
        check_no_alias(output, (("input", x), ("token_selected_experts", ids), ("token_final_scales", scales),
                                ("fc1_expert_weights", fc1), ("fc2_expert_weights", fc2), ("quant_scales[0]", sf1),
                                ("quant_scales[1]", g1), ("quant_scales[2]", sf2), ("quant_scales[3]", g2),
                                ("fc1_expert_biases", b1), ("fc2_expert_biases", b2), ("swiglu_alpha", alpha),
                                ("swiglu_beta", beta), ("swiglu_limit", limit), ("input_sf", in_sf)), _FN, "output")

    if num_t == 0:
        return output if output is not None else x.new_zeros((0, hp), dtype=output_dtype)
    # Ids are checked against the global range on the host unless a CUDA graph is being captured (a check needs a
    # sync); then out-of-range ids are clamped on the device. Other ranks' experts contribute nothing.
    capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
    if not capturing and ids.numel() and bool(((ids < 0) | (ids >= num_e * ep_size)).any()):
        raise ValueError(f"{_FN}: token_selected_experts holds ids outside [0, {num_e * ep_size})")
    impl = "kernels" if USE_KERNELS and x.is_cuda and kernels_support(num_e, k) else "reference"
    experts = Experts("mxfp8", fc1, sf1.view(torch.uint8), b1, fc2, sf2.view(torch.uint8), b2, "up_first", True,
                      alpha if alpha is not None else 1.0, beta if beta is not None else 0.0, limit, g1, g2)
    routing = Routing(None, ids, scales, k, ep_rank * num_e, num_e * ep_size, validate_ids=False)
    result = output if output is not None else torch.empty(num_t, hp, dtype=output_dtype, device=x.device)
    return run_moe(Tokens(x.view(torch.uint8), in_sf, bool(swizzled_input_sf)), routing, experts, result,
                   device=device_facts(x.device) if impl == "kernels" else None, impl=impl)
