// SPDX-License-Identifier: Apache-2.0
// MoE finalize (glue kernel K4): out[t, c] = sum over slots s = 0..k-1, in order, of
//   w[t, s] * (g2[e] * y[dest[t*k + s], c] + b2[e, c]),   e = ids[t*k + s],   c < H (the unpadded columns).
// float32 accumulation with correctly rounded multiplies and adds (no FMA contraction): the same arithmetic as the
// torch path (y.float() * g2, + b2.float(), * w, summed over slots), so the result is bit-identical. One CTA per
// token; no atomics, so the sum order is fixed (deterministic). y is read at dest directly: no permuted copy.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "flashinfer_sm12x/moe/routing.cuh"
#include "flashinfer_sm12x/quantize/block_scale.cuh"

namespace flashinfer_sm12x::moe {

constexpr int kFinalizeThreads = 256;

struct FinalizeParams {
  const __nv_bfloat16* y = nullptr;  // [bound, y_cols] GEMM2 output
  const int32_t* dest = nullptr;     // [T*k] row of pair j in y
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

// kVector: 8 columns per thread with 16-byte loads and stores (every row start and column count a multiple of 8
// elements, 16-byte aligned bases); the arithmetic per element is the same as the scalar path's.
template <class OutT, class BiasT, bool kVector>
__global__ void __launch_bounds__(kFinalizeThreads) finalize_kernel(const FinalizeParams p) {
  __shared__ int32_t s_row[kMaxTopK];
  __shared__ int32_t s_expert[kMaxTopK];
  __shared__ float s_weight[kMaxTopK];
  __shared__ float s_g2[kMaxTopK];
  const int t = blockIdx.x;
  if (threadIdx.x < p.top_k) {
    const int j = t * p.top_k + threadIdx.x;
    s_row[threadIdx.x] = p.dest[j];
    s_expert[threadIdx.x] = p.ids[j];
    s_weight[threadIdx.x] = p.weights[j];
    s_g2[threadIdx.x] = p.g2 ? p.g2[p.ids[j]] : 1.f;
  }
  __syncthreads();
  const BiasT* b2 = static_cast<const BiasT*>(p.b2);
  OutT* out = static_cast<OutT*>(p.out) + static_cast<int64_t>(t) * p.out_cols;
  if constexpr (kVector) {
    for (int c = threadIdx.x * 8; c < p.cols; c += kFinalizeThreads * 8) {
      float acc[8] = {};
      for (int s = 0; s < p.top_k; ++s) {
        float v[8];
        flashinfer_sm12x::quantize::load_as_float<__nv_bfloat16, 8>(p.y + static_cast<int64_t>(s_row[s]) * p.y_cols + c,
                                                                    v);
        float bias[8] = {};
        if (b2) flashinfer_sm12x::quantize::load_as_float<BiasT, 8>(b2 + static_cast<int64_t>(s_expert[s]) * p.b2_cols + c,
                                                                    bias);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          float x = v[i];
          if (p.g2) x = __fmul_rn(x, s_g2[s]);
          if (b2) x = __fadd_rn(x, bias[i]);
          acc[i] = __fadd_rn(acc[i], __fmul_rn(s_weight[s], x));
        }
      }
      store8<OutT>(out + c, acc);
    }
    return;
  }
  for (int c = threadIdx.x; c < p.cols; c += kFinalizeThreads) {
    float acc = 0.f;
    for (int s = 0; s < p.top_k; ++s) {
      float v = __bfloat162float(p.y[static_cast<int64_t>(s_row[s]) * p.y_cols + c]);
      if (p.g2) v = __fmul_rn(v, s_g2[s]);
      if (b2) v = __fadd_rn(v, to_float(b2[static_cast<int64_t>(s_expert[s]) * p.b2_cols + c]));
      acc = __fadd_rn(acc, __fmul_rn(s_weight[s], v));
    }
    out[c] = from_float<OutT>(acc);
  }
}

}  // namespace flashinfer_sm12x::moe
