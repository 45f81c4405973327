// SPDX-License-Identifier: Apache-2.0
// GEMM1's fused epilogue in the MoE: fc1 bias + SwiGLU over the gate/up pairs + quantization of the halved output to
// GEMM2's activation format (MXFP8 for W4A8, MXFP4 for W4A4) with E8M0 scales in the 128x4 layout GEMM2 reads. The
// [rows, 2I] intermediate never leaves the chip: GEMM1 writes [rows, I] quantized bytes and their scales directly.
//
// Design
// - Gate/up pairing. With the checkpoint's interleaved weight rows (w13 row 2i = gate_i, row 2i+1 = up_i), GEMM1's
//   output columns 2i and 2i+1 are the pair of output i, so an N tile of TileN columns holds TileN/2 whole outputs
//   and TileN % 64 == 0 makes it whole 32-output scale blocks: a tile quantizes its own outputs with no exchange
//   between CTAs. (Weights in [gate; up] or [up; gate] order put a pair TileN apart: those run unfused.)
// - Staging. The accumulator fragment's layout is the tiled MMA's (and differs between the native, emulated and
//   64-row mainloops), so the epilogue does not depend on it: each thread writes its accumulators, rounded to
//   bf16, into a shared-memory row band of kChunkRows rows (coordinates from the MMA's partition of an identity
//   tensor), the epilogue threads synchronise on a named barrier, and then every thread reads 16 consecutive
//   staged values (8 gate/up pairs), applies the activation (common/swiglu.cuh, the code of the standalone
//   activation kernel) and quantizes the 8 outputs with 3 neighbouring lanes (one 32-output block per 4 lanes).
//   Bands of 32 rows keep the staging buffer at 8.5 KiB for a 128-column tile, so the mainloop keeps its stages.
// - Bits. Rounding the accumulators to bf16 first is what the unfused path does (GEMM1 writes bf16, the activation
//   kernel reads it), so the fused result is bit-identical to GEMM1 (bf16 out) -> activation -> quantize.
// - Rows past the expert's count (padding) are not written when the routing tables are given (routed_rows.cuh):
//   GEMM2 computes them from whatever they hold (zero-initialised buffers, earlier calls' values), and every GEMM
//   row is independent, so they never reach a routed row; nobody reads their output. The tile that holds the last
//   output columns zeroes the 128x4 layout's padding scale columns of its rows (GEMM2's K loop reads them).
// - It plugs into CUTLASS's warp-specialised kernels through Sm90TmaWarpSpecializedAdapter (the interface of the
//   epilogues without TMA): no epilogue load or store pipelines, the consumer warps store from registers. Pingpong
//   runs the two math warp groups' epilogues one after the other, so one staging buffer serves both.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "cute/tensor.hpp"
#include "cutlass/arch/barrier.h"
#include "flashinfer_sm12x/common/swiglu.cuh"
#include "flashinfer_sm12x/gemm/config.cuh"
#include "flashinfer_sm12x/gemm/epilogues/register_epilogue.cuh"
#include "flashinfer_sm12x/gemm/epilogues/routed_rows.cuh"

namespace flashinfer_sm12x::grouped_mm_fp4 {

// The epilogue tag of grouped configs: fc1 bias + SwiGLU + quantization for GEMM2, written instead of D (MoE GEMM1).
struct SwigluQuantize {};

enum class BiasDtype : int { kNone = 0, kFloat32 = 1, kFloat16 = 2, kBfloat16 = 3 };

// Host-built arguments (also the kernel's Params: plain pointers and scalars).
struct SwigluQuantizeArguments {
  uint8_t* out = nullptr;                   // [M, I] e4m3 (MXFP8) or [M, I/2] packed e2m1 (MXFP4), I = N / 2
  uint8_t* out_sf = nullptr;                // E8M0, 128x4 over round_up(M, 128) rows and I/32 scale columns
  const int32_t* expert_of_tile = nullptr;  // the grouped GEMM's table: the expert of each M tile
  RoutedRows routed;                        // rows not routed are not written (null tables: every row is)
  const void* bias = nullptr;               // fc1 bias [E, N] in GEMM1's column order, or null
  BiasDtype bias_dtype = BiasDtype::kNone;
  SwigluArgs act;
};

template <ActFormat F, int TileM, int TileN>
class SwigluQuantizeEpilogue : public gemm::RegisterEpilogue<SwigluQuantizeArguments, uint8_t> {
 public:
  static_assert(TileN % 64 == 0, "a tile must hold whole 32-output scale blocks: TileN % 64 == 0");
  static constexpr int kChunkRows = TileM < 32 ? TileM : 32;
  static_assert(TileM % kChunkRows == 0);
  static constexpr int kPitch = TileN + 8;  // bf16 per staged row: 16 spare bytes spread the fragment stores' banks
  static constexpr int kPairs = 8;          // gate/up pairs per thread and pass (= kQuantElems outputs)
  static constexpr int kGroupsPerRow = TileN / (2 * kPairs);
  static constexpr int kGroups = kChunkRows * kGroupsPerRow;
  static constexpr uint32_t kBarrier = static_cast<uint32_t>(cutlass::arch::ReservedNamedBarriers::FirstUserBarrier);

  using Base = gemm::RegisterEpilogue<SwigluQuantizeArguments, uint8_t>;
  using typename Base::Arguments;
  using typename Base::Params;
  using Base::Base;

  struct SharedStorage {
    alignas(16) __nv_bfloat16 staged[kChunkRows * kPitch];
  };

  template <class ProblemShape>
  static bool can_implement(ProblemShape const& problem, Arguments const& args) {
    const int n = cute::get<1>(problem);
    return args.out && args.out_sf && args.expert_of_tile && n % 64 == 0 &&
           (args.bias == nullptr) == (args.bias_dtype == BiasDtype::kNone);
  }

  template <class ProblemShapeMNKL, class BlockShapeMNK, class BlockCoordMNKL, class FrgEngine, class FrgLayout,
            class TiledMma, class ResidueMNK>
  CUTLASS_DEVICE void operator()(ProblemShapeMNKL problem, BlockShapeMNK, BlockCoordMNKL blk_coord,
                                 cute::Tensor<FrgEngine, FrgLayout> const& accumulators, TiledMma tiled_mma,
                                 ResidueMNK, int thread_idx, char* smem) {
    using namespace cute;
    constexpr int kThreads = size(TiledMma{});
    const int m_total = get<0>(problem), n_total = get<1>(problem);
    const int m_tile = get<0>(blk_coord), n_tile = get<1>(blk_coord);
    const int m0 = m_tile * TileM, n0 = n_tile * TileN;
    const int64_t inter = n_total / 2;
    __nv_bfloat16* staged = reinterpret_cast<SharedStorage*>(smem)->staged;

    // (m, n) inside the tile of every accumulator this thread holds.
    Tensor coords = tiled_mma.get_thread_slice(thread_idx).partition_C(make_identity_tensor(Shape<Int<TileM>, Int<TileN>>{}));
    CUTE_STATIC_ASSERT_V(size(coords) == size(accumulators));

    const int expert = __ldg(params_.expert_of_tile + m_tile);
    const ExpertSwiglu act = ExpertSwiglu::of(params_.act, expert);
    // Rows below both bounds are written: the problem's rows and the expert's routed rows.
    const int64_t row_end = cute::min(static_cast<int64_t>(m_total), params_.routed.end_of(expert));
    const bool last_n_tile = n0 + TileN >= n_total;

    // The band and group loops stay rolled: this code runs beside the other warp group's mainloop (Pingpong), and
    // one copy of the activation + quantization keeps the kernel within the instruction cache.
    CUTLASS_PRAGMA_NO_UNROLL
    for (int chunk = 0; chunk < TileM / kChunkRows; ++chunk) {
      static_assert(decltype(size(accumulators))::value % 2 == 0);
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(accumulators); i += 2) {  // the MMA's C values come in column pairs (i, i + 1)
        const int r = get<0>(coords(i)) - chunk * kChunkRows, c = get<1>(coords(i));
        const bool pair = get<0>(coords(i + 1)) == get<0>(coords(i)) && get<1>(coords(i + 1)) == c + 1 && c % 2 == 0;
        if (pair) {
          if (r >= 0 && r < kChunkRows)
            *reinterpret_cast<__nv_bfloat162*>(staged + r * kPitch + c) =
                __floats2bfloat162_rn(accumulators(i), accumulators(i + 1));
        } else {
          CUTLASS_PRAGMA_UNROLL
          for (int h = 0; h < 2; ++h) {
            const int rh = get<0>(coords(i + h)) - chunk * kChunkRows;
            if (rh >= 0 && rh < kChunkRows)
              staged[rh * kPitch + get<1>(coords(i + h))] = __float2bfloat16_rn(accumulators(i + h));
          }
        }
      }
      cutlass::arch::NamedBarrier::sync(kThreads, kBarrier);

      CUTLASS_PRAGMA_NO_UNROLL
      for (int base = 0; base < kGroups; base += kThreads) {  // a block-uniform trip count: the warps stay converged
        const int g = base + thread_idx;
        const int r = g / kGroupsPerRow, col = (g % kGroupsPerRow) * 2 * kPairs;  // staged row, first column
        const int64_t row = m0 + chunk * kChunkRows + r;
        const bool active = g < kGroups && row < row_end && n0 + col < n_total;
        float a[kPairs];
        if (active) {
          float v[2 * kPairs], bias[2 * kPairs];
          load_staged(staged + r * kPitch + col, v);
          const bool has_bias = load_bias(expert, n0 + col, n_total, bias);
          CUTLASS_PRAGMA_UNROLL
          for (int j = 0; j < kPairs; ++j) a[j] = act(v[2 * j], v[2 * j + 1], has_bias, bias[2 * j], bias[2 * j + 1]);
        } else {
          CUTLASS_PRAGMA_UNROLL
          for (int j = 0; j < kPairs; ++j) a[j] = 0.f;
        }
        quantize_store<F>(a, active, row, static_cast<int>((n0 + col) / 2), inter, params_.out, params_.out_sf);
      }
      if (last_n_tile) zero_pad_scale_columns(m0 + chunk * kChunkRows, m_total, inter, thread_idx, kThreads);
      cutlass::arch::NamedBarrier::sync(kThreads, kBarrier);  // the band is restaged next (or by the next tile)
    }
  }

 private:
  using Base::params_;

  // 2 * kPairs staged bf16 values as float (16-byte shared-memory loads).
  CUTLASS_DEVICE static void load_staged(const __nv_bfloat16* src, float (&v)[2 * kPairs]) {
    CUTLASS_PRAGMA_UNROLL
    for (int h = 0; h < 2 * kPairs / 8; ++h) {
      const uint4 raw = reinterpret_cast<const uint4*>(src)[h];
      const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&raw);
      CUTLASS_PRAGMA_UNROLL
      for (int j = 0; j < 8; ++j) v[8 * h + j] = __bfloat162float(e[j]);
    }
  }

  // fc1 bias of 2 * kPairs consecutive GEMM1 columns; false when there is no bias. 16-byte loads: the bias base is
  // 16-byte aligned (the launcher checks it) and n, n_total are multiples of 2 * kPairs.
  CUTLASS_DEVICE bool load_bias(int expert, int n, int n_total, float (&out)[2 * kPairs]) const {
    const int64_t at = static_cast<int64_t>(expert) * n_total + n;
    switch (params_.bias_dtype) {
      case BiasDtype::kFloat32:
        load_vectors<float>(static_cast<const float*>(params_.bias) + at, out);
        return true;
      case BiasDtype::kFloat16:
        load_vectors<__half>(static_cast<const __half*>(params_.bias) + at, out);
        return true;
      case BiasDtype::kBfloat16:
        load_vectors<__nv_bfloat16>(static_cast<const __nv_bfloat16*>(params_.bias) + at, out);
        return true;
      default:
        CUTLASS_PRAGMA_UNROLL
        for (int j = 0; j < 2 * kPairs; ++j) out[j] = 0.f;
        return false;
    }
  }

  // 2 * kPairs consecutive values from 16-byte aligned global memory, widened to float.
  template <class T>
  CUTLASS_DEVICE static void load_vectors(const T* src, float (&out)[2 * kPairs]) {
    constexpr int kPerVector = 16 / static_cast<int>(sizeof(T));
    CUTLASS_PRAGMA_UNROLL
    for (int v = 0; v < 2 * kPairs / kPerVector; ++v) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(src) + v);
      const T* e = reinterpret_cast<const T*>(&raw);
      CUTLASS_PRAGMA_UNROLL
      for (int j = 0; j < kPerVector; ++j) out[v * kPerVector + j] = widen(e[j]);
    }
  }

  CUTLASS_DEVICE static float widen(float x) { return x; }
  CUTLASS_DEVICE static float widen(__half x) { return __half2float(x); }
  CUTLASS_DEVICE static float widen(__nv_bfloat16 x) { return __bfloat162float(x); }

  // The 128x4 layout pads scale columns to a multiple of 4; GEMM2's K loop reads them (against zero data), so they
  // must hold a finite scale (E8M0 0xFF is NaN).
  CUTLASS_DEVICE void zero_pad_scale_columns(int64_t first_row, int m_total, int64_t inter, int thread_idx,
                                             int threads) const {
    const int64_t sf_cols = inter / 32;
    const int pad = static_cast<int>((sf_cols + 3) / 4 * 4 - sf_cols);  // 0..3: 32-bit index math below
    if (pad == 0) return;
    for (int i = thread_idx; i < kChunkRows * pad; i += threads) {
      const int64_t row = first_row + i / pad;
      if (row < m_total) params_.out_sf[quantize::sf_offset_128x4(row, sf_cols + i % pad, sf_cols)] = 0;
    }
  }
};

// The collective CUTLASS's kernels call: the epilogue behind the adapter of register-storing epilogues.
template <class Format, int TileM, int TileN>
using SwigluQuantizeCollective = gemm::RegisterEpilogueCollective<
    SwigluQuantizeEpilogue<cute::is_same_v<Format, gemm::Mxfp8Mxfp4> ? ActFormat::kMxfp8 : ActFormat::kMxfp4,
                           TileM, TileN>>;

}  // namespace flashinfer_sm12x::grouped_mm_fp4

namespace flashinfer_sm12x::gemm::detail {
template <class Format, int TileM, int TileN, class BuilderEpilogue>
struct EpilogueOf<grouped_mm_fp4::SwigluQuantize, Format, TileM, TileN, BuilderEpilogue> {
  using type = grouped_mm_fp4::SwigluQuantizeCollective<Format, TileM, TileN>;
};
}  // namespace flashinfer_sm12x::gemm::detail
