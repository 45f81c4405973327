# SPDX-License-Identifier: Apache-2.0
"""`fused_moe`: the GPT-OSS MoE layer on SM12x, from bf16 activations and prepared MXFP4 expert weights.

Activation modes: W4A4 (activations quantized to MXFP4, the e2m1 x e2m1 kernel) and W4A8 (MXFP8 activations,
the e4m3 x e2m1 kernel), chosen by the weights' `act`. W4A16 (bf16 activations) is not offered: SM12x has no
bf16 x e2m1 MMA, so it would mean a mixed-input mainloop that widens every weight to bf16 in registers and runs at
the bf16 MMA rate; W4A8 keeps MXFP8's accuracy (8-bit elements, a scale per 32) at the FP8 rate.

This face validates its arguments (typed errors before any launch) and hands them to the one MoE pipeline
(moe/pipeline.py: plan -> scatter -> GEMM1 + activation -> GEMM2 -> finalize), looking the device up once.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..checks import check_tensor, one_device
from ..jit.arch import device_facts
from ..kernels.family import Tactic
from ..kernels.grouped_mm_fp4 import ACTIVATIONS
from ..ops.moe_glue import kernels_support
from .pipeline import Experts, Impl, Routing, Scalar, Tokens, run_moe
from .weights import PreparedMoEWeights

Activation = Literal["swiglu_oai", "swiglu"]
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def fused_moe(
    hidden: torch.Tensor,
    routing: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    weights: PreparedMoEWeights,
    top_k: int | None = None,
    activation: Activation = "swiglu_oai",
    alpha: float = 1.702,
    beta: float = 1.0,
    limit: float | None = 7.0,
    *,
    validate_ids: bool = True,
    tactic: Tactic | tuple[Tactic, Tactic] | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    impl: Impl | None = None,
    fused_epilogue: bool | None = None,
    expert_offset: int = 0,
    num_global_experts: int | None = None,
) -> torch.Tensor:
    """GPT-OSS mixture-of-experts layer on SM120/SM121: routing, both grouped MXFP4 GEMMs and the glue between.

    Parameters
    ----------
    hidden : torch.Tensor
        [T, H] bf16/fp16/fp32 on CUDA (H unpadded, as the model's hidden size).
    routing : torch.Tensor or tuple of torch.Tensor
        Router logits [T, E] (top-k, softmax over the k chosen, as GPT-OSS), or (topk_ids [T, k] int,
        topk_weights [T, k] float) used as given.
    weights : PreparedMoEWeights
        From `prepare_gpt_oss_weights`: act="mxfp4" runs W4A4, act="mxfp8" W4A8 (activations are quantized to that
        format before each GEMM).
    top_k : int, optional
        k, required with router logits.
    activation : {"swiglu_oai", "swiglu"}
        GPT-OSS's clamped SwiGLU, (up + beta) * g * sigmoid(alpha * g) with g = min(gate, limit) and up clamped to
        [-limit, limit]; or plain silu(gate) * up.
    alpha, beta, limit : float
        swiglu_oai's parameters (GPT-OSS: 1.702, 1.0, 7.0); limit None: no clamping.
    validate_ids : bool
        Keyword-only. True checks precomputed ids on the host (one sync; ValueError on an id outside [0, E)); False
        is for CUDA-graph capture: ids are clamped on the device and nothing syncs.
    tactic : Tactic or (Tactic, Tactic), optional
        Keyword-only. The grouped GEMM tile: one Tactic pins both GEMMs, a (GEMM1, GEMM2) pair of equal tile_m pins
        each (default: the heuristic's pick per GEMM for T * k rows over E experts, its N and K and the device's SM
        count, `kernels.grouped_mm_fp4.moe_tactics`).
    out_dtype : torch.dtype
        Keyword-only. The output's dtype.
    impl : {"kernels", "reference"}, optional
        Keyword-only. "kernels" (the default on CUDA when E <= 512 and k <= 16) runs the glue kernels
        (ops/moe_glue.py: plan + scatter in one kernel at decode sizes, GEMM1 with the activation fused: four to
        six launches per forward); "reference" the device-side torch pipeline, kept as the oracle.
    fused_epilogue : bool, optional
        Keyword-only, impl="kernels". GEMM1 runs fc1 bias + activation + quantization for GEMM2 in its epilogue
        (gemm/epilogues/swiglu_quantize.cuh), so the [rows, 2I] intermediate never reaches memory. None (default):
        wherever it applies (interleaved gate/up weights, a tactic with tile_n % 64 == 0); False: the unfused
        pipeline (GEMM1 writes bf16, a separate activation kernel), bit-identical; True: fused or ValueError.
    expert_offset, num_global_experts : int
        Keyword-only. Expert parallelism: routing ids (and logits' columns) are global, in [0, num_global_experts);
        `weights` holds the experts [expert_offset, expert_offset + E). Pairs routed to other experts contribute
        nothing (tokens with no expert here give zero rows), and each local pair's fc2 bias is weighted like its
        output, so the sum of every rank's output is the whole layer's. Default: all experts are here
        (num_global_experts None: expert_offset + E).

    Returns
    -------
    torch.Tensor
        [T, H] of `out_dtype`.

    Raises
    ------
    TypeError, ValueError
        Bad input, before any kernel launch.

    Examples
    --------
    GPT-OSS-20B's MoE layer (32 experts, top-4), W4A8, on four tokens:

    >>> import torch, flashinfer_sm12x as fs
    >>> from flashinfer_sm12x.testing.moe_cases import make_weights
    >>> ckpt = {k: v.cuda() for k, v in make_weights(32, 2880, 2880).items()}  # doctest: +SKIP
    >>> w = fs.prepare_gpt_oss_weights(**ckpt, act="mxfp8")  # doctest: +SKIP
    >>> x = torch.randn(4, 2880, device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
    >>> logits = torch.randn(4, 32, device="cuda")  # doctest: +SKIP
    >>> y = fs.fused_moe(x, logits, w, top_k=4)  # [4, 2880] bf16  # doctest: +SKIP

    With precomputed routing, inside a CUDA graph: ``fs.fused_moe(x, (ids, weights), w, validate_ids=False)``.
    """
    fn = "fused_moe"
    if not isinstance(weights, PreparedMoEWeights):
        raise TypeError(f"{fn}: weights must come from prepare_gpt_oss_weights, got {type(weights).__name__}")
    if weights.act not in ACTIVATIONS:
        raise ValueError(f"{fn}: weights were prepared for act={weights.act!r}; expected one of {ACTIVATIONS}")
    check_tensor(hidden, "hidden", fn, _FLOATS, ndim=2, contiguous=False)
    if hidden.shape[1] != weights.hidden_size:
        raise ValueError(f"{fn}: hidden must be [T, {weights.hidden_size}], got {tuple(hidden.shape)}")
    if not hidden.is_contiguous():
        raise ValueError(f"{fn}: hidden must be contiguous")
    if activation not in ("swiglu_oai", "swiglu"):
        raise ValueError(f"{fn}: activation must be 'swiglu_oai' or 'swiglu', got {activation!r}")
    num_e, num_t = weights.num_experts, hidden.shape[0]
    if impl not in (None, "kernels", "reference"):
        raise ValueError(f"{fn}: impl must be 'kernels' or 'reference', got {impl!r}")
    id_limit = _expert_range(expert_offset, num_global_experts, num_e, fn)
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)):
        raise TypeError(f"{fn}: top_k must be an int or None, got {type(top_k).__name__}")
    if isinstance(routing, torch.Tensor):
        if routing.dtype not in _FLOATS:
            raise TypeError(f"{fn}: router logits must be float32/float16/bfloat16, got {routing.dtype}")
        if routing.ndim != 2 or routing.shape != (num_t, id_limit):
            raise ValueError(f"{fn}: router logits must be [T, E] = {(num_t, id_limit)}, got {tuple(routing.shape)}")
        if top_k is None or not 1 <= top_k <= id_limit:
            raise ValueError(f"{fn}: top_k must be in [1, {id_limit}] with router logits, got {top_k}")
        k = top_k
    else:
        if not isinstance(routing, (tuple, list)) or len(routing) != 2:
            raise TypeError(f"{fn}: routing must be router logits [T, E] or a (topk_ids, topk_weights) pair, got "
                            f"{type(routing).__name__}")
        ids, topk_weights = routing
        if not isinstance(ids, torch.Tensor) or not isinstance(topk_weights, torch.Tensor):
            raise TypeError(f"{fn}: topk_ids and topk_weights must be tensors")
        if ids.dtype not in (torch.int32, torch.int64) or topk_weights.dtype not in _FLOATS:
            raise TypeError(f"{fn}: topk_ids must be int32/int64 and topk_weights float, got {ids.dtype} and "
                            f"{topk_weights.dtype}")
        if ids.ndim != 2 or ids.shape[0] != num_t or ids.shape[1] == 0:
            raise ValueError(f"{fn}: topk_ids must be [T, k] with T = {num_t} and k >= 1, got {tuple(ids.shape)}")
        if ids.shape[1] > id_limit:
            raise ValueError(f"{fn}: top_k = {ids.shape[1]} exceeds the {id_limit} experts")
        if topk_weights.shape != ids.shape:
            raise ValueError(f"{fn}: topk_weights must have topk_ids' shape {tuple(ids.shape)}")
        if top_k is not None and top_k != ids.shape[1]:
            raise ValueError(f"{fn}: top_k = {top_k} disagrees with topk_ids' {ids.shape[1]} columns")
        k = ids.shape[1]
    if not isinstance(out_dtype, torch.dtype) or out_dtype not in _FLOATS:
        raise TypeError(f"{fn}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    _check_scalars(fn, num_e, hidden.device, alpha=alpha, beta=beta, limit=limit)
    if not isinstance(validate_ids, bool):
        raise TypeError(f"{fn}: validate_ids must be a bool, got {type(validate_ids).__name__}")
    if impl is None:
        impl = "kernels" if hidden.is_cuda and kernels_support(num_e, k) else "reference"
    if impl == "kernels":
        _check_kernel_call(hidden, routing, k, weights, alpha, beta, limit, out_dtype, validate_ids, id_limit)
    elif fused_epilogue:
        raise ValueError(f"{fn}: fused_epilogue=True needs impl='kernels'")
    else:
        # (grouped_mm_fp4 checks for CUDA before its first launch)
        one_device([hidden, weights.w13, *_routing_tensors(routing)], fn, "hidden, routing and weights")
        if validate_ids and not isinstance(routing, torch.Tensor) and id_limit != num_e:
            _check_ids(routing[0], id_limit, fn)  # the one sync; the pipeline then maps global ids to local ones
    out = hidden.new_empty((num_t, weights.hidden_size), dtype=out_dtype)
    if num_t == 0:  # e.g. an idle data-parallel rank: nothing to launch
        return out
    logits = routing if isinstance(routing, torch.Tensor) else None
    route = Routing(logits, None if logits is not None else routing[0], None if logits is not None else routing[1],
                    k, expert_offset, id_limit, validate_ids and impl == "reference")
    if logits is not None and route.foreign(num_e):
        # Expert-parallel logits cover every expert: route on the device, then run with global ids.
        from .routing import route as top_k_route

        ids, topk_weights = top_k_route(logits, k)
        route = Routing(None, ids, topk_weights, k, expert_offset, id_limit, False)
    experts = Experts.of(weights, activation == "swiglu_oai", _per_expert(alpha), _per_expert(beta),
                         _per_expert(limit))
    device = device_facts(hidden.device) if hidden.is_cuda and impl == "kernels" else None
    return run_moe(Tokens(hidden), route, experts, out, device=device, impl=impl, tactic=tactic,
                   fused_epilogue=fused_epilogue)


def _check_scalars(fn: str, num_e: int, device: torch.device, **values: object) -> None:
    """alpha / beta / limit: a real number (limit also None) or a float tensor with one value per local expert on
    `device`."""
    for name, v in values.items():
        if v is None and name == "limit":
            continue
        if isinstance(v, torch.Tensor):
            if not v.is_floating_point():
                raise TypeError(f"{fn}: {name} as a tensor must be floating point, got {v.dtype}")
            if v.numel() != num_e or v.device != device:
                raise ValueError(f"{fn}: {name} as a tensor must hold one value per expert ({num_e}) on {device}, "
                                 f"got {v.numel()} on {v.device}")
        elif not isinstance(v, (int, float)) or isinstance(v, bool):
            raise TypeError(f"{fn}: {name} must be a float or a per-expert tensor, got {type(v).__name__}")


def _expert_range(expert_offset: object, num_global_experts: object, num_e: int, fn: str) -> int:
    """The global expert count (ids are valid in [0, it)) after checking the expert-parallel slice; None means the
    slice ends the global range."""
    if not isinstance(expert_offset, int) or isinstance(expert_offset, bool):
        raise TypeError(f"{fn}: expert_offset must be an int, got {type(expert_offset).__name__}")
    if num_global_experts is None:
        num_global_experts = expert_offset + num_e
    if not isinstance(num_global_experts, int) or isinstance(num_global_experts, bool):
        raise TypeError(f"{fn}: num_global_experts must be an int or None, got {type(num_global_experts).__name__}")
    if expert_offset < 0 or expert_offset + num_e > num_global_experts:
        raise ValueError(f"{fn}: the local experts [{expert_offset}, {expert_offset + num_e}) must lie in "
                         f"[0, num_global_experts = {num_global_experts})")
    return num_global_experts


def _check_ids(ids: torch.Tensor, id_limit: int, fn: str) -> None:
    if ids.numel() and bool(((ids < 0) | (ids >= id_limit)).any()):  # the one sync
        raise ValueError(f"{fn}: topk_ids holds expert ids outside [0, {id_limit})")


def _check_kernel_call(hidden: torch.Tensor, routing: torch.Tensor | tuple[torch.Tensor, torch.Tensor], k: int,
                       w: PreparedMoEWeights, alpha: Scalar, beta: Scalar, limit: Scalar | None,
                       out_dtype: torch.dtype, validate_ids: bool, id_limit: int) -> None:
    """The kernel pipeline's own checks (arguments already checked for shape): limits, dtypes, devices, ids."""
    fn = "fused_moe"
    num_e = w.num_experts
    if not kernels_support(num_e, k):
        raise ValueError(f"{fn}: impl='kernels' serves E <= 512 experts and top_k <= 16; got E = {num_e}, k = {k} "
                         "(use impl='reference')")
    if out_dtype not in _FLOATS:
        raise TypeError(f"{fn}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    device = one_device([hidden, w.w13, *_routing_tensors(routing)], fn, "hidden, routing and weights")
    if device.type != "cuda":
        raise ValueError(f"{fn}: impl='kernels' needs hidden, routing and weights on a CUDA device, got {device}")
    if isinstance(routing, torch.Tensor):
        if routing.dtype not in _FLOATS:
            raise TypeError(f"{fn}: router logits must be float32/float16/bfloat16, got {routing.dtype}")
        if not routing.is_contiguous():
            raise ValueError(f"{fn}: router logits must be contiguous")
    else:
        ids, topk_weights = routing
        if ids.dtype not in (torch.int32, torch.int64) or topk_weights.dtype not in _FLOATS:
            raise TypeError(f"{fn}: topk_ids must be int32/int64 and topk_weights float, got {ids.dtype} and "
                            f"{topk_weights.dtype}")
        if not (ids.is_contiguous() and topk_weights.is_contiguous()):
            raise ValueError(f"{fn}: topk_ids and topk_weights must be contiguous")
        if validate_ids:
            _check_ids(ids, id_limit, fn)
    for name, v in (("alpha", alpha), ("beta", beta), ("limit", limit)):
        if isinstance(v, torch.Tensor) and (v.numel() != num_e or v.device != hidden.device):
            raise ValueError(f"{fn}: {name} as a tensor must hold one value per expert ({num_e}) on {hidden.device}")


def _routing_tensors(routing: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    return [routing] if isinstance(routing, torch.Tensor) else list(routing)


def _per_expert(v: Scalar | None) -> Scalar | None:
    if isinstance(v, torch.Tensor) and (v.dtype != torch.float32 or not v.is_contiguous()):
        return v.float().contiguous().reshape(-1)
    return v.reshape(-1) if isinstance(v, torch.Tensor) else v
