// SPDX-License-Identifier: Apache-2.0
// MoE glue kernels around the two grouped GEMMs (see routing.cuh for K1, plan_scatter.cuh for K1 + K2 fused at
// decode sizes, and finalize.cuh for K4):
//   K2 scatter: every (token, slot) pair's padded row dest[j], and the token's hidden row gathered into it,
//      quantized to MXFP4 / MXFP8 (E8M0 per 32, scales in the 128x4 layout over the padded rows); or, for
//      pre-quantized MXFP8 input, its bytes and scales copied.
//   K3 activation: GEMM1's bf16 row -> optional per-expert global scale g1, fc1 bias, SwiGLU (GPT-OSS's clamped
//      variant or the plain one) over the gate/up pairs in the weights' layout -> the activation format.
// Both grids are one CTA per routed pair (T*k; at small T a few more CTAs that only zero scales, see
// row_kernel_ctas): padding rows are not computed. What the GEMMs read there stays defined and finite:
//   - data: the buffers are zero-filled when allocated and only ever hold zeros or bytes a quantizer / the copy
//     wrote for some routed row, so a padding row's bytes are defined. A padding row's GEMM output is never read
//     (K3 reads h at dest rows only, finalize reads y at dest rows only) and a row's GEMM output depends on that
//     row of A alone, so those bytes need not be rewritten each forward;
//   - scales: every scale byte of a non-routed row in [0, sf_rows) is set to zero (E8M0 2^-127) by the kernel
//     that writes that scale buffer, spread over the grid's warps (zero_padding_scales: one 16-byte store per
//     lane covers 4 rows x 4 columns of the 128x4 layout). A row routed in an earlier forward may be padding now,
//     and a quantizer writes 0xFF (NaN) for a NaN/inf block, so stale scales are not left in place;
//   - the 128x4 layout's padding columns [cols/32, round_up(cols/32, 4)) of every routed row are zeroed by the
//     CTA that writes the row (an E8M0 0xFF there is NaN, and NaN * 0 poisons the GEMM's sum over K).
// A routed row's CTA writes its data and scale bytes; the zeroing stores touch non-routed rows only, so the two
// never write the same byte. Each thread holds 8 consecutive elements, 4 adjacent lanes one 32-element scale block
// (the cooperative segment quantizers of quantize/block_scale.cuh). All arithmetic is float32 with correctly
// rounded operations in the torch path's order.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "flashinfer_sm12x/common/swiglu.cuh"
#include "flashinfer_sm12x/moe/routing.cuh"
#include "flashinfer_sm12x/quantize/block_scale.cuh"

namespace flashinfer_sm12x::moe {

namespace q = flashinfer_sm12x::quantize;

enum class GateUpLayout : int { kInterleaved = 0, kGateFirst = 1, kUpFirst = 2 };

constexpr int kRowThreads = 128;
constexpr int kElems = kQuantElems;  // per thread; 4 lanes share a 32-element block

// Zero scale columns [cols/32, padded) of `row` (the 128x4 layout pads columns to a multiple of 4).
template <int kThreads>
__device__ __forceinline__ void zero_sf_pad_cols(int64_t row, int64_t cols, uint8_t* sf) {
  const int64_t sf_cols = cols / 32, padded = (sf_cols + 3) / 4 * 4;
  for (int64_t kb = sf_cols + threadIdx.x; kb < padded; kb += kThreads) sf[q::sf_offset_128x4(row, kb, sf_cols)] = 0;
}

// Whether a row in [0, bound) holds a routed pair: the tile's expert e, and row - padded_start[e] < counts[e]
// (rows past the last expert's padded end belong to the last expert and fail the test).
struct RoutedRows {
  const int32_t* expert_of_tile = nullptr;
  const int32_t* padded_start = nullptr;
  const int32_t* counts = nullptr;
  int tile_m = 0, bound = 0;
  __device__ __forceinline__ bool operator()(int64_t row) const {
    if (row >= bound) return false;
    const int e = expert_of_tile[static_cast<int>(row) / tile_m];  // row < bound: a 32-bit division (inline)
    return row - padded_start[e] < counts[e];
  }
};

// Zero every scale byte of the rows in [0, sf_rows) that `is_routed` rejects (sf_rows a multiple of 128, `sf` 16-byte
// aligned). The 128x4 layout stores, for 128 rows and 4 scale columns, 512 contiguous bytes in which lane l's 16
// bytes are rows l, l+32, l+64, l+96 (4 bytes each): one unit of work is such a 512-byte tile for one warp.
// `warp_id` / `num_warps`: this warp's index among the warps sharing the work (grid-stride). All lanes call.
template <class IsRouted>
__device__ __forceinline__ void zero_padding_scales(int64_t sf_rows, int64_t cols, uint8_t* sf, int64_t warp_id,
                                                    int64_t num_warps, const IsRouted& is_routed) {
  const int lane = threadIdx.x & 31;
  const int64_t col_tiles = (cols / 32 + 3) / 4;
  const int64_t units = sf_rows / 128 * col_tiles;
  for (int64_t u = warp_id; u < units; u += num_warps) {
    // units < 2^31 (sf_rows and cols are ints): a 32-bit division, inline, not the 64-bit division's subroutine.
    const int64_t first_row = int64_t(static_cast<int>(u) / static_cast<int>(col_tiles)) * 128 + lane;
    uint8_t* at = sf + u * 512 + lane * 16;
    bool routed[4];
    bool any = false;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      routed[i] = is_routed(first_row + 32 * i);
      any |= routed[i];
    }
    if (!any) {
      *reinterpret_cast<uint4*>(at) = make_uint4(0, 0, 0, 0);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (!routed[i]) *reinterpret_cast<uint32_t*>(at + 4 * i) = 0u;
    }
  }
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
  int32_t* dest = nullptr;           // [T*k] (-1 for a foreign pair)
  uint8_t* out = nullptr;            // [bound, row_bytes(cols)]
  uint8_t* out_sf = nullptr;         // 128x4 over sf_rows rows
};

// Groups (8 elements) per thread whose loads are issued together before any of them is stored: several 16-byte
// loads in flight per thread (a store in between would order the next load after it: the pointers may alias).
constexpr int kLoadBatch = 4;

// Token t's hidden row -> its padded row (gathered and quantized, or copied), with the row's 128x4 padding columns
// zeroed; returns the row. `row_of()` gives the row: it is called once, after the first loads of the hidden row are
// issued, so the loads overlap the caller's index lookups. A negative row (a foreign pair, routing.cuh's
// kForeignExpert) writes nothing and is returned as is. Shared by scatter_kernel and plan_scatter_kernel
// (kThreads threads, all of them call).
template <ActFormat F, bool kCopy, class InT, int kThreads, class RowOf>
__device__ __forceinline__ int64_t scatter_row(const ScatterParams& p, int t, const RowOf& row_of) {
  int64_t row = 0;
  if constexpr (kCopy) {
    const uint8_t* src = static_cast<const uint8_t*>(p.hidden) + static_cast<int64_t>(t) * p.cols;
    // One call site of row_of() (it may be a whole plan, inlined): the first batch is loaded before it, the rest
    // after. A caller's tensor that is not 16-byte aligned is copied bytewise.
    const int vecs = p.vector_loads ? p.cols / 16 : 0;
    uint4 raw[kLoadBatch];
    for (int base = 0; base == 0 || base < vecs; base += kThreads * kLoadBatch) {
#pragma unroll
      for (int b = 0; b < kLoadBatch; ++b) {
        const int i = base + b * kThreads + threadIdx.x;
        raw[b] = i < vecs ? __ldg(reinterpret_cast<const uint4*>(src) + i) : make_uint4(0, 0, 0, 0);
      }
      if (base == 0) row = row_of();
      if (row < 0) continue;  // a foreign pair (expert parallelism): no row to write (block-uniform)
      uint4* dst = reinterpret_cast<uint4*>(p.out + row * p.cols);
#pragma unroll
      for (int b = 0; b < kLoadBatch; ++b) {
        const int i = base + b * kThreads + threadIdx.x;
        if (i < vecs) dst[i] = raw[b];
      }
    }
    if (row < 0) return row;
    if (!p.vector_loads) {
      uint8_t* dst = p.out + row * p.cols;
      for (int64_t i = threadIdx.x; i < p.cols; i += kThreads) dst[i] = src[i];
    }
    const int sf_cols = p.cols / 32;
    for (int kb = threadIdx.x; kb < sf_cols; kb += kThreads) {
      const int64_t from = p.input_sf_swizzled ? q::sf_offset_128x4(t, kb, sf_cols) : int64_t(t) * sf_cols + kb;
      p.out_sf[q::sf_offset_128x4(row, kb, sf_cols)] = p.input_sf[from];
    }
  } else {
    const InT* src = static_cast<const InT*>(p.hidden) + static_cast<int64_t>(t) * p.hidden_cols;
    const int groups = p.cols / kElems;
    for (int base = 0; base < groups; base += kThreads * kLoadBatch) {  // uniform trip counts: warps stay converged
      // The batch's 16-byte loads, kept raw until after row_of(): the caller's lookups run while they are in flight.
      q::RawVec<InT, kElems> raw[kLoadBatch];
      unsigned vector = 0;  // bit b: group b was loaded as vectors (a bit mask, not a bool array: no local memory)
#pragma unroll
      for (int b = 0; b < kLoadBatch; ++b) {
        const int g = base + b * kThreads + threadIdx.x;
        const int col = g * kElems;
        if (g < groups && p.vector_loads && col + kElems <= p.hidden_cols) {
          q::load_raw(src + col, raw[b]);
          vector |= 1u << b;
        }
      }
      if (base == 0) row = row_of();
      if (row < 0) break;  // a foreign pair: no row to write (block-uniform)
#pragma unroll
      for (int b = 0; b < kLoadBatch; ++b) {
        if (base + b * kThreads >= groups) break;  // block-uniform: no thread of the block has a group here
        const int g = base + b * kThreads + threadIdx.x;
        const int col = g * kElems;
        const bool active = g < groups;
        float v[kElems];
        if (vector >> b & 1u) {
          q::widen_raw(raw[b], v);
        } else {  // the row's tail past H, or a caller's tensor that is not 16-byte aligned
#pragma unroll
          for (int i = 0; i < kElems; ++i) v[i] = active && col + i < p.hidden_cols ? to_float(src[col + i]) : 0.f;
        }
        quantize_store<F>(v, active, row, col, p.cols, p.out, p.out_sf);
      }
    }
  }
  if (row >= 0) zero_sf_pad_cols<kThreads>(row, p.cols, p.out_sf);
  return row;
}

// The grid of scatter_kernel / activation_kernel: one CTA per pair, and at least enough CTAs that no warp zeroes
// more than one 512-byte scale tile (small T: each tile costs dependent table lookups before its store).
inline int64_t row_kernel_ctas(int64_t pairs, int64_t sf_rows, int64_t cols) {
  constexpr int64_t kWarps = kRowThreads / 32;
  const int64_t tiles = sf_rows / 128 * ((cols / 32 + 3) / 4);
  const int64_t zeroing = (tiles + kWarps - 1) / kWarps;
  return pairs > zeroing ? pairs : zeroing;
}

// Block j < T*k: pair j's row; then every CTA's warps share the zeroing of non-routed rows' scales.
template <ActFormat F, bool kCopy, class InT>
__global__ void __launch_bounds__(kRowThreads) scatter_kernel(const ScatterParams p) {
  const int j = blockIdx.x;
  if (j < p.num_tokens * p.top_k) {
    const int t = j / p.top_k;
    // Captures by value: no address of a kernel parameter or local is taken (that would put them in local memory).
    const int32_t *ids = p.ids, *padded_start = p.padded_start, *rank = p.rank;
    const int32_t* chunk_base = p.chunk_base + (t / kTokensPerChunk) * p.num_experts;
    const int64_t row = scatter_row<F, kCopy, InT, kRowThreads>(p, t, [=] {
      // A foreign pair (e = kForeignExpert < 0) reads expert 0's entries, and its row becomes -1 (all bits set by
      // the sign of e): branch-free, so the row's loads stay in flight across this lookup.
      const int e = ids[j];
      const int known = max(e, 0);
      return (int64_t(padded_start[known]) + chunk_base[known] + rank[j]) | (int64_t(e) >> 63);
    });
    if (threadIdx.x == 0) p.dest[j] = static_cast<int32_t>(row);
  }
  constexpr int kWarps = kRowThreads / 32;
  const RoutedRows routed{p.expert_of_tile, p.padded_start, p.counts, p.tile_m, p.bound};
  zero_padding_scales(p.sf_rows, p.cols, p.out_sf, int64_t(blockIdx.x) * kWarps + threadIdx.x / 32,
                      int64_t(gridDim.x) * kWarps, routed);
}

// -------------------------------------------------------------------------------------------- K3 activation
struct ActivationParams {
  const __nv_bfloat16* h = nullptr;  // [bound, 2 * inter] GEMM1 output
  const int32_t* ids = nullptr;      // [T*k] expert of pair j
  const int32_t* dest = nullptr;     // [T*k] row of pair j (-1: a foreign pair, skipped)
  const int32_t* expert_of_tile = nullptr;
  const int32_t* padded_start = nullptr;
  const int32_t* counts = nullptr;
  int pairs = 0;                     // T*k
  int tile_m = 0, bound = 0, sf_rows = 0;
  int inter = 0;                     // Ip (output columns), a multiple of 32
  GateUpLayout layout = GateUpLayout::kInterleaved;
  SwigluArgs act;                    // g1, swiglu_oai or plain swiglu, alpha / beta / limit (common/swiglu.cuh)
  const void* b1 = nullptr;          // [E, 2 * inter] or null
  uint8_t* out = nullptr;            // [bound, row_bytes(inter)]
  uint8_t* out_sf = nullptr;         // 128x4 over sf_rows rows
};

// Groups per thread whose h and bias loads are issued together (I = 2880 -> 368 groups: one batch of 128 threads).
constexpr int kActBatch = 3;

// Pair blockIdx.x's row of the activation (all threads of the CTA call).
template <ActFormat F, class BiasT>
__device__ __forceinline__ void activation_row(const ActivationParams& p) {
  const int64_t r = p.dest[blockIdx.x];
  if (r < 0) return;  // a foreign pair: no row (block-uniform)
  const int e = p.ids[blockIdx.x];
  const int64_t width = 2 * static_cast<int64_t>(p.inter);
  const __nv_bfloat16* hrow = p.h + r * width;
  const BiasT* brow = p.b1 ? static_cast<const BiasT*>(p.b1) + e * width : nullptr;
  const ExpertSwiglu act = ExpertSwiglu::of(p.act, e);
  const bool interleaved = p.layout == GateUpLayout::kInterleaved;
  const int64_t gate_off = p.layout == GateUpLayout::kUpFirst ? p.inter : 0;
  const int64_t up_off = p.layout == GateUpLayout::kUpFirst ? 0 : p.inter;
  const int groups = p.inter / kElems;
  for (int base = 0; base < groups; base += kRowThreads * kActBatch) {  // uniform trip counts
    // Every load of the batch first: a group's 16 h values (and bias) are two 8-element halves, at 2*col and
    // 2*col + 8 when gate/up interleave, else at gate_off + col and up_off + col. Idle threads read column 0.
    q::RawVec<__nv_bfloat16, kElems> h_raw[kActBatch][2];
    q::RawVec<BiasT, kElems> b_raw[kActBatch][2];
#pragma unroll
    for (int b = 0; b < kActBatch; ++b) {
      const int g = base + b * kRowThreads + threadIdx.x;
      const int64_t col = g < groups ? int64_t(g) * kElems : 0;
      const int64_t half0 = interleaved ? 2 * col : gate_off + col;
      const int64_t half1 = interleaved ? 2 * col + kElems : up_off + col;
      q::load_raw(hrow + half0, h_raw[b][0]);
      q::load_raw(hrow + half1, h_raw[b][1]);
      if (brow) {
        q::load_raw(brow + half0, b_raw[b][0]);
        q::load_raw(brow + half1, b_raw[b][1]);
      }
    }
#pragma unroll
    for (int b = 0; b < kActBatch; ++b) {
      if (base + b * kRowThreads >= groups) break;  // block-uniform: no thread of the block has a group here
      const int g = base + b * kRowThreads + threadIdx.x;
      const bool active = g < groups;
      const int col = active ? g * kElems : 0;
      float hv[2 * kElems], bv[2 * kElems] = {};
      q::widen_raw(h_raw[b][0], hv);
      q::widen_raw(h_raw[b][1], hv + kElems);
      if (brow) {
        q::widen_raw(b_raw[b][0], bv);
        q::widen_raw(b_raw[b][1], bv + kElems);
      }
      float a[kElems];
#pragma unroll
      for (int i = 0; i < kElems; ++i) {
        // interleaved: gate, up at 2i, 2i+1; else the first half is gate, the second up (selects on values: the
        // indices stay compile-time constants, so hv and bv stay in registers)
        const float x = interleaved ? hv[2 * i] : hv[i], y = interleaved ? hv[2 * i + 1] : hv[kElems + i];
        const float bx = interleaved ? bv[2 * i] : bv[i], by = interleaved ? bv[2 * i + 1] : bv[kElems + i];
        a[i] = active ? act(x, y, brow != nullptr, bx, by) : 0.f;
      }
      quantize_store<F>(a, active, r, col, p.inter, p.out, p.out_sf);
    }
  }
  zero_sf_pad_cols<kRowThreads>(r, p.inter, p.out_sf);
}

// Block j < T*k: pair j's row dest[j] (expert ids[j]); then every CTA's warps share the zeroing of non-routed
// rows' scales.
template <ActFormat F, class BiasT>
__global__ void __launch_bounds__(kRowThreads) activation_kernel(const ActivationParams p) {
  if (int(blockIdx.x) < p.pairs) activation_row<F, BiasT>(p);
  constexpr int kWarps = kRowThreads / 32;
  const RoutedRows routed{p.expert_of_tile, p.padded_start, p.counts, p.tile_m, p.bound};
  zero_padding_scales(p.sf_rows, p.inter, p.out_sf, int64_t(blockIdx.x) * kWarps + threadIdx.x / 32,
                      int64_t(gridDim.x) * kWarps, routed);
}

}  // namespace flashinfer_sm12x::moe
