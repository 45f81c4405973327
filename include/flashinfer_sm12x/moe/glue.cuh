// SPDX-License-Identifier: Apache-2.0
// MoE glue kernels around the two grouped GEMMs (see routing.cuh for K1 and finalize.cuh for K4):
//   K2 scatter: every (token, slot) pair's padded row dest[j], and the token's hidden row gathered into it,
//      quantized to MXFP4 / MXFP8 (E8M0 per 32, scales in the 128x4 layout over the padded rows); or, for
//      pre-quantized MXFP8 input, its bytes and scales copied. Padding rows (and the scale rows past `bound` up to
//      the 128-row tile) get zero data and zero scales, so every byte the GEMM may read is defined.
//   K3 activation: GEMM1's bf16 row -> optional per-expert global scale g1, fc1 bias, SwiGLU (GPT-OSS's clamped
//      variant or the plain one) over the gate/up pairs in the weights' layout -> the activation format.
// One CTA per row; each thread holds 8 consecutive elements, 4 adjacent lanes one 32-element scale block (the
// cooperative segment quantizers of quantize/block_scale.cuh). All arithmetic is float32 with correctly rounded
// operations in the torch path's order.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "flashinfer_sm12x/moe/activation.cuh"
#include "flashinfer_sm12x/moe/routing.cuh"
#include "flashinfer_sm12x/quantize/block_scale.cuh"

namespace flashinfer_sm12x::moe {

namespace q = flashinfer_sm12x::quantize;

enum class GateUpLayout : int { kInterleaved = 0, kGateFirst = 1, kUpFirst = 2 };

constexpr int kRowThreads = 128;
constexpr int kElems = kQuantElems;  // per thread; 4 lanes share a 32-element block

// Zero scale columns [cols/32, padded) of `row` (the 128x4 layout pads columns to a multiple of 4).
__device__ __forceinline__ void zero_sf_pad_cols(int64_t row, int64_t cols, uint8_t* sf) {
  const int64_t sf_cols = cols / 32, padded = (sf_cols + 3) / 4 * 4;
  for (int64_t kb = sf_cols + threadIdx.x; kb < padded; kb += kRowThreads) sf[q::sf_offset_128x4(row, kb, sf_cols)] = 0;
}

__device__ __forceinline__ void zero_sf_row(int64_t row, int64_t cols, uint8_t* sf) {
  const int64_t sf_cols = cols / 32, padded = (sf_cols + 3) / 4 * 4;
  for (int64_t kb = threadIdx.x; kb < padded; kb += kRowThreads) sf[q::sf_offset_128x4(row, kb, sf_cols)] = 0;
}

__device__ __forceinline__ void zero_bytes(uint8_t* p, int64_t n) {  // n % 16 == 0, p 16-byte aligned
  for (int64_t i = threadIdx.x * 16; i < n; i += kRowThreads * 16) *reinterpret_cast<uint4*>(p + i) = make_uint4(0, 0, 0, 0);
}

// ------------------------------------------------------------------------------------------------ K2 scatter
struct ScatterParams {
  const void* hidden = nullptr;      // gather: [T, hidden_cols] float/half/bf16; copy: e4m3 bytes [T, cols]
  const uint8_t* input_sf = nullptr; // copy: E8M0 scales of `hidden`, 128x4 over T rows or linear
  bool input_sf_swizzled = true;
  bool vector_loads = false;         // hidden rows 16-byte aligned (gather: and hidden_cols % 8 == 0)
  int num_tokens = 0, top_k = 0, num_experts = 0;
  int hidden_cols = 0;               // H (gather: columns past H are zero)
  int cols = 0;                      // Hp, a multiple of 32
  int tile_m = 0, bound = 0, sf_rows = 0;  // sf_rows = round_up(bound, 128)
  const int32_t* ids = nullptr;
  const int32_t* rank = nullptr;
  const int32_t* chunk_base = nullptr;
  const int32_t* counts = nullptr;
  const int32_t* padded_start = nullptr;
  const int32_t* expert_of_tile = nullptr;
  int32_t* dest = nullptr;           // [T*k]
  uint8_t* out = nullptr;            // [bound, row_bytes(cols)]
  uint8_t* out_sf = nullptr;         // 128x4 over sf_rows rows
};

// Blocks [0, T*k): pair j. Blocks [T*k, T*k + sf_rows): row r, zeroed when it is a padding row.
template <ActFormat F, bool kCopy, class InT>
__global__ void __launch_bounds__(kRowThreads) scatter_kernel(const ScatterParams p) {
  const int64_t pairs = static_cast<int64_t>(p.num_tokens) * p.top_k;
  const int64_t b = blockIdx.x;
  const int64_t rb = row_bytes<F>(p.cols);
  if (b >= pairs) {
    const int64_t r = b - pairs;
    if (r < p.bound) {
      const int e = p.expert_of_tile[r / p.tile_m];
      if (r - p.padded_start[e] < p.counts[e]) return;  // a routed row: its pair's block writes it
      zero_bytes(p.out + r * rb, rb);
    }
    zero_sf_row(r, p.cols, p.out_sf);
    return;
  }
  const int j = static_cast<int>(b);
  const int t = j / p.top_k;
  const int e = p.ids[j];
  const int64_t row = p.padded_start[e] + p.chunk_base[(t / kTokensPerChunk) * p.num_experts + e] + p.rank[j];
  if (threadIdx.x == 0) p.dest[j] = static_cast<int32_t>(row);
  zero_sf_pad_cols(row, p.cols, p.out_sf);
  if constexpr (kCopy) {
    const uint8_t* src = static_cast<const uint8_t*>(p.hidden) + static_cast<int64_t>(t) * p.cols;
    uint8_t* dst = p.out + row * p.cols;
    if (p.vector_loads) {
      for (int64_t i = threadIdx.x * 16; i < p.cols; i += kRowThreads * 16)
        *reinterpret_cast<uint4*>(dst + i) = *reinterpret_cast<const uint4*>(src + i);
    } else {  // a caller's tensor that is not 16-byte aligned
      for (int64_t i = threadIdx.x; i < p.cols; i += kRowThreads) dst[i] = src[i];
    }
    const int sf_cols = p.cols / 32;
    for (int kb = threadIdx.x; kb < sf_cols; kb += kRowThreads) {
      const int64_t from = p.input_sf_swizzled ? q::sf_offset_128x4(t, kb, sf_cols) : int64_t(t) * sf_cols + kb;
      p.out_sf[q::sf_offset_128x4(row, kb, sf_cols)] = p.input_sf[from];
    }
  } else {
    const InT* src = static_cast<const InT*>(p.hidden) + static_cast<int64_t>(t) * p.hidden_cols;
    const int groups = p.cols / kElems;
    for (int base = 0; base < groups; base += kRowThreads) {  // uniform trip count: the warp stays converged
      const int g = base + threadIdx.x;
      const int col = g * kElems;
      const bool active = g < groups;
      float v[kElems];
      if (active && p.vector_loads && col + kElems <= p.hidden_cols) {
        q::load_as_float<InT, kElems>(src + col, v);
      } else {
#pragma unroll
        for (int i = 0; i < kElems; ++i) v[i] = active && col + i < p.hidden_cols ? to_float(src[col + i]) : 0.f;
      }
      quantize_store<F>(v, active, row, col, p.cols, p.out, p.out_sf);
    }
  }
}

// -------------------------------------------------------------------------------------------- K3 activation
struct ActivationParams {
  const __nv_bfloat16* h = nullptr;  // [bound, 2 * inter] GEMM1 output
  const int32_t* expert_of_tile = nullptr;
  int tile_m = 0, bound = 0, sf_rows = 0;
  int inter = 0;                     // Ip (output columns), a multiple of 32
  GateUpLayout layout = GateUpLayout::kInterleaved;
  SwigluArgs act;                    // g1, swiglu_oai or plain swiglu, alpha / beta / limit (moe/activation.cuh)
  const void* b1 = nullptr;          // [E, 2 * inter] or null
  uint8_t* out = nullptr;            // [bound, row_bytes(inter)]
  uint8_t* out_sf = nullptr;         // 128x4 over sf_rows rows
};

template <ActFormat F, class BiasT>
__global__ void __launch_bounds__(kRowThreads) activation_kernel(const ActivationParams p) {
  const int64_t r = blockIdx.x;
  if (r >= p.bound) {
    zero_sf_row(r, p.inter, p.out_sf);
    return;
  }
  const int e = p.expert_of_tile[r / p.tile_m];
  const int64_t width = 2 * static_cast<int64_t>(p.inter);
  const __nv_bfloat16* hrow = p.h + r * width;
  const BiasT* brow = p.b1 ? static_cast<const BiasT*>(p.b1) + e * width : nullptr;
  const ExpertSwiglu act = ExpertSwiglu::of(p.act, e);
  const int64_t gate_off = p.layout == GateUpLayout::kUpFirst ? p.inter : 0;
  const int64_t up_off = p.layout == GateUpLayout::kUpFirst ? 0 : p.inter;
  zero_sf_pad_cols(r, p.inter, p.out_sf);
  const int groups = p.inter / kElems;
  for (int base = 0; base < groups; base += kRowThreads) {
    const int g = base + threadIdx.x;
    const bool active = g < groups;
    const int col = active ? g * kElems : 0;
    float gate[kElems], up[kElems];
    float bg[kElems] = {}, bu[kElems] = {};
    if (p.layout == GateUpLayout::kInterleaved) {
      float v[2 * kElems];
      q::load_as_float<__nv_bfloat16, 2 * kElems>(hrow + 2 * col, v);
#pragma unroll
      for (int i = 0; i < kElems; ++i) {
        gate[i] = v[2 * i];
        up[i] = v[2 * i + 1];
      }
      if (brow) {
        float bv[2 * kElems];
        q::load_as_float<BiasT, 2 * kElems>(brow + 2 * col, bv);
#pragma unroll
        for (int i = 0; i < kElems; ++i) {
          bg[i] = bv[2 * i];
          bu[i] = bv[2 * i + 1];
        }
      }
    } else {
      q::load_as_float<__nv_bfloat16, kElems>(hrow + gate_off + col, gate);
      q::load_as_float<__nv_bfloat16, kElems>(hrow + up_off + col, up);
      if (brow) {
        q::load_as_float<BiasT, kElems>(brow + gate_off + col, bg);
        q::load_as_float<BiasT, kElems>(brow + up_off + col, bu);
      }
    }
    float a[kElems];
#pragma unroll
    for (int i = 0; i < kElems; ++i) a[i] = active ? act(gate[i], up[i], brow != nullptr, bg[i], bu[i]) : 0.f;
    quantize_store<F>(a, active, r, col, p.inter, p.out, p.out_sf);
  }
}

}  // namespace flashinfer_sm12x::moe
