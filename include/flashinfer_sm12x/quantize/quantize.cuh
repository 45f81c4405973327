// SPDX-License-Identifier: Apache-2.0
//
// MXFP4 / MXFP8 / NVFP4 quantizer kernels over a row-major [rows, K] input (bf16, fp16 or fp32).
//
// Work split: the input is a flat sequence of 8-element chunks over the OUTPUT columns (K, or K padded to the
// MXFP8 alignment); lane i of a warp takes chunk c, so every 16-byte load and every 4/8-byte store of a warp is
// contiguous, and the 4 (MX, block 32) or 2 (NVFP4, block 16) lanes of one block meet in a shuffle for its
// amax (block_scale.cuh's segment quantizers). Chunks past K (MXFP8 alignment padding) load zeros, which
// quantize to zero data and a zero scale, exactly the padding the reference writes. Blocks past the data
// write the zero padding of the scale matrix (rows past `rows`, columns past K / block), so the scale buffer
// needs no memset.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "flashinfer_sm12x/quantize/block_scale.cuh"

namespace flashinfer_sm12x::quantize {

enum class Format : int { kMxfp4 = 0, kMxfp8 = 1, kNvfp4 = 2 };

template <Format F>
struct FormatTraits;
template <>
struct FormatTraits<Format::kMxfp4> {
  static constexpr int kBlock = 32;
  static constexpr int kWordsPerChunk = 1;  // 8 e2m1 nibbles
};
template <>
struct FormatTraits<Format::kMxfp8> {
  static constexpr int kBlock = 32;
  static constexpr int kWordsPerChunk = 2;  // 8 e4m3 bytes
};
template <>
struct FormatTraits<Format::kNvfp4> {
  static constexpr int kBlock = 16;
  static constexpr int kWordsPerChunk = 1;
};

struct QuantizeParams {
  const void* input;           // [rows, k] row-major, 16-byte aligned
  void* output;                // [rows, k_out] elements (packed), 16-byte aligned
  uint8_t* sf;                 // sf_bytes(layout, rows, sf_cols) bytes, all written here
  const float* global_scale;   // NVFP4 only: 1 value, or one per row
  int64_t global_scale_count;  // 1 or rows
  uint32_t rows;
  uint32_t k;                 // input columns
  uint32_t chunks_per_row;    // k_out / 8
  uint32_t chunks;            // rows * chunks_per_row
  uint32_t sf_cols;           // k_out / block
  uint32_t sf_padded_rows;
  uint32_t sf_padded_cols;
  uint32_t padding_bytes;     // scale bytes outside [rows, sf_cols]
  uint32_t data_blocks;       // CTAs over the chunks; the rest write scale padding
  SfLayout layout;
  ScaleRecipe recipe;
};

inline constexpr int kThreads = 256;
inline constexpr int kChunksPerThread = 2;       // loads of both issued before either is converted
inline constexpr int kPaddingBytesPerThread = 8;

template <Format F, class T>
__global__ void __launch_bounds__(kThreads) quantize_kernel(const QuantizeParams p) {
  using Traits = FormatTraits<F>;
  constexpr int kChunksPerBlock = Traits::kBlock / 8;

  if (blockIdx.x >= p.data_blocks) {
    // Zero padding of the scale matrix: rows [rows, padded_rows) x [0, padded_cols), then rows [0, rows) x
    // columns [sf_cols, padded_cols).
    const uint32_t tail_cols = p.sf_padded_cols - p.sf_cols;
    const uint32_t below = (p.sf_padded_rows - p.rows) * p.sf_padded_cols;
    const uint32_t first = (blockIdx.x - p.data_blocks) * kThreads * kPaddingBytesPerThread + threadIdx.x;
#pragma unroll
    for (int j = 0; j < kPaddingBytesPerThread; ++j) {
      const uint32_t i = first + j * kThreads;
      if (i >= p.padding_bytes) break;
      uint32_t row, col;
      if (i < below) {
        row = p.rows + i / p.sf_padded_cols;
        col = i % p.sf_padded_cols;
      } else {
        row = (i - below) / tail_cols;
        col = p.sf_cols + (i - below) % tail_cols;
      }
      p.sf[sf_offset(p.layout, row, col, p.sf_cols)] = 0;
    }
    return;
  }

  const T* __restrict__ input = static_cast<const T*>(p.input);
  float v[kChunksPerThread][8];
  uint32_t chunk[kChunksPerThread], row[kChunksPerThread], col[kChunksPerThread];
#pragma unroll
  for (int u = 0; u < kChunksPerThread; ++u) {
    chunk[u] = (blockIdx.x * kChunksPerThread + u) * kThreads + threadIdx.x;
    row[u] = chunk[u] / p.chunks_per_row;
    col[u] = (chunk[u] - row[u] * p.chunks_per_row) * 8;
    if (chunk[u] < p.chunks && col[u] < p.k) {
      load_as_float<T, 8>(input + static_cast<size_t>(row[u]) * p.k + col[u], v[u]);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[u][i] = 0.0f;
    }
  }

  const bool block_leader = threadIdx.x % kChunksPerBlock == 0;
#pragma unroll
  for (int u = 0; u < kChunksPerThread; ++u) {
    uint32_t packed[Traits::kWordsPerChunk];
    uint32_t code;
    if constexpr (F == Format::kMxfp4) {
      code = mxfp4_quantize_segment<8>(v[u], p.recipe, packed);
    } else if constexpr (F == Format::kMxfp8) {
      code = mxfp8_quantize_segment<8>(v[u], p.recipe, packed);
    } else {
      const uint32_t gs_index = p.global_scale_count == 1 ? 0u : min(row[u], p.rows - 1);
      code = nvfp4_quantize_segment<8>(v[u], __ldg(p.global_scale + gs_index), packed);
    }
    if (chunk[u] >= p.chunks) continue;  // after the shuffles: every lane took part in them
    if constexpr (Traits::kWordsPerChunk == 1) {
      static_cast<uint32_t*>(p.output)[chunk[u]] = packed[0];
    } else {
      static_cast<uint2*>(p.output)[chunk[u]] = make_uint2(packed[0], packed[1]);
    }
    if (block_leader) p.sf[sf_offset(p.layout, row[u], col[u] / Traits::kBlock, p.sf_cols)] = static_cast<uint8_t>(code);
  }
}

// Fills the launch geometry of `p` (rows, k, chunks_per_row, sf_cols, layout already set) and launches.
template <Format F, class T>
cudaError_t launch_quantize(QuantizeParams p, cudaStream_t stream) {
  p.chunks = p.rows * p.chunks_per_row;
  p.sf_padded_rows = static_cast<uint32_t>(sf_padded_rows(p.layout, p.rows));
  p.sf_padded_cols = static_cast<uint32_t>(sf_padded_cols(p.layout, p.sf_cols));
  p.padding_bytes = p.sf_padded_rows * p.sf_padded_cols - p.rows * p.sf_cols;
  constexpr uint32_t kChunksPerCta = kThreads * kChunksPerThread;
  constexpr uint32_t kPaddingPerCta = kThreads * kPaddingBytesPerThread;
  p.data_blocks = (p.chunks + kChunksPerCta - 1) / kChunksPerCta;
  const uint32_t padding_blocks = (p.padding_bytes + kPaddingPerCta - 1) / kPaddingPerCta;
  const uint32_t grid = p.data_blocks + padding_blocks;
  if (grid == 0) return cudaSuccess;
  quantize_kernel<F, T><<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace flashinfer_sm12x::quantize
