// SPDX-License-Identifier: Apache-2.0
// MoE routing plan (glue kernel K1): router logits or precomputed ids -> top-k ids and weights, the stable position
// of every (token, slot) pair inside its expert, per-expert counts, tile-padded expert starts and expert_of_tile.
//
// One launch, no host sync (CUDA-graph capturable). The grid is one CTA per chunk of kTokensPerChunk tokens:
//   1. each warp routes one token at a time (top-k in descending order, ties to the lower id, NaN largest, softmax
//      over the k chosen) or copies/clamps precomputed ids;
//   2. the CTA ranks its pairs inside each expert in ascending pair order j = t * k + slot (stable: warp match +
//      per-warp histograms scanned in warp order), and writes its per-expert counts;
//   3. the last CTA to finish (a device-scope counter, reset by that CTA for the next launch) turns the chunk
//      counts into per-chunk bases, the totals into tile-padded starts, and writes expert_of_tile.
// At decode sizes the grid is one CTA. The scatter kernel then reads
//   dest[j] = padded_start[e] + chunk_base[chunk(j), e] + rank[j].
// At decode sizes (one chunk) moe/plan_scatter.cuh fuses this plan with the scatter into one launch, computing the
// same workspace with these same routing functions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

namespace flashinfer_sm12x::moe {

constexpr int kPlanThreads = 512;
constexpr int kPlanWarps = kPlanThreads / 32;
constexpr int kTokensPerChunk = 128;
constexpr int kMaxExperts = 512;                    // kPlanThreads: one thread per expert in the scans
constexpr int kMaxExpertsPerLane = kMaxExperts / 32;
constexpr int kMaxTopK = 16;
// The local id of a pair routed to an expert another rank holds (expert parallelism): the plan gives it no row, the
// scatter and activation kernels skip it (dest = -1) and finalize leaves it out of the token's sum.
constexpr int32_t kForeignExpert = -1;

struct PlanParams {
  // Inputs: either router logits [T, E] or precomputed ids [T, k] (+ weights [T, k]).
  const void* logits = nullptr;
  const void* ids_in = nullptr;
  const void* weights_in = nullptr;
  int num_tokens = 0;
  int top_k = 0;
  int num_experts = 0;  // local experts E
  int tile_m = 0;
  int num_tiles = 0;    // bound / tile_m
  int num_chunks = 0;
  // Precomputed ids: valid global ids are [0, id_limit); the local expert is id - id_base. With skip_foreign
  // (expert parallelism) a pair whose local id is outside [0, E) is another rank's: it gets kForeignExpert, weight
  // 0, no rank and no row -- nothing downstream computes it. Without it such ids are clamped into [0, E).
  int id_base = 0;
  int id_limit = 0;
  bool skip_foreign = false;
  // Outputs (workspace).
  int32_t* ids = nullptr;            // [T*k] local expert in [0, E), or kForeignExpert
  float* weights = nullptr;          // [T*k]
  int32_t* rank = nullptr;           // [T*k] position inside (chunk, expert); -1 for a foreign pair
  int32_t* chunk_base = nullptr;     // [num_chunks, E]: chunk counts, then their exclusive prefix over chunks
  int32_t* counts = nullptr;         // [E]
  int32_t* padded_start = nullptr;   // [E]
  int32_t* expert_of_tile = nullptr; // [num_tiles]
  int32_t* error_flag = nullptr;     // [1]: set to 1 when a precomputed id is outside [0, id_limit); never cleared
  unsigned* done = nullptr;          // [1]: 0 before the launch; the last CTA resets it
};

template <class T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}

// Token t's logits as float: lane holds experts lane + 32 * i.
template <class LogitT>
__device__ __forceinline__ void load_logits(const PlanParams& p, int t, int lane, float (&v)[kMaxExpertsPerLane]) {
  const LogitT* row = static_cast<const LogitT*>(p.logits) + static_cast<int64_t>(t) * p.num_experts;
#pragma unroll
  for (int i = 0; i < kMaxExpertsPerLane; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < p.num_experts ? to_float(row[e]) : 0.f;
  }
}

// torch.sort(descending=True, stable=True)'s order as an unsigned key, so that the larger key ranks first and
// equal keys fall back to the lower expert id: NaN above everything (every NaN equal), +0 and -0 equal, then the
// float's order (sign-magnitude bits flipped into two's-complement order). Every real value's key is >= 0x007FFFFF
// (-inf), so 0 is free to mean "no candidate" (an expert past E, or none left).
__device__ __forceinline__ uint32_t order_key(float v) {
  if (isnan(v)) return 0xFFFFFFFFu;
  if (v == 0.f) return 0x80000000u;
  const uint32_t bits = __float_as_uint(v);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// One lane's best candidate: the largest key among its experts lane + 32 * i (i < per_lane, bit i of `taken`
// clear), the lowest i on ties; key 0 if none is left.
struct LaneBest {
  uint32_t key = 0;
  int slot = 0;  // i
  float value = 0.f;
};
__device__ __forceinline__ LaneBest lane_best(const uint32_t (&key)[kMaxExpertsPerLane],
                                              const float (&v)[kMaxExpertsPerLane], int per_lane, uint32_t taken) {
  LaneBest best;
#pragma unroll
  for (int i = 0; i < kMaxExpertsPerLane; ++i) {
    if (i < per_lane && !(taken >> i & 1u) && key[i] > best.key) best = LaneBest{key[i], i, v[i]};
  }
  return best;
}

// One warp routes a token from its logits v (load_logits): top-k of E logits, softmax over the k chosen (GPT-OSS
// renormalisation). Lane s < k writes slot s's id and weight to ids_out / weights_out (global memory in
// plan_kernel, shared memory in plan_scatter_kernel).
// Each slot is one warp argmax over the lanes' best candidates: the largest key (redux.sync max), then the lowest
// expert id holding it (redux.sync min) -- the lowest-id expert with the largest key is always its own lane's best,
// so this is exactly the sort's first remaining element. Only the winner's lane rescans its own experts. The slot
// loop is rolled (k is warp-uniform): the code stays small, which matters as much as the cycles (an unrolled
// selection once ran at instruction-fetch speed).
__device__ __forceinline__ void select_top_k(const PlanParams& p, int lane, const float (&v)[kMaxExpertsPerLane],
                                             int32_t* ids_out, float* weights_out) {
  const int per_lane = (p.num_experts + 31) >> 5;
  uint32_t key[kMaxExpertsPerLane];
#pragma unroll
  for (int i = 0; i < kMaxExpertsPerLane; ++i) key[i] = lane + 32 * i < p.num_experts ? order_key(v[i]) : 0u;
  uint32_t taken = 0;  // bit i: expert lane + 32 * i is chosen (a mask, not a cleared key[i]: key stays in registers)
  LaneBest best = lane_best(key, v, per_lane, taken);
  float slot_v = 0.f;  // lane s < k: the s-th chosen logit and its expert
  int slot_i = 0;
#pragma unroll 1
  for (int s = 0; s < p.top_k; ++s) {
    const uint32_t top = __reduce_max_sync(0xffffffffu, best.key);
    const uint32_t mine = best.key == top ? static_cast<uint32_t>(lane + 32 * best.slot) : 0xFFFFFFFFu;
    const int winner = static_cast<int>(__reduce_min_sync(0xffffffffu, mine));
    const float winner_v = __shfl_sync(0xffffffffu, best.value, winner & 31);
    if (lane == s) {
      slot_v = winner_v;
      slot_i = winner;
    }
    if ((winner & 31) == lane) {  // take it: the winner's lane finds its next best
      taken |= 1u << (winner >> 5);
      best = lane_best(key, v, per_lane, taken);
    }
  }
  // Softmax over the chosen logits, in float32 like torch.softmax: max (in slot order), exp(x - max), sum in slot
  // order, divide. Lane s computes its own slot's terms; the max and the sum go through lane 0's order.
  float mx = __shfl_sync(0xffffffffu, slot_v, 0);
#pragma unroll 1
  for (int s = 1; s < p.top_k; ++s) mx = fmaxf(mx, __shfl_sync(0xffffffffu, slot_v, s));
  const float term = expf(__fsub_rn(slot_v, mx));
  float sum = 0.f;
#pragma unroll 1
  for (int s = 0; s < p.top_k; ++s) sum = __fadd_rn(sum, __shfl_sync(0xffffffffu, term, s));
  if (lane < p.top_k) {
    ids_out[lane] = slot_i;
    weights_out[lane] = __fdiv_rn(term, sum);
  }
}

template <class LogitT>
__device__ void route_token(const PlanParams& p, int t, int lane, int32_t* ids_out, float* weights_out) {
  float v[kMaxExpertsPerLane];
  load_logits<LogitT>(p, t, lane, v);
  select_top_k(p, lane, v, ids_out, weights_out);
}

// Token t's precomputed ids -> local ids and weights in ids_out / weights_out (error_flag may be null: not reported).
template <class IdT, class WeightT>
__device__ void copy_token(const PlanParams& p, int t, int lane, int32_t* ids_out, float* weights_out,
                           int32_t* error_flag) {
  for (int s = lane; s < p.top_k; s += 32) {
    const int64_t j = static_cast<int64_t>(t) * p.top_k + s;
    const int64_t global = static_cast<int64_t>(static_cast<const IdT*>(p.ids_in)[j]);
    float w = to_float(static_cast<const WeightT*>(p.weights_in)[j]);
    if ((global < 0 || global >= p.id_limit) && error_flag) *error_flag = 1;  // every writer stores the same value
    int64_t local = global - p.id_base;
    if (local < 0 || local >= p.num_experts) {
      if (p.skip_foreign) {
        local = kForeignExpert;
        w = 0.f;
      } else {
        local = local < 0 ? 0 : p.num_experts - 1;
      }
    }
    ids_out[s] = static_cast<int32_t>(local);
    weights_out[s] = w;
  }
}

// Exclusive scan of one int per thread over the CTA (kPlanThreads threads); returns the total in *total.
__device__ __forceinline__ int block_exclusive_scan(int value, int* warp_sums, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int incl = value;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int up = __shfl_up_sync(0xffffffffu, incl, offset);
    if (lane >= offset) incl += up;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = lane < kPlanWarps ? warp_sums[lane] : 0;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int up = __shfl_up_sync(0xffffffffu, w, offset);
      if (lane >= offset) w += up;
    }
    if (lane < kPlanWarps) warp_sums[lane] = w;  // inclusive
    if (lane == kPlanWarps - 1) *total = w;
  }
  __syncthreads();
  const int before = warp == 0 ? 0 : warp_sums[warp - 1];
  return before + incl - value;
}

template <bool kFromLogits, class InT, class WeightT>
__global__ void __launch_bounds__(kPlanThreads, 1) plan_kernel(const PlanParams p) {
  __shared__ int32_t warp_hist[kPlanWarps][kMaxExperts];
  __shared__ int32_t running[kMaxExperts];
  __shared__ int32_t scan_tmp[32];
  __shared__ int32_t scan_total;
  __shared__ bool is_last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int num_e = p.num_experts, k = p.top_k;
  const int t0 = blockIdx.x * kTokensPerChunk;
  const int t1 = min(t0 + kTokensPerChunk, p.num_tokens);

  // 1. Route (or copy) this chunk's tokens.
  for (int t = t0 + warp; t < t1; t += kPlanWarps) {
    if constexpr (kFromLogits) {
      route_token<InT>(p, t, lane, p.ids + t * k, p.weights + t * k);
    } else {
      copy_token<InT, WeightT>(p, t, lane, p.ids + t * k, p.weights + t * k, p.error_flag);
    }
  }
  for (int i = tid; i < kPlanWarps * kMaxExperts; i += kPlanThreads) (&warp_hist[0][0])[i] = 0;
  for (int e = tid; e < num_e; e += kPlanThreads) running[e] = 0;
  __syncthreads();  // also orders this CTA's global writes of ids before the reads below

  // 2. Stable ranks inside (chunk, expert), kPlanThreads pairs per step in ascending j.
  const uint32_t lanes_below = (1u << lane) - 1u;
  for (int base = t0 * k; base < t1 * k; base += kPlanThreads) {
    const int j = base + tid;
    const bool active = j < t1 * k;
    const int e = active ? p.ids[j] : kForeignExpert;  // a foreign pair is ranked like an inactive lane: not at all
    const uint32_t peers = __match_any_sync(0xffffffffu, e);
    const int rank_in_warp = __popc(peers & lanes_below);
    if (e >= 0 && rank_in_warp == 0) warp_hist[warp][e] = __popc(peers);
    __syncthreads();
    for (int x = tid; x < num_e; x += kPlanThreads) {
      int run = running[x];
      for (int w = 0; w < kPlanWarps; ++w) {
        const int c = warp_hist[w][x];
        warp_hist[w][x] = run;
        run += c;
      }
      running[x] = run;
    }
    __syncthreads();
    if (active) p.rank[j] = e >= 0 ? warp_hist[warp][e] + rank_in_warp : -1;
    __syncthreads();
    for (int x = tid; x < num_e; x += kPlanThreads)
      for (int w = 0; w < kPlanWarps; ++w) warp_hist[w][x] = 0;
    __syncthreads();
  }
  for (int x = tid; x < num_e; x += kPlanThreads) p.chunk_base[blockIdx.x * num_e + x] = running[x];

  // 3. The last CTA: chunk prefixes, padded expert starts, expert_of_tile.
  __threadfence();
  __syncthreads();
  if (tid == 0) is_last = atomicAdd(p.done, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  int padded = 0;
  if (tid < num_e) {
    int run = 0;
    for (int c = 0; c < p.num_chunks; ++c) {
      int32_t* slot = p.chunk_base + c * num_e + tid;
      const int v = __ldcg(slot);  // written by other CTAs: read past L1
      *slot = run;
      run += v;
    }
    p.counts[tid] = run;
    padded = (run + p.tile_m - 1) / p.tile_m * p.tile_m;
  }
  const int start = block_exclusive_scan(padded, scan_tmp, &scan_total);
  if (tid < num_e) {
    p.padded_start[tid] = start;
    running[tid] = start + padded;  // padded end
  }
  __syncthreads();
  // Tile i belongs to the first expert whose padded end exceeds its first row; trailing tiles to the last expert.
  for (int i = tid; i < p.num_tiles; i += kPlanThreads) {
    const int row = i * p.tile_m;
    int lo = 0, hi = num_e;  // first e in [0, E) with end[e] > row, E if none
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (running[mid] > row) hi = mid; else lo = mid + 1;
    }
    p.expert_of_tile[i] = min(lo, num_e - 1);
  }
  if (tid == 0) *p.done = 0u;
}

}  // namespace flashinfer_sm12x::moe
