// SPDX-License-Identifier: Apache-2.0
// MoE plan + scatter in one launch for decode sizes (glue kernels K1 + K2 fused): one CTA per (token, slot) pair j.
// Every CTA computes the whole (small) plan in shared memory, redundantly:
//   1. routes all T tokens (warps over tokens; routing.cuh's route_token / copy_token, so ids and weights are
//      bit-identical to plan_kernel's);
//   2. counts the pairs of each expert, and scans the tile-padded counts into padded starts;
//   3. ranks its own pair inside its expert in ascending j = t * k + slot (a block count of the earlier pairs with
//      the same expert: the stable order of plan_kernel), so dest[j] = padded_start[e] + rank.
// Then CTA j writes ids[j], weights[j], rank[j], dest[j]; CTA 0 writes counts, padded_start, expert_of_tile and
// chunk_base (one chunk: all zero), so the workspace is exactly what plan_kernel + scatter_kernel leave (T <=
// kTokensPerChunk: one plan chunk; the done counter is not used). Each CTA gathers + quantizes (or copies) its row
// with glue.cuh's scatter_row -- whose first loads are issued before the plan, so the hidden row's memory latency
// hides under steps 1-3 -- and the grid's warps share the zeroing of non-routed rows' scales (glue.cuh explains
// why padding rows' data is not rewritten).
//
// Cost: the redundant plan is O(T*E) reads (logits) or O(T*k) (ids) per CTA, all from L2 after the first CTA, and
// a CTA's latency is one plan_kernel CTA's plus one scatter row: the fusion wins while the T*k CTAs run in about one
// wave (ops/moe_glue.py picks it for T <= 64, T*k <= 256, T*E <= 8192; kernel limits below).
// No host sync, no counters: CUDA-graph capturable.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "flashinfer_sm12x/moe/glue.cuh"
#include "flashinfer_sm12x/moe/routing.cuh"

namespace flashinfer_sm12x::moe {

constexpr int kFusedThreads = kPlanThreads;  // one thread per expert in the scan
constexpr int kFusedWarps = kFusedThreads / 32;
constexpr int kFusedMaxTokens = kTokensPerChunk;  // one plan chunk: chunk_base is all zero
constexpr int kFusedMaxPairs = 1024;              // shared ids and weights of every pair

// Run-time element types of the routing inputs (one kernel serves them all: the branch is uniform per warp).
enum class RouteInput : int { kLogitsF32 = 0, kLogitsF16 = 1, kLogitsBf16 = 2, kIdsI32 = 3, kIdsI64 = 4 };
enum class WeightInput : int { kF32 = 0, kF16 = 1, kBf16 = 2 };

struct PlanScatterParams {
  PlanParams plan;  // routing inputs and the workspace outputs (rank, chunk_base: as plan_kernel leaves them)
  ScatterParams scatter;
  RouteInput route = RouteInput::kLogitsF32;
  WeightInput weight = WeightInput::kF32;
};

template <class IdT>
__device__ __forceinline__ void copy_token_any(const PlanParams& p, WeightInput w, int t, int lane, int32_t* ids_out,
                                               float* weights_out, int32_t* error_flag) {
  switch (w) {
    case WeightInput::kF32: copy_token<IdT, float>(p, t, lane, ids_out, weights_out, error_flag); break;
    case WeightInput::kF16: copy_token<IdT, __half>(p, t, lane, ids_out, weights_out, error_flag); break;
    default: copy_token<IdT, __nv_bfloat16>(p, t, lane, ids_out, weights_out, error_flag); break;
  }
}

// Token t's ids and weights (from logits: one load per dtype, one shared top-k path).
__device__ __forceinline__ void route_any(const PlanScatterParams& p, int t, int lane, int32_t* ids_out,
                                          float* weights_out, int32_t* error_flag) {
  if (p.route == RouteInput::kIdsI32) return copy_token_any<int32_t>(p.plan, p.weight, t, lane, ids_out, weights_out,
                                                                     error_flag);
  if (p.route == RouteInput::kIdsI64) return copy_token_any<int64_t>(p.plan, p.weight, t, lane, ids_out, weights_out,
                                                                     error_flag);
  float v[kMaxExpertsPerLane];
  if (p.route == RouteInput::kLogitsF32) {
    load_logits<float>(p.plan, t, lane, v);
  } else if (p.route == RouteInput::kLogitsF16) {
    load_logits<__half>(p.plan, t, lane, v);
  } else {
    load_logits<__nv_bfloat16>(p.plan, t, lane, v);
  }
  select_top_k(p.plan, lane, v, ids_out, weights_out);
}

// The expert whose padded segment holds `row`: the first e with padded end > row, the last expert if none.
__device__ __forceinline__ int expert_at(const int32_t* padded_end, int num_e, int64_t row) {
  int lo = 0, hi = num_e;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (padded_end[mid] > row) hi = mid; else lo = mid + 1;
  }
  return min(lo, num_e - 1);
}

// RoutedRows from the shared plan.
struct SharedRoutedRows {
  const int32_t* padded_end = nullptr;
  const int32_t* padded_start = nullptr;
  const int32_t* counts = nullptr;
  int num_e = 0, bound = 0;
  __device__ __forceinline__ bool operator()(int64_t row) const {
    if (row >= bound) return false;
    const int e = expert_at(padded_end, num_e, row);
    return row - padded_start[e] < counts[e];
  }
};

// The plan every CTA computes in shared memory.
struct SharedPlan {
  int32_t ids[kFusedMaxPairs];
  float weights[kFusedMaxPairs];
  int32_t count[kMaxExperts];
  int32_t start[kMaxExperts];
  int32_t end[kMaxExperts];
  int32_t scan_tmp[32];
  int32_t scan_total;
};

// Steps 1-3 of the header for pair j (all threads call): the shared plan, and pair j's padded row. Thread 0 writes
// pair j's ids / weights / rank / dest.
__device__ __forceinline__ int64_t plan_pair_row(const PlanScatterParams& p, SharedPlan& s, int j) {
  const PlanParams& pp = p.plan;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int num_e = pp.num_experts, k = pp.top_k, pairs = pp.num_tokens * k;

  // 1. Route (or copy) every token; only CTA 0 reports out-of-range ids.
  for (int e = tid; e < num_e; e += kFusedThreads) s.count[e] = 0;
  int32_t* error_flag = blockIdx.x == 0 ? pp.error_flag : nullptr;
  for (int t = warp; t < pp.num_tokens; t += kFusedWarps) route_any(p, t, lane, s.ids + t * k, s.weights + t * k,
                                                                    error_flag);
  __syncthreads();

  // 2. Counts, then padded starts (exclusive scan of the tile-padded counts).
  for (int x = tid; x < pairs; x += kFusedThreads) {
    const int e = s.ids[x];
    if (e >= 0) atomicAdd(&s.count[e], 1);  // foreign pairs (kForeignExpert) get no row
  }
  __syncthreads();
  int padded = 0;
  if (tid < num_e) padded = (s.count[tid] + pp.tile_m - 1) / pp.tile_m * pp.tile_m;
  const int start = block_exclusive_scan(padded, s.scan_tmp, &s.scan_total);
  if (tid < num_e) {
    s.start[tid] = start;
    s.end[tid] = start + padded;
  }
  __syncthreads();

  // 3. Pair j's stable rank among the earlier pairs of its expert (block-uniform trip count); a foreign pair has
  //    neither rank nor row (-1: scatter_row skips it).
  const int e = s.ids[j];
  int rank = -1;
  int64_t row = -1;
  if (e >= 0) {  // block-uniform
    rank = 0;
    for (int base = 0; base < j; base += kFusedThreads) {
      const int other = base + tid;
      rank += __syncthreads_count(other < j && s.ids[other] == e);
    }
    row = s.start[e] + rank;
  }
  if (tid == 0) {
    pp.ids[j] = e;
    pp.weights[j] = s.weights[j];
    pp.rank[j] = rank;
    p.scatter.dest[j] = static_cast<int32_t>(row);
  }
  return row;
}

// One 512-thread CTA per SM: the top-k keeps 16 logits per lane in registers. The CTA's hidden-row loads are
// issued first and the plan is computed while they are in flight (scatter_row calls plan_pair_row between them).
template <ActFormat F, bool kCopy, class InT>
__global__ void __launch_bounds__(kFusedThreads, 1) plan_scatter_kernel(const PlanScatterParams p) {
  __shared__ SharedPlan s;
  const PlanParams& pp = p.plan;
  const int tid = threadIdx.x, warp = tid >> 5;
  const int num_e = pp.num_experts;
  const int j = blockIdx.x;

  scatter_row<F, kCopy, InT, kFusedThreads>(p.scatter, j / pp.top_k, [&] { return plan_pair_row(p, s, j); });
  if (blockIdx.x == 0) {
    for (int x = tid; x < num_e; x += kFusedThreads) {
      pp.counts[x] = s.count[x];
      pp.padded_start[x] = s.start[x];
      pp.chunk_base[x] = 0;
    }
    for (int i = tid; i < pp.num_tiles; i += kFusedThreads)
      pp.expert_of_tile[i] = expert_at(s.end, num_e, int64_t(i) * pp.tile_m);
  }

  // This CTA's share of the non-routed rows' scales.
  const SharedRoutedRows routed{s.end, s.start, s.count, num_e, p.scatter.bound};
  zero_padding_scales(p.scatter.sf_rows, p.scatter.cols, p.scatter.out_sf,
                      int64_t(blockIdx.x) * kFusedWarps + warp, int64_t(gridDim.x) * kFusedWarps, routed);
}

}  // namespace flashinfer_sm12x::moe
