#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A MODEL, not a measurement: the modelled time of one GPT-OSS MoE layer per decode step on SM12x chips
(RTX 5090, RTX PRO 6000 Blackwell, DGX Spark), kernel by kernel, for fused_moe's pipeline as it is written.

No SM12x GPU is available where this repository is developed, so this model steers decode work until
the native suite (`scripts/sm12x_suite.sh`) replaces it with measurements. Every number it prints is modelled.

What is modelled, per chip, model (GPT-OSS-20B: E = 32, GPT-OSS-120B: E = 128; top-4, H = I = 2880 padded to
2944 as `prepare_gpt_oss_weights` pads), activation mode (W4A4 "mxfp4", W4A8 "mxfp8") and T tokens:

- The kernels fused_moe launches, decided by the package's own rules (imported, not re-stated): each grouped GEMM's
  tactic (`kernels.grouped_mm_fp4.moe_tactics` for the chip's target and SM count: GEMM1 at N = 2 Ip, GEMM2 at
  N = Hp, one tile height), the row plan and the plan_scatter line (`moe.pipeline.row_plan`, with the chip's SM
  count), whether GEMM1 can run the activation in its epilogue
  (`FAMILY.serves("swiglu_quantize", ...)`). At decode that is plan_scatter (or plan + scatter), GEMM1 with the
  fused activation, GEMM2 writing the routed rows, finalize; unfused (`--unfused`, or a tactic without the fused
  epilogue) GEMM1 -> activation kernel -> GEMM2 writing every row.
- Each kernel's DRAM bytes (reads + writes, each tensor once; what L2 serves again is not counted): the weights
  of the active experts (the expected number of distinct experts hit by T tokens x top-k under uniform routing),
  the routed rows of A the grouped GEMMs read (A's rows are bounded per expert on the device: padding rows are
  zero-filled by TMA, not fetched) and the 128-row scale atoms of every tile they compute (every expert's rows
  padded to the tile height, plus the host's bound; trailing tiles run on expert E-1, whose weights are read too
  when it is not routed), activations, scales, routing workspace, biases.
- Its MMA work, padding rows included, at the chip's dense FP4 rate (W4A4) or FP8 rate (W4A8, half of it).
- Its CTAs over the SMs in waves: time = sum over ceil(waves) waves of the per-wave cost, a wave's cost being
  max(per-CTA MMA time at one SM's share of the rate, per-CTA bytes at the bandwidth one CTA gets in that wave).
  A CTA gets min(bandwidth / CTAs in the wave, bytes it keeps in flight / DRAM latency) (Little's law), so a
  partial tail wave costs a full wave of MMA but less than a full wave of memory time.
- One launch floor per dependent kernel (`--launch-floor-us`, default 3 us): launch, ramp-up and drain.

Beside the per-kernel table it writes each GEMM's grid under three tactic policies (`gemm_fill_rows`, the CSV and PNG
named after --csv / --png with "_gemm_fill"): "single" (one tactic for both GEMMs chosen from the rows alone, the
pipeline before per-GEMM tactics), "per_gemm" (today's `moe_tactics`) and "what_if_64x64" (the per-GEMM rule with a
W4A4 Pingpong 64x64 tile added, which fails its compile proof today: the SM fill such a tile would buy). CTAs,
waves, fill (the busy fraction of the SM slots of those waves) and the modelled GEMM us: a model, not a measurement.

The weight-streaming floor is the active experts' parameter bytes (w13, w2, their scales and biases as the kernels
read them) over the bandwidth; `floor_fraction` = floor / modelled total (1.0 = at the floor).

Not modelled: caches across steps, PDL overlap between kernels, clocks, the glue kernels' serial work (plan_scatter
measured ~22 us at T = 1 on an H200, README: far above its bytes), instruction-level effects.

    python benchmarks/decode_model.py [--chips rtx5090,dgx-spark] [--models gpt-oss-20b] [--acts mxfp8]
        [--tokens 1,8,64] [--launch-floor-us 3] [--dram-latency-us 1] [--unfused] [--tactic NAME] [--csv PATH]
        [--png PATH]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashinfer_sm12x.checks import round_up
from flashinfer_sm12x.jit.arch import parse_target
from flashinfer_sm12x.kernels.family import Tactic
from flashinfer_sm12x.kernels.grouped_mm_fp4 import FAMILY as GROUPED
from flashinfer_sm12x.kernels.grouped_mm_fp4 import (
    GEMM_FORMAT_OF_ACT,
    grid_ctas,
    moe_tactics,
    padded_rows_bound,
    preference,
    sm_fill,
)
from flashinfer_sm12x.moe.pipeline import row_plan
from flashinfer_sm12x.ops.moe_glue import PLAN_SCATTER_CTAS_PER_SM
from flashinfer_sm12x.registry import MODELS
from flashinfer_sm12x.testing.benchmarking import plot_panels, write_csv

# ------------------------------------------------------------------------------------------------- the constants


@dataclass(frozen=True)
class Chip:
    """One SM12x part: what the model needs of it (dense FP4 = half the datasheet's 2:4-sparse figure)."""

    name: str
    target: str          # the build target whose shipped tactics it runs
    sms: int
    bandwidth_gbs: float
    fp4_tflops: float

    @property
    def fp8_tflops(self) -> float:
        """W4A8's kernel runs the mxf8f6f4 MMA at the FP8 rate: half the FP4 rate."""
        return self.fp4_tflops / 2


CHIPS: dict[str, Chip] = {
    "rtx5090": Chip("RTX 5090", "sm_120a", 170, 1792.0, 1676.0),
    "rtx-pro-6000": Chip("RTX PRO 6000 Blackwell", "sm_120a", 188, 1792.0, 2015.0),
    "dgx-spark": Chip("DGX Spark GB10", "sm_121a", 48, 273.0, 500.0),
}
TOKENS = (1, 2, 4, 8, 16, 32, 64)
ACTS = ("mxfp4", "mxfp8")
ACT_BYTES = {"mxfp4": 0.5, "mxfp8": 1.0}  # per activation element (packed e2m1 / e4m3)
PAD_TO = 128                 # prepare_gpt_oss_weights' padding of H and I
SF_BLOCK = 32                # elements per E8M0 scale
BF16, F32, I32 = 2, 4, 4
LOGIT_BYTES = F32            # router logits as fused_moe takes them (float32, as moe_traffic.py counts them)
BIAS_BYTES = BF16            # GPT-OSS's biases
LAUNCH_FLOOR_US = 3.0        # per dependent kernel (CLI option)
DRAM_LATENCY_US = 1.0        # loaded DRAM latency for Little's law (CLI option)
MAX_THREADS_PER_SM = 1536    # SM12x; the glue kernels' occupancy is taken as thread-limited (registers unknown here)
# Bytes one CTA keeps in flight: a GEMM's TMA stages fill its shared memory (101,376 B, one CTA per SM); the glue
# kernels issue 16-byte vector loads in batches of 4 per thread (glue.cuh kLoadBatch, finalize 8 columns x slot).
GEMM_INFLIGHT_BYTES = 96 * 1024
GLUE_INFLIGHT_BYTES_PER_THREAD = 4 * 16
THREADS = {"plan": 512, "plan_scatter": 512, "scatter": 128, "activation": 128, "finalize": 256}  # the .cuh's


@dataclass(frozen=True)
class Shape:
    """One model's MoE layer as the kernels see it (H, I padded to PAD_TO)."""

    model: str
    experts: int
    top_k: int
    hidden: int
    inter: int

    @property
    def hp(self) -> int:
        return round_up(self.hidden, PAD_TO)

    @property
    def ip(self) -> int:
        return round_up(self.inter, PAD_TO)


def shape_of(model: str) -> Shape:
    """The registry's MoE shape of `model` ("gpt-oss-20b", "gpt-oss-120b")."""
    m = MODELS[model]
    return Shape(model, m.num_experts, m.top_k, m.hidden_size, m.intermediate_size)


def scale_bytes(rows: int, cols: int) -> int:
    """E8M0 scale bytes of [rows, cols] in the 128x4 layout (rows padded to 128, scale columns to 4)."""
    return round_up(rows, 128) * round_up(cols // SF_BLOCK, 4)


# ------------------------------------------------------------------------------------------- uniform routing


def p_expert_hit(num_t: int, num_e: int, top_k: int) -> float:
    """Probability that a given expert is routed by at least one of T tokens (each picks k distinct of E)."""
    return 1.0 - (1.0 - top_k / num_e) ** num_t


def expected_active_experts(num_t: int, num_e: int, top_k: int) -> float:
    """Expected number of distinct experts hit by the T*k routed pairs under uniform routing."""
    return num_e * p_expert_hit(num_t, num_e, top_k)


def expected_used_tiles(num_t: int, num_e: int, top_k: int, tile_m: int) -> float:
    """Expected M tiles holding routed rows: sum over experts of E[ceil(c_e / tile_m)], c_e ~ Binomial(T, k/E)."""
    p = top_k / num_e
    per_expert = sum(math.comb(num_t, c) * p**c * (1 - p) ** (num_t - c) * -(-c // tile_m) for c in range(num_t + 1))
    return num_e * per_expert


# --------------------------------------------------------------------------------------------- kernel costs


@dataclass(frozen=True)
class KernelCost:
    """What one kernel launch does: the model's inputs for it (timing is `kernel_time`'s)."""

    name: str
    stage: str               # plan/scatter, GEMM1, activation, GEMM2, finalize
    ctas: int
    ctas_per_sm: int
    inflight_bytes: float    # per CTA (Little's law)
    dram_bytes: float        # reads + writes, each tensor once
    weight_bytes: float = 0.0        # of dram_bytes: expert parameters (incl. an unrouted expert's, trailing tiles)
    padding_bytes: float = 0.0       # of dram_bytes: A rows read that hold no routed pair
    mma_flops: float = 0.0
    tflops: float = 0.0              # the MMA rate it runs at
    tactic: str = ""


@dataclass(frozen=True)
class Layer:
    """One forward's sizes: shape, mode, T, each GEMM's tactic and the row plan (bound, tiles) the pipeline uses."""

    shape: Shape
    chip: Chip
    act: str
    num_t: int
    gemm1: Tactic            # GEMM1's grouped tactic (N = 2 Ip)
    gemm2: Tactic            # GEMM2's (N = Hp); the same tile_m
    bound: int
    tiles: int
    fused_plan_scatter: bool

    @property
    def tactic(self) -> Tactic:
        """GEMM1's tactic (whose tile_m pads the rows)."""
        return self.gemm1

    @property
    def tile_m(self) -> int:
        return self.gemm1.tile_m

    @property
    def pairs(self) -> int:
        return self.num_t * self.shape.top_k

    @property
    def active(self) -> float:
        return expected_active_experts(self.num_t, self.shape.experts, self.shape.top_k)

    @property
    def act_bytes(self) -> float:
        return ACT_BYTES[self.act]

    @property
    def rate(self) -> float:
        return self.chip.fp4_tflops if self.act == "mxfp4" else self.chip.fp8_tflops


def expert_param_bytes(s: Shape) -> dict[str, int]:
    """One expert's parameter bytes as the kernels read them: w13 [2Ip, Hp/2] + 128x4 scales, b1 [2Ip] (GEMM1's
    epilogue or the activation kernel), w2 [Hp, Ip/2] + scales (GEMM2), b2's H unpadded columns (finalize)."""
    return {"w13": 2 * s.ip * s.hp // 2, "w13_sf": scale_bytes(2 * s.ip, s.hp), "b1": 2 * s.ip * BIAS_BYTES,
            "w2": s.hp * s.ip // 2, "w2_sf": scale_bytes(s.hp, s.ip), "b2": s.hidden * BIAS_BYTES}


def weight_floor_bytes(s: Shape, num_t: int) -> float:
    """The weight-streaming floor's bytes: the active experts' parameters, each read once."""
    return expected_active_experts(num_t, s.experts, s.top_k) * sum(expert_param_bytes(s).values())


def trailing_expert_reads(layer: Layer) -> float:
    """Expected extra experts whose weights a grouped GEMM streams only for trailing tiles.

    Tiles past the last used one (the host's bound exceeds the routed tiles) run on expert E-1 (routing.cuh);
    when E-1 is not routed its weights come from DRAM for rows nobody reads. P(trailing tiles) is taken as
    min(1, E[trailing tiles]) (Markov), independent of E-1 being routed: an approximation."""
    s = layer.shape
    trailing = layer.tiles - expected_used_tiles(layer.num_t, s.experts, s.top_k, layer.tile_m)
    return min(1.0, max(0.0, trailing)) * (1.0 - p_expert_hit(layer.num_t, s.experts, s.top_k))


def row_kernel_ctas(pairs: int, sf_rows: int, cols: int) -> int:
    """scatter / activation grid (glue.cuh row_kernel_ctas, C++): a CTA per pair, or enough that no warp zeroes more
    than one 512-byte scale tile."""
    warps = THREADS["scatter"] // 32
    tiles = sf_rows // 128 * round_up(cols // SF_BLOCK, 4) // 4
    return max(pairs, -(-tiles // warps))


def glue_slots(kernel: str) -> int:
    """Resident CTAs per SM of a glue kernel: thread-limited, except plan_scatter (one per SM, ops/moe_glue.py)."""
    return PLAN_SCATTER_CTAS_PER_SM if kernel == "plan_scatter" else max(1, MAX_THREADS_PER_SM // THREADS[kernel])


def _workspace_bytes(layer: Layer, chunks: int) -> int:
    """The plan workspace written: ids, weights, rank, dest per pair; chunk bases, counts, padded starts per
    expert; expert_of_tile (ops/moe_glue.py workspace_offsets)."""
    e = layer.shape.experts
    return I32 * (4 * layer.pairs + chunks * e + 2 * e + layer.tiles)


def _scatter_rows_bytes(layer: Layer) -> int:
    """Gather + quantize: each token's hidden row read once, the routed rows written quantized at Hp columns, and
    every scale byte of the padded rows written (routed rows' scales, the rest zeroed)."""
    s = layer.shape
    return (layer.num_t * s.hidden * BF16 + int(layer.pairs * s.hp * layer.act_bytes)
            + scale_bytes(layer.bound, s.hp))


def plan_scatter_cost(layer: Layer) -> list[KernelCost]:
    """plan_scatter (one CTA per routed pair, each routing all T tokens from L2) at decode sizes, else plan (one CTA
    per 128 tokens) then scatter (a CTA per pair): the same workspace and rows either way."""
    s = layer.shape
    logits = layer.num_t * s.experts * LOGIT_BYTES
    inflight = GLUE_INFLIGHT_BYTES_PER_THREAD
    if layer.fused_plan_scatter:
        return [KernelCost("plan_scatter", "plan/scatter", layer.pairs, glue_slots("plan_scatter"),
                           inflight * THREADS["plan_scatter"],
                           logits + _workspace_bytes(layer, 1) + _scatter_rows_bytes(layer))]
    chunks = -(-layer.num_t // 128)
    plan = KernelCost("plan", "plan/scatter", chunks, glue_slots("plan"), inflight * THREADS["plan"],
                      logits + _workspace_bytes(layer, chunks))
    tables = I32 * (3 * layer.pairs + 2 * s.experts + layer.tiles)  # ids, rank, dest; starts, counts; tile table
    scatter = KernelCost("scatter", "plan/scatter", row_kernel_ctas(layer.pairs, round_up(layer.bound, 128), s.hp),
                         glue_slots("scatter"), inflight * THREADS["scatter"], tables + _scatter_rows_bytes(layer))
    return [plan, scatter]


def grouped_gemm_cost(layer: Layer, tactic: Tactic, name: str, stage: str, n: int, k: int, weights: float,
                      out_bytes: float) -> KernelCost:
    """One grouped GEMM of `tactic` over the padded bound (a multiple of tile_m: every expert's rows padded to
    it, row_plan's bound): (bound / tile_m) x (N / tile_n) CTAs, one per SM (its stages fill
    shared memory). Reads the routed rows of A (bounded per expert: padding rows are not fetched) and the 128x4
    scales of every tile once from DRAM, the weights `weights` (the active experts' plus an unrouted expert's for
    trailing tiles) and the tile tables; writes `out_bytes`. MMA: every computed row, 2 * bound * N * K."""
    a_bytes = layer.pairs * k * layer.act_bytes
    padding = 0.0  # A's padding rows are zero-filled by TMA, not read
    tables = I32 * (layer.tiles + 2 * layer.shape.experts)  # expert_of_tile; padded_start and counts
    ctas = (layer.bound // layer.tile_m) * -(-n // tactic.tile_n)
    return KernelCost(name, stage, ctas, 1, GEMM_INFLIGHT_BYTES,
                      a_bytes + scale_bytes(layer.bound, k) + weights + tables + out_bytes, weight_bytes=weights,
                      padding_bytes=padding, mma_flops=2.0 * layer.bound * n * k, tflops=layer.rate,
                      tactic=tactic.name)


def gemm1_cost(layer: Layer, fused: bool) -> KernelCost:
    """GEMM1 [bound, Hp] x w13^T -> [bound, 2Ip]. Fused ("swiglu_quantize"): fc1 bias + SwiGLU + quantization in
    the epilogue, writing the routed rows of GEMM2's operand (Ip columns) and their scales; unfused ("store"): the
    bf16 [bound, 2Ip] intermediate, every row."""
    s, p = layer.shape, expert_param_bytes(layer.shape)
    experts = layer.active + trailing_expert_reads(layer)
    weights = experts * (p["w13"] + p["w13_sf"]) + (layer.active * p["b1"] if fused else 0.0)
    out = (layer.pairs * (s.ip * layer.act_bytes + s.ip // SF_BLOCK) if fused else layer.bound * 2 * s.ip * BF16)
    return grouped_gemm_cost(layer, layer.gemm1, "GEMM1 + activation" if fused else "GEMM1", "GEMM1", 2 * s.ip, s.hp,
                             weights, out)


def activation_cost(layer: Layer) -> KernelCost:
    """The unfused activation kernel (a CTA per pair): reads the routed rows of the bf16 intermediate and the active
    experts' fc1 bias, writes GEMM2's operand rows and every scale byte of the padded rows."""
    s = layer.shape
    bias = layer.active * expert_param_bytes(s)["b1"]
    moved = (layer.pairs * 2 * s.ip * BF16 + I32 * 2 * layer.pairs + bias + int(layer.pairs * s.ip * layer.act_bytes)
             + scale_bytes(layer.bound, s.ip))
    return KernelCost("activation", "activation", row_kernel_ctas(layer.pairs, round_up(layer.bound, 128), s.ip),
                      glue_slots("activation"), GLUE_INFLIGHT_BYTES_PER_THREAD * THREADS["activation"], moved,
                      weight_bytes=bias)


def gemm2_cost(layer: Layer, routed: bool) -> KernelCost:
    """GEMM2 [bound, Ip] x w2^T -> bf16 [bound, Hp]: the routed rows only ("store_routed") or every row."""
    s, p = layer.shape, expert_param_bytes(layer.shape)
    weights = (layer.active + trailing_expert_reads(layer)) * (p["w2"] + p["w2_sf"])
    out = (layer.pairs if routed else layer.bound) * s.hp * BF16
    return grouped_gemm_cost(layer, layer.gemm2, "GEMM2" + (" (routed rows)" if routed else ""), "GEMM2", s.hp, s.ip,
                             weights, out)


def finalize_cost(layer: Layer) -> KernelCost:
    """finalize (a CTA per token): each routed row of GEMM2's output (H columns) and the active experts' fc2 bias
    read once, ids / weights / dest, the [T, H] bf16 output written."""
    s = layer.shape
    bias = layer.active * expert_param_bytes(s)["b2"]
    moved = layer.pairs * s.hidden * BF16 + bias + I32 * 3 * layer.pairs + layer.num_t * s.hidden * BF16
    return KernelCost("finalize", "finalize", layer.num_t, glue_slots("finalize"),
                      GLUE_INFLIGHT_BYTES_PER_THREAD * THREADS["finalize"], moved, weight_bytes=bias)


# ---------------------------------------------------------------------------------------------------- timing


def wave_sizes(ctas: int, slots: int) -> list[int]:
    """CTAs in each wave when `slots` run at once: full waves, then the tail."""
    full, tail = divmod(ctas, slots)
    return [slots] * full + ([tail] if tail else [])


def kernel_time(cost: KernelCost, chip: Chip, launch_floor_us: float = LAUNCH_FLOOR_US,
                dram_latency_us: float = DRAM_LATENCY_US) -> dict[str, float]:
    """Modelled microseconds of one kernel: per wave max(per-CTA MMA, per-CTA bytes at its bandwidth), summed over
    the ceil(waves) waves, plus the launch floor.

    Parameters
    ----------
    cost : KernelCost
    chip : Chip
    launch_floor_us : float
        Added once per launch (every kernel of the layer depends on the previous one).
    dram_latency_us : float
        For the per-CTA bandwidth cap, inflight_bytes / latency.

    Returns
    -------
    dict
        waves (CTAs / resident slots), tail_fill (waves / ceil(waves)), mem_us and mma_us (each summed over the
        waves), body_us (the waves' max-sum), launch_us, us (body + launch).
    """
    slots = chip.sms * cost.ctas_per_sm
    bandwidth = chip.bandwidth_gbs * 1e3  # bytes per microsecond
    per_cta_bytes = cost.dram_bytes / cost.ctas
    cap = cost.inflight_bytes / dram_latency_us if dram_latency_us > 0 else math.inf
    # One SM's share of the MMA rate, split among the CTAs resident on it.
    per_cta_rate = cost.tflops * 1e6 / (chip.sms * cost.ctas_per_sm) if cost.tflops else math.inf
    mma_us = cost.mma_flops / cost.ctas / per_cta_rate if cost.mma_flops else 0.0
    mem_total = mma_total = body = 0.0
    for n in wave_sizes(cost.ctas, slots):
        mem = per_cta_bytes / min(bandwidth / n, cap)
        mem_total, mma_total, body = mem_total + mem, mma_total + mma_us, body + max(mem, mma_us)
    waves = cost.ctas / slots
    return {"waves": waves, "tail_fill": waves / math.ceil(waves), "mem_us": mem_total, "mma_us": mma_total,
            "body_us": body, "launch_us": launch_floor_us, "us": body + launch_floor_us}


# -------------------------------------------------------------------------------------------------- pipeline


def layer_plan(shape: Shape, chip: Chip, act: str, num_t: int, tactic: Any = None) -> Layer:
    """The pipeline's decisions for one forward: each GEMM's tactic as fused_moe picks it on the chip (its target,
    SM count and the padded N and K; `tactic`: one Tactic pinning both GEMMs or a (GEMM1, GEMM2) pair), the row
    plan (bound, tiles) and the plan_scatter line for the chip's SM count."""
    fmt = GEMM_FORMAT_OF_ACT[act]
    plan = row_plan(num_t, shape.top_k, shape.experts, fmt, tactic, parse_target(chip.target), chip.sms, shape.hp,
                    shape.ip)
    return Layer(shape, chip, act, num_t, plan.gemm1, plan.gemm2, plan.bound, plan.tiles, plan.fused_plan_scatter)


def pipeline_costs(layer: Layer, fused_epilogue: bool | None = None) -> list[KernelCost]:
    """Every kernel fused_moe launches for `layer`, in order. fused_epilogue None: wherever the tactic serves the
    MoE epilogues (GPT-OSS's weights are gate/up interleaved), False: the unfused pipeline."""
    fmt = GEMM_FORMAT_OF_ACT[layer.act]
    fusable = GROUPED.serves("swiglu_quantize", fmt, layer.gemm1) and (2 * layer.shape.ip) % 64 == 0
    fused = fusable if fused_epilogue is None else (fused_epilogue and fusable)
    kernels = plan_scatter_cost(layer)
    if fused:
        kernels += [gemm1_cost(layer, True), gemm2_cost(layer, True)]
    else:
        kernels += [gemm1_cost(layer, False), activation_cost(layer), gemm2_cost(layer, False)]
    return kernels + [finalize_cost(layer)]


def model_rows(chip_key: str, model: str, act: str, num_t: int, launch_floor_us: float = LAUNCH_FLOOR_US,
               dram_latency_us: float = DRAM_LATENCY_US, fused_epilogue: bool | None = None,
               tactic_name: str | None = None) -> list[dict[str, Any]]:
    """CSV rows of one (chip, model, mode, T): one per kernel, then their "total"."""
    chip, shape = CHIPS[chip_key], shape_of(model)
    tactic = None
    if tactic_name is not None:
        tactic = next((t for t in GROUPED.candidates(GEMM_FORMAT_OF_ACT[act]) if t.name == tactic_name), None)
        if tactic is None:
            raise ValueError(f"decode_model: {tactic_name!r} is not a {act} tactic")
    layer = layer_plan(shape, chip, act, num_t, tactic)
    floor_bytes = weight_floor_bytes(shape, num_t)
    floor_us = floor_bytes / (chip.bandwidth_gbs * 1e3)
    both = layer.gemm1.name if layer.gemm1 == layer.gemm2 else f"{layer.gemm1.name} / {layer.gemm2.name}"
    common = {"source": "model", "chip": chip.name, "model": model, "experts": shape.experts, "act": act,
              "tokens": num_t, "tactic": both, "rows_computed": layer.bound, "routed_rows": layer.pairs,
              "active_experts": round(layer.active, 3)}
    rows = []
    for cost in pipeline_costs(layer, fused_epilogue):
        t = kernel_time(cost, chip, launch_floor_us, dram_latency_us)
        rows.append({**common, "kernel": cost.name, "stage": cost.stage, "tactic": cost.tactic or both,
                     "launches": 1, "ctas": cost.ctas,
                     "waves": round(t["waves"], 4), "tail_fill": round(t["tail_fill"], 4),
                     "dram_bytes": int(cost.dram_bytes), "weight_bytes": int(cost.weight_bytes),
                     "padding_bytes": int(cost.padding_bytes), "mma_gflop": round(cost.mma_flops / 1e9, 4),
                     "mem_us": t["mem_us"], "mma_us": t["mma_us"], "launch_us": t["launch_us"], "us": t["us"]})
    total = {**common, "kernel": "total", "stage": "total", "launches": len(rows),
             "ctas": sum(r["ctas"] for r in rows), "waves": "", "tail_fill": "",
             **{key: sum(r[key] for r in rows) for key in ("dram_bytes", "weight_bytes", "padding_bytes")},
             "mma_gflop": round(sum(r["mma_gflop"] for r in rows), 4),
             **{key: sum(r[key] for r in rows) for key in ("mem_us", "mma_us", "launch_us", "us")}}
    rows.append(total)
    for r in rows:
        r["floor_bytes"], r["floor_us"] = int(floor_bytes), floor_us
        r["floor_fraction"] = floor_us / total["us"]
        for key in ("mem_us", "mma_us", "launch_us", "us", "floor_us", "floor_fraction"):
            r[key] = round(r[key], 4)
    return rows


# ------------------------------------------------------------------------------------------- GEMM grids (SM fill)

POLICIES = ("single", "per_gemm", "what_if_64x64")
# A W4A4 decode tile the per-GEMM rule would take if it compiled: Pingpong 64x64 fails its compile proof (the 64-row
# mainloop loads SFB for TileN >= 128 only; docs/compile_proofs.md), so it appears only in the what-if policy.
WHAT_IF_TILE = Tactic("pingpong", 64, 64, 128)


def policy_tactics(policy: str, shape: Shape, chip: Chip, act: str, num_t: int) -> tuple[Tactic, Tactic] | None:
    """(GEMM1, GEMM2) tactics under `policy`: "single" the one tactic chosen from the rows alone (the pipeline before
    per-GEMM tactics: no N, K or SM count), "per_gemm" `moe_tactics` on the chip, "what_if_64x64" the same rule over
    the shipped menu plus WHAT_IF_TILE (W4A4 only; None for W4A8, which has no 64-row tile)."""
    fmt, target = GEMM_FORMAT_OF_ACT[act], parse_target(chip.target)
    rows, num_e = num_t * shape.top_k, shape.experts
    if policy == "single":
        plan = row_plan(num_t, shape.top_k, num_e, fmt, None, target, chip.sms)
        return plan.gemm1, plan.gemm2
    if policy == "per_gemm":
        return moe_tactics(rows, num_e, fmt, target, chip.sms, hidden_padded=shape.hp, inter_padded=shape.ip)
    if fmt != "mxfp4":
        return None
    menu = (*GROUPED.shipped(fmt, target), WHAT_IF_TILE)

    def ordered(n: int, k: int) -> list[Tactic]:
        return sorted(menu, key=lambda t: preference(t, fmt, rows, n, k, num_e, chip.sms))

    gemm1 = next(t for t in ordered(2 * shape.ip, shape.hp) if GROUPED.serves("swiglu_quantize", fmt, t))
    gemm2 = next(t for t in ordered(shape.hp, shape.ip) if t.tile_m == gemm1.tile_m)
    return gemm1, gemm2


def gemm_fill_rows(chip_key: str, model: str, act: str, num_t: int, launch_floor_us: float = LAUNCH_FLOOR_US,
                   dram_latency_us: float = DRAM_LATENCY_US) -> list[dict[str, Any]]:
    """CSV rows of each GEMM's grid under each policy of POLICIES (one per policy and GEMM): tactic, CTAs, waves,
    fill (the busy fraction of the SM slots of those waves), SMs left idle by a grid under one wave, and the modelled
    GEMM us (fused epilogues; `kernel_time`). A model, not a measurement."""
    chip, shape = CHIPS[chip_key], shape_of(model)
    rows: list[dict[str, Any]] = []
    for policy in POLICIES:
        pair = policy_tactics(policy, shape, chip, act, num_t)
        if pair is None:
            continue
        bound = padded_rows_bound(num_t * shape.top_k, shape.experts, pair[0].tile_m)
        layer = Layer(shape, chip, act, num_t, pair[0], pair[1], bound, bound // pair[0].tile_m, False)
        for cost, tactic, n, k in ((gemm1_cost(layer, True), pair[0], 2 * shape.ip, shape.hp),
                                   (gemm2_cost(layer, True), pair[1], shape.hp, shape.ip)):
            assert cost.ctas == grid_ctas(tactic, num_t * shape.top_k, n, shape.experts)  # one CTA count everywhere
            waves, fill = sm_fill(cost.ctas, chip.sms)
            rows.append({"source": "model", "chip": chip.name, "sms": chip.sms, "model": model,
                         "experts": shape.experts, "act": act, "tokens": num_t, "policy": policy,
                         "gemm": cost.stage, "n": n, "k": k, "tactic": tactic.name, "ctas": cost.ctas,
                         "waves": waves, "fill": round(fill, 4), "idle_sms": max(0, chip.sms - cost.ctas),
                         "us": round(kernel_time(cost, chip, launch_floor_us, dram_latency_us)["us"], 4)})
    return rows


def _print_fill(rows: list[dict[str, Any]]) -> None:
    """One line per (chip, model, act, T, GEMM): CTAs / fill per policy."""
    print("\nGEMM grids (MODEL): CTAs, fill of the SM slots, modelled us per policy "
          + " | ".join(POLICIES) + " (what_if_64x64: a tile that fails its compile proof today)")
    keyed: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        keyed.setdefault((r["chip"], r["model"], r["act"], r["tokens"], r["gemm"]), {})[r["policy"]] = r
    for (chip, model, act, num_t, gemm), by_policy in keyed.items():
        cells = " | ".join(f"{r['tactic']} {r['ctas']} CTAs {r['fill']:.2f} {r['us']:.1f} us"
                           for r in by_policy.values())
        print(f"  {chip:<24}{model:<14}{act:<6}T={num_t:<4}{gemm:<6} {cells}")


def _fill_path(path: str) -> Path:
    """decode_model.csv -> decode_model_gemm_fill.csv (beside the per-kernel output)."""
    p = Path(path)
    return p.with_name(f"{p.stem}_gemm_fill{p.suffix}")


# ------------------------------------------------------------------------------------------------------- CLI

STAGES = ("plan/scatter", "GEMM1", "activation", "GEMM2", "finalize")


def _print_block(rows: list[dict[str, Any]]) -> None:
    """One table line per (mode, T): modelled us per stage, total, floor, fraction, the GEMMs' waves."""
    print(f"  {'act':<6}{'T':>4}{'kern':>5} " + "".join(f"{s:>13}" for s in STAGES)
          + f"{'total':>9}{'floor':>9}{'frac':>6}  GEMM1 / GEMM2 waves (tactic)")
    by_config: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        by_config.setdefault((r["act"], r["tokens"]), []).append(r)
    for (act, num_t), group in by_config.items():
        total = next(r for r in group if r["kernel"] == "total")
        stage_us = {s: sum(r["us"] for r in group if r["stage"] == s) for s in STAGES}
        cells = "".join(f"{stage_us[s]:>13.1f}" if any(r["stage"] == s for r in group) else f"{'-':>13}"
                        for s in STAGES)
        waves = " / ".join(f"{r['waves']:.2f}" for r in group if r["stage"] in ("GEMM1", "GEMM2"))
        print(f"  {act:<6}{num_t:>4}{total['launches']:>5} {cells}{total['us']:>9.1f}{total['floor_us']:>9.1f}"
              f"{total['floor_fraction']:>6.2f}  {waves} ({total['tactic']})")


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chips", default=",".join(CHIPS), help=f"comma-separated, of {', '.join(CHIPS)}")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated registry models")
    parser.add_argument("--acts", default=",".join(ACTS), help="mxfp4 (W4A4), mxfp8 (W4A8)")
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="comma-separated T values")
    parser.add_argument("--launch-floor-us", type=float, default=LAUNCH_FLOOR_US, help="per dependent kernel")
    parser.add_argument("--dram-latency-us", type=float, default=DRAM_LATENCY_US,
                        help="loaded DRAM latency: a CTA's bandwidth cap is its in-flight bytes over it")
    parser.add_argument("--unfused", action="store_true", help="the unfused pipeline (fused_epilogue=False)")
    parser.add_argument("--tactic", default=None, help="force a grouped tactic by name (default: the heuristic)")
    parser.add_argument("--csv", default="benchmarks/results/decode_model.csv")
    parser.add_argument("--png", default="benchmarks/results/decode_model.png")
    args = parser.parse_args(argv)
    chips, models, acts = _csv_list(args.chips), _csv_list(args.models), _csv_list(args.acts)
    tokens = [int(t) for t in _csv_list(args.tokens)]
    for name, values, known in (("chip", chips, CHIPS), ("model", models, MODELS), ("act", acts, ACTS)):
        unknown = [v for v in values if v not in known]
        if unknown:
            parser.error(f"unknown {name} {unknown}; choose from {list(known)}")
    if any(t < 1 for t in tokens):
        parser.error("tokens must be >= 1")
    if args.tactic is not None:
        missing = [a for a in acts if args.tactic not in {t.name for t in GROUPED.candidates(GEMM_FORMAT_OF_ACT[a])}]
        if missing:
            parser.error(f"--tactic {args.tactic} is not a candidate for {missing}; pass --acts accordingly")

    print("MODEL, not a measurement: one GPT-OSS MoE layer per decode step (benchmarks/decode_model.py; the native "
          "suite scripts/sm12x_suite.sh replaces it with measurements)")
    print(f"launch floor {args.launch_floor_us} us per kernel, DRAM latency {args.dram_latency_us} us, "
          f"{'unfused' if args.unfused else 'fused epilogues where the tactic serves them'}, uniform routing")
    rows: list[dict[str, Any]] = []
    for chip_key in chips:
        chip = CHIPS[chip_key]
        print(f"\n{chip.name} ({chip.target}): {chip.sms} SMs, {chip.bandwidth_gbs:,.0f} GB/s, dense FP4 "
              f"{chip.fp4_tflops:,.0f} / FP8 {chip.fp8_tflops:,.0f} TFLOPS")
        for model in models:
            s = shape_of(model)
            print(f" {model}: E = {s.experts}, top-{s.top_k}, H = I = {s.hidden} (padded {s.hp}); "
                  f"{sum(expert_param_bytes(s).values()) / 1e6:.2f} MB per expert; modelled us per layer:")
            block: list[dict[str, Any]] = []
            for act in acts:
                for num_t in tokens:
                    block += model_rows(chip_key, model, act, num_t, args.launch_floor_us, args.dram_latency_us,
                                        False if args.unfused else None, args.tactic)
            _print_block(block)
            rows += block
    write_csv(rows, args.csv)
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in rows:
        if r["kernel"] != "total":
            continue
        panel = panels.setdefault(r["chip"], {})
        panel.setdefault(f"{r['model']} {r['act']}", []).append((r["tokens"], r["us"]))
        panel.setdefault(f"{r['model']} weight floor", [])
        if (r["tokens"], r["floor_us"]) not in panel[f"{r['model']} weight floor"]:
            panel[f"{r['model']} weight floor"].append((r["tokens"], r["floor_us"]))
    plot_panels(panels, Path(args.png), "MODEL: one GPT-OSS MoE layer per decode step (not measured)", "tokens T",
                "modelled us per layer", log_y=True)
    fill_rows = [r for chip_key in chips for model in models for act in acts for num_t in tokens
                 for r in gemm_fill_rows(chip_key, model, act, num_t, args.launch_floor_us, args.dram_latency_us)]
    _print_fill(fill_rows)
    write_csv(fill_rows, str(_fill_path(args.csv)))
    fill_panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in fill_rows:
        if r["gemm"] == "GEMM2":  # the narrow GEMM (N = Hp) whose grid leaves SMs idle at decode; GEMM1 in the CSV
            series = fill_panels.setdefault(f"{r['chip']} ({r['sms']} SMs), GEMM2", {})
            series.setdefault(f"{r['model']} {r['act']} {r['policy']}", []).append((r["tokens"], r["fill"]))
    plot_panels(fill_panels, _fill_path(args.png), "MODEL: GEMM2's grid, fill of the SM slots per tactic policy "
                "(not measured; what_if_64x64 fails its compile proof)", "tokens T",
                "CTAs / (waves x SMs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
