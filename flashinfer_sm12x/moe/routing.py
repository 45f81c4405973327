# SPDX-License-Identifier: Apache-2.0
"""Routing, token permutation and the final weighted combine of the fused MoE, as device-agnostic torch ops.

Nothing here synchronises the host with the device unless asked to (`permute(..., validate_ids=True)`), so
`route -> permute -> (grouped GEMMs) -> finalize` can be captured in a CUDA graph. The ops used are sort,
gather, softmax, searchsorted, scatter, index_select and elementwise math, none of which waits for the device.
Torch ops that DO synchronise, and are therefore avoided: `torch.bincount` on CUDA (it reads max() back to
size its output), `nonzero` / `unique` / `masked_select` / boolean-mask indexing (data-dependent output
size), `.item()`, `.tolist()`, `.cpu()`, and any Python `if` on a device tensor.

Conventions (checked against upstream, see each function):
- token t's k choices form the "expanded" rows j = t * k + slot (slot = rank of the choice, 0 = largest);
- rows are "permuted" by a stable sort on the expert id: all rows of expert 0 first, then expert 1, ...;
  inside one expert, rows keep ascending j (so ascending token). Expert e owns permuted rows
  [expert_offsets[e], expert_offsets[e + 1]).
"""

from __future__ import annotations

import torch

from ..checks import check_count, check_tensor

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ID_DTYPES = (torch.int32, torch.int64)


def _check_fits(k: int, num_e: int, message: str) -> None:
    """A token picks k distinct experts: k <= E (ValueError with `message` otherwise)."""
    if k > num_e:
        raise ValueError(message)


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick each token's top_k experts. Returns (topk_ids int32 [T, k], topk_weights float32 [T, k]).

    router_logits: [T, E] float32/float16/bfloat16, contiguous; computed in float32.
    ids are in descending logit order; equal logits go to the lower expert id first (a stable sort, so the
    choice is deterministic and identical on CPU and GPU, which torch.topk does not promise).
    renormalize=True (GPT-OSS): weights = softmax over the k selected logits. This is HF transformers'
      GptOssTopKRouter (topk on logits, then softmax of the top values), TRT-LLM/FlashInfer
      RoutingMethodType.Renormalize ("TopK -> Softmax"), and equals vLLM's topk_softmax(renormalize=True)
      (softmax over all E, top-k, divide by the sum), since exp(x_j)/sum_k exp(x_k) does not depend on the
      normaliser over the other experts.
    renormalize=False: weights = softmax over all E, gathered at the k ids (they sum to <= 1).
    NaN logits sort as the largest (torch.sort's rule) and make that token's weights NaN.
    Device ops only (sort, gather, softmax): no host synchronisation.
    """
    fn = "route"
    logits = check_tensor(router_logits, "router_logits", fn, _FLOAT_DTYPES, ndim=2)
    k, num_e = check_count(top_k, "top_k", fn), logits.shape[1]
    _check_fits(k, num_e, f"{fn}: top_k = {k} exceeds the number of experts {num_e}")
    x = logits.float()
    # Sorting E (128 for GPT-OSS) values per token costs little next to the GEMMs and gives stable ties.
    vals, ids = torch.sort(x, dim=1, descending=True, stable=True)
    vals, ids = vals[:, :k], ids[:, :k]
    weights = torch.softmax(vals, dim=1) if renormalize else torch.softmax(x, dim=1).gather(1, ids)
    return ids.to(torch.int32), weights


def clamp_expert_ids(topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sync-free id check: returns (ids clamped to [0, E-1], error flag int32 [1]: 1 if any id was out of range).

    Checking ids needs a reduction over the device tensor; raising from it needs its result on the host
    (a sync). For captured/graph code, call this instead and read the flag later (after the step, or never
    in production); the clamped ids keep every downstream index in bounds, so a bad id costs wrong numbers
    for that token, never an out-of-bounds access. Then call permute(..., validate_ids=False).
    """
    fn = "clamp_expert_ids"
    ids = check_tensor(topk_ids, "topk_ids", fn, _ID_DTYPES, ndim=2)
    num_e = check_count(num_experts, "num_experts", fn)
    bad = (ids < 0) | (ids >= num_e)
    flag = bad.reshape(-1).any().reshape(1).to(torch.int32)  # device tensor; any() of an empty tensor is 0
    return ids.clamp(0, num_e - 1), flag


def permute(
    topk_ids: torch.Tensor, num_experts: int, *, validate_ids: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group the T*k (token, expert) pairs by expert.

    Returns:
      expert_offsets int64 [E + 1]: expert e owns permuted rows [offsets[e], offsets[e+1]); offsets[E] = T*k;
      permuted_token_idx int32 [T*k]: source token of each permuted row (GEMM1 gathers hidden[idx]);
      inverse int32 [T*k]: permuted position of expanded row j = t*k + slot (finalize gathers with it).
    expert_offsets is TRT-LLM's expert_first_token_offset (FlashInfer cutlass_fused_moe_kernels.cuh). Our
    inverse is indexed token-major (t*k + slot); TRT-LLM's unpermuted_row_to_permuted_row is slot-major
    (slot*T + t, see finalizeMoeRoutingKernel there): transpose when handing ours to that code.

    topk_ids: int32/int64 [T, k], contiguous, k <= E.
    validate_ids=True checks 0 <= id < E on the host: one device->host read of a flag (a sync; not allowed
      in CUDA-graph capture) and raises ValueError. validate_ids=False skips it (ids from `route` are always
      valid; otherwise use `clamp_expert_ids` first). Unchecked out-of-range ids do not fault here: negative
      ids sort before offsets[0] and ids >= E after offsets[E], i.e. outside every expert's range.
    Device ops only (stable sort, searchsorted, scatter, integer math): no sync when validate_ids=False.
    """
    fn = "permute"
    ids = check_tensor(topk_ids, "topk_ids", fn, _ID_DTYPES, ndim=2)
    k, num_e = ids.shape[1], check_count(num_experts, "num_experts", fn)
    _check_fits(k, num_e, f"{fn}: top_k = {k} (topk_ids columns) exceeds num_experts = {num_e}")
    if k == 0:
        raise ValueError(f"{fn}: topk_ids has no columns (top_k must be >= 1)")
    if not isinstance(validate_ids, bool):
        raise TypeError(f"{fn}: validate_ids must be a bool, got {type(validate_ids).__name__}")
    if validate_ids and ids.numel() and bool(((ids < 0) | (ids >= num_e)).any()):  # the one sync
        raise ValueError(f"{fn}: topk_ids holds expert ids outside [0, {num_e})")
    flat = ids.reshape(-1)
    # Stable: rows of one expert stay in expanded order, so the permutation is deterministic.
    sorted_ids, order = torch.sort(flat, stable=True)
    bounds = torch.arange(num_e + 1, device=flat.device, dtype=sorted_ids.dtype)
    # offsets[e] = #rows with id < e; bincount would give the counts too, but syncs on CUDA.
    offsets = torch.searchsorted(sorted_ids, bounds, right=False)
    permuted_token_idx = torch.div(order, k, rounding_mode="floor").to(torch.int32)
    inverse = torch.empty_like(order)
    inverse.scatter_(0, order, torch.arange(order.numel(), device=order.device, dtype=order.dtype))
    return offsets.to(torch.int64), permuted_token_idx, inverse.to(torch.int32)


def finalize(
    expert_out: torch.Tensor,
    inverse: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Weighted sum of each token's k expert outputs, back in token order: out[t] = sum_j w[t,j] * y[inv[t*k+j]].

    expert_out: [T*k, H] float, rows in permuted order (GEMM2's output); inverse: int32/int64 [T*k] from
    `permute`; topk_weights: float [T, k]. Accumulates in float32 in slot order 0..k-1 (deterministic,
    unlike an atomic-add epilogue); returns out_dtype (default: expert_out's dtype) [T, H].
    Device ops only (index_select, multiply, sum): no host synchronisation. Indices are not range-checked
    (that would need a sync); `permute` always produces valid ones.
    """
    fn = "finalize"
    y = check_tensor(expert_out, "expert_out", fn, _FLOAT_DTYPES, ndim=2)
    inv = check_tensor(inverse, "inverse", fn, _ID_DTYPES, ndim=1)
    w = check_tensor(topk_weights, "topk_weights", fn, _FLOAT_DTYPES, ndim=2)
    num_t, k = w.shape
    if inv.numel() != num_t * k:
        raise ValueError(f"{fn}: inverse has {inv.numel()} entries, expected T*k = {num_t * k}")
    if y.shape[0] != num_t * k:
        raise ValueError(f"{fn}: expert_out has {y.shape[0]} rows, expected T*k = {num_t * k}")
    if not (y.device == inv.device == w.device):
        raise ValueError(f"{fn}: expert_out, inverse and topk_weights must be on one device")
    if out_dtype is not None and out_dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{fn}: out_dtype must be one of {[str(d) for d in _FLOAT_DTYPES]}, got {out_dtype}")
    gathered = y.index_select(0, inv.long()).view(num_t, k, y.shape[1]).float()
    out = (gathered * w.float().unsqueeze(2)).sum(dim=1)
    return out.to(out_dtype or y.dtype)
