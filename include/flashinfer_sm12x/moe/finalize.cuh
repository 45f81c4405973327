// SPDX-License-Identifier: Apache-2.0
// MoE finalize (glue kernel K4): out[t, c] = sum over slots s = 0..k-1, in order, of
//   w[t, s] * (g2[e] * y[dest[t*k + s], c] + b2[e, c]),   e = ids[t*k + s],   c < H (the unpadded columns),
// leaving out the slots of foreign pairs (dest = -1: another rank's expert), so a token with none of this rank's
// experts gets a zero row.
// float32 accumulation with correctly rounded multiplies and adds (no FMA contraction): the same arithmetic as the
// torch path (y.float() * g2, + b2.float(), * w, summed over slots), so the result is bit-identical. A thread owns
// one column group of one token and sums its k slots in order: no atomics, the sum order is fixed (deterministic).
// y is read at dest directly: no permuted copy.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "flashinfer_sm12x/moe/routing.cuh"
#include "flashinfer_sm12x/quantize/block_scale.cuh"

namespace flashinfer_sm12x::moe {

namespace q = flashinfer_sm12x::quantize;

constexpr int kFinalizeThreads = 128;

struct FinalizeParams {
  const __nv_bfloat16* y = nullptr;  // [bound, y_cols] GEMM2 output
  const int32_t* dest = nullptr;     // [T*k] row of pair j in y; -1: a foreign pair, left out
  const int32_t* ids = nullptr;      // [T*k] local expert
  const float* weights = nullptr;    // [T*k]
  const float* g2 = nullptr;         // [E] or null
  const void* b2 = nullptr;          // [E, b2_cols] or null
  void* out = nullptr;               // [T, out_cols]
  int top_k = 0;
  int cols = 0;       // H: columns computed
  int y_cols = 0;     // Hp
  int b2_cols = 0;
  int out_cols = 0;   // row stride of out (>= cols)
};

template <class T>
__device__ __forceinline__ T from_float(float v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

template <class OutT>
__device__ __forceinline__ void store8(OutT* dst, const float (&v)[8]) {
  if constexpr (sizeof(OutT) == 4) {
    reinterpret_cast<float4*>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    OutT packed[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) packed[i] = from_float<OutT>(v[i]);
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(packed);
  }
}

// Slots whose loads are issued together, before any of them is summed (GPT-OSS's top-4: all of them): a token's
// k rows cost one memory round trip, not k.
constexpr int kFinalizeSlotBatch = 4;

// Columns per thread: 8 with 16-byte loads and stores (kVector: every row start and column count a multiple of 8
// elements, 16-byte aligned bases), else 1; the arithmetic per element is the same.
template <bool kVector>
constexpr int kFinalizeCols = kVector ? 8 : 1;

// The grid: x = token, y = a chunk of kFinalizeThreads * kFinalizeCols columns, so that one token (decode) still
// spreads over several CTAs and every thread has exactly one column group.
template <bool kVector>
inline dim3 finalize_grid(int64_t tokens, int64_t cols) {
  constexpr int64_t kChunk = int64_t(kFinalizeThreads) * kFinalizeCols<kVector>;
  return dim3(static_cast<unsigned>(tokens), static_cast<unsigned>((cols + kChunk - 1) / kChunk));
}

template <class OutT, class BiasT, bool kVector>
__global__ void __launch_bounds__(kFinalizeThreads) finalize_kernel(const FinalizeParams p) {
  constexpr int kCols = kFinalizeCols<kVector>;
  constexpr int kB = kFinalizeSlotBatch;
  const int t = blockIdx.x;
  const int c = (blockIdx.y * kFinalizeThreads + threadIdx.x) * kCols;
  if (c >= p.cols) return;
  const int64_t j0 = static_cast<int64_t>(t) * p.top_k;
  const BiasT* b2 = static_cast<const BiasT*>(p.b2);
  float acc[kCols] = {};
  for (int s0 = 0; s0 < p.top_k; s0 += kB) {
    // The batch's pair records, then every load of the batch, then the sums in slot order.
    int64_t row[kB];
    int expert[kB];
    float weight[kB];
#pragma unroll
    for (int b = 0; b < kB; ++b) {
      const bool active = s0 + b < p.top_k;
      row[b] = active ? __ldg(p.dest + j0 + s0 + b) : -1;
      const bool routed = row[b] >= 0;
      expert[b] = routed ? __ldg(p.ids + j0 + s0 + b) : 0;
      weight[b] = routed ? __ldg(p.weights + j0 + s0 + b) : 0.f;
    }
    float g2[kB];
    q::RawVec<__nv_bfloat16, 8> y_raw[kVector ? kB : 1];
    q::RawVec<BiasT, 8> b_raw[kVector ? kB : 1];
    float y_scalar[kB], b_scalar[kB];
#pragma unroll
    for (int b = 0; b < kB; ++b) {
      if (row[b] < 0) continue;  // past top_k, or foreign: nothing to load (uniform over the CTA: one token)
      g2[b] = p.g2 ? __ldg(p.g2 + expert[b]) : 1.f;
      const __nv_bfloat16* y_at = p.y + row[b] * p.y_cols + c;
      const BiasT* b_at = b2 ? b2 + static_cast<int64_t>(expert[b]) * p.b2_cols + c : nullptr;
      if constexpr (kVector) {
        q::load_raw(y_at, y_raw[b]);
        if (b2) q::load_raw(b_at, b_raw[b]);
      } else {
        y_scalar[b] = __bfloat162float(*y_at);
        b_scalar[b] = b2 ? to_float(*b_at) : 0.f;
      }
    }
#pragma unroll
    for (int b = 0; b < kB; ++b) {
      if (s0 + b >= p.top_k) break;
      if (row[b] < 0) continue;  // a foreign pair: not part of this rank's sum
      float v[kCols], bias[kCols] = {};
      if constexpr (kVector) {
        q::widen_raw(y_raw[b], v);
        if (b2) q::widen_raw(b_raw[b], bias);
      } else {
        v[0] = y_scalar[b];
        bias[0] = b_scalar[b];
      }
#pragma unroll
      for (int i = 0; i < kCols; ++i) {
        float x = v[i];
        if (p.g2) x = __fmul_rn(x, g2[b]);
        if (b2) x = __fadd_rn(x, bias[i]);
        acc[i] = __fadd_rn(acc[i], __fmul_rn(weight[b], x));
      }
    }
  }
  OutT* out = static_cast<OutT*>(p.out) + static_cast<int64_t>(t) * p.out_cols + c;
  if constexpr (kVector) {
    store8<OutT>(out, acc);
  } else {
    *out = from_float<OutT>(acc[0]);
  }
}

}  // namespace flashinfer_sm12x::moe
