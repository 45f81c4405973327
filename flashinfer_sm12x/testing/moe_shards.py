# SPDX-License-Identifier: Apache-2.0
"""Tensor- and expert-parallel shards of a GPT-OSS MoE checkpoint, laid out as vLLM loads them (shared by
tests/moe/test_fused_moe_parallel.py and scripts/multi_gpu.py, so the single-process proof and the multi-process
run build the same shards).

TP shards follow vLLM's GPT-OSS MXFP4 loader: I is split in whole 32-blocks, cdiv(I/32, tp) per rank (the last
rank may hold fewer, or none), each rank's parameters sized I//tp rounded up to 128 with the loaded slice at the
front, and the fc2 bias loaded on TP rank 0 only (zeros elsewhere). EP shards: each rank holds a contiguous slice
of the experts (vLLM's "linear" placement; uneven splits included) and sees global routing ids.
"""

from __future__ import annotations

import torch

from ..checks import round_up

BLOCK = 32  # the MXFP4 scale block: TP never splits one


def tp_slice(inter: int, tp: int, rank: int) -> tuple[int, int]:
    """The [start, end) of the intermediate dimension that TP rank `rank` loads (whole 32-blocks; may be empty)."""
    per_rank = -(-(inter // BLOCK) // tp) * BLOCK
    start = min(rank * per_rank, inter)
    return start, min(start + per_rank, inter)


def tp_shard(raw: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s parameters under TP, from a checkpoint-layout `raw` (`testing.moe_cases.make_weights`).

    Parameters
    ----------
    raw : dict of torch.Tensor
        w13 [E, 2I, H/2], w13_scale [E, 2I, H/32], w13_bias [E, 2I], w2 [E, H, I/2], w2_scale [E, H, I/32],
        w2_bias [E, H]; gate/up rows interleaved as GPT-OSS stores them.
    tp, rank : int
        The TP size and this rank.

    Returns
    -------
    dict of torch.Tensor
        The same keys, I replaced by round_up(I // tp, 128) (the loaded slice at the front, zeros after it); the fc2
        bias on rank 0 only, zeros elsewhere (vLLM's all-reduce then adds it once). On `raw`'s device.
    """
    num_e, two_i, _ = raw["w13"].shape
    inter, hidden = two_i // 2, raw["w2"].shape[1]
    start, end = tp_slice(inter, tp, rank)
    width = round_up(inter // tp, 128)  # the parameter: I // tp, padded by the method to the kernel's multiple
    if end - start > width:
        raise ValueError(f"tp_shard: rank {rank} loads {end - start} of I = {inter}, more than its {width} columns")

    def into(shape: tuple[int, ...], src: torch.Tensor) -> torch.Tensor:
        dst = torch.zeros(shape, dtype=src.dtype, device=src.device)
        dst[tuple(slice(0, n) for n in src.shape)] = src
        return dst

    return {
        "w13": into((num_e, 2 * width, hidden // 2), raw["w13"][:, 2 * start:2 * end]),
        "w13_scale": into((num_e, 2 * width, hidden // BLOCK), raw["w13_scale"][:, 2 * start:2 * end]),
        "w13_bias": into((num_e, 2 * width), raw["w13_bias"][:, 2 * start:2 * end]),
        "w2": into((num_e, hidden, width // 2), raw["w2"][..., start // 2:end // 2]),
        "w2_scale": into((num_e, hidden, width // BLOCK), raw["w2_scale"][..., start // BLOCK:end // BLOCK]),
        "w2_bias": raw["w2_bias"].clone() if rank == 0 else torch.zeros_like(raw["w2_bias"]),
    }


def linear_split(num_e: int, ep: int) -> list[tuple[int, int]]:
    """(offset, count) per EP rank: num_e // ep each, the remainder on the last rank (any contiguous split will do)."""
    base = num_e // ep
    return [(r * base, base + (num_e - ep * base if r == ep - 1 else 0)) for r in range(ep)]


def ep_shard(raw: dict[str, torch.Tensor], offset: int, count: int) -> dict[str, torch.Tensor]:
    """The experts [offset, offset + count) of `raw`, every parameter (fc2 bias included: each pair is computed on
    exactly one rank, so its bias is added once)."""
    return {k: v[offset:offset + count].clone() for k, v in raw.items()}
