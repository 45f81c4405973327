// SPDX-License-Identifier: Apache-2.0
// The MoE's GEMM2 epilogue: D = acc rounded to bf16 / fp16, as the plain store epilogue writes it, but only for the
// routed rows (routed_rows.cuh): at decode nearly all of the padded bound is padding, whose output nobody reads.
// finalize then reads the routed rows as before (bit-identical output).
//
// Design
// - Each consumer thread stores its own accumulators from registers (coordinates from the tiled MMA's partition of
//   an identity tensor, so any mainloop's fragment layout works), adjacent column pairs as one 32-bit store. No
//   shared memory: CUTLASS's TMA store writes whole tiles, which is what this epilogue avoids.
// - fc2 bias and the router weight stay in finalize. Applying them here means writing the weighted rows in float32
//   (bf16 would round once more than the reference order) into [T*k, H] for finalize to sum: 2x the bytes of these
//   bf16 rows at large T (benchmarks/moe_traffic.py); fp32 atomics into [T, H] would make the sum order, and the
//   result, run-dependent.
// - Plugs into CUTLASS's warp-specialised kernels through Sm90TmaWarpSpecializedAdapter, like swiglu_quantize.cuh.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cute/tensor.hpp"
#include "flashinfer_sm12x/gemm/config.cuh"
#include "flashinfer_sm12x/gemm/epilogues/register_epilogue.cuh"
#include "flashinfer_sm12x/gemm/epilogues/routed_rows.cuh"

namespace flashinfer_sm12x::grouped_mm_fp4 {

struct StoreRouted {};  // the epilogue tag of grouped configs: D for the routed rows only (MoE GEMM2)

struct StoreRoutedArguments {
  void* d = nullptr;                        // [M, N] row-major, the config's ElementD
  const int32_t* expert_of_tile = nullptr;  // the grouped GEMM's table: the expert of each M tile
  RoutedRows routed;
};

template <class ElementD_, int TileM, int TileN>
class StoreRoutedEpilogue : public gemm::RegisterEpilogue<StoreRoutedArguments, ElementD_> {
 public:
  static_assert(TileN % 2 == 0);

  using Base = gemm::RegisterEpilogue<StoreRoutedArguments, ElementD_>;
  using typename Base::Arguments;
  using typename Base::Params;
  using ElementD = ElementD_;
  using Base::Base;

  struct SharedStorage {};

  template <class ProblemShape>
  static bool can_implement(ProblemShape const& problem, Arguments const& args) {
    return args.d && args.expert_of_tile && cute::get<1>(problem) % 2 == 0;
  }

  template <class ProblemShapeMNKL, class BlockShapeMNK, class BlockCoordMNKL, class FrgEngine, class FrgLayout,
            class TiledMma, class ResidueMNK>
  CUTLASS_DEVICE void operator()(ProblemShapeMNKL problem, BlockShapeMNK, BlockCoordMNKL blk_coord,
                                 cute::Tensor<FrgEngine, FrgLayout> const& accumulators, TiledMma tiled_mma,
                                 ResidueMNK, int thread_idx, char*) {
    using namespace cute;
    const int m_total = get<0>(problem), n_total = get<1>(problem);
    const int m_tile = get<0>(blk_coord), n_tile = get<1>(blk_coord);
    const int64_t m0 = static_cast<int64_t>(m_tile) * TileM;
    const int n0 = n_tile * TileN;
    Tensor coords = tiled_mma.get_thread_slice(thread_idx).partition_C(make_identity_tensor(Shape<Int<TileM>, Int<TileN>>{}));
    CUTE_STATIC_ASSERT_V(size(coords) == size(accumulators));
    const int expert = __ldg(params_.expert_of_tile + m_tile);
    // Rows below both bounds are written: the problem's rows and the expert's routed rows.
    const int64_t row_end = cute::min(static_cast<int64_t>(m_total), params_.routed.end_of(expert));
    ElementD* d = static_cast<ElementD*>(params_.d);

    static_assert(decltype(size(accumulators))::value % 2 == 0);
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(accumulators); i += 2) {  // the MMA's C values come in column pairs (i, i + 1)
      const int64_t row = m0 + get<0>(coords(i));
      const int col = n0 + get<1>(coords(i));
      const bool adjacent = get<0>(coords(i + 1)) == get<0>(coords(i)) && get<1>(coords(i + 1)) == get<1>(coords(i)) + 1;
      if (row >= row_end) continue;
      if (adjacent && col % 2 == 0 && col + 1 < n_total) {
        store2(d + row * n_total + col, accumulators(i), accumulators(i + 1));
      } else {  // not a pair (or the last column): each value on its own
        CUTLASS_PRAGMA_UNROLL
        for (int h = 0; h < 2; ++h) {
          const int64_t r = m0 + get<0>(coords(i + h));
          const int c = n0 + get<1>(coords(i + h));
          if (r < row_end && c < n_total) d[r * n_total + c] = convert(accumulators(i + h));
        }
      }
    }
  }

 private:
  using Base::params_;

  CUTLASS_DEVICE static ElementD convert(float x) {
    if constexpr (cute::is_same_v<ElementD, cutlass::bfloat16_t>) {
      return cutlass::bfloat16_t::bitcast(__bfloat16_as_ushort(__float2bfloat16_rn(x)));
    } else {
      return cutlass::half_t::bitcast(__half_as_ushort(__float2half_rn(x)));
    }
  }

  CUTLASS_DEVICE static void store2(ElementD* at, float x, float y) {
    const uint32_t lo = convert(x).raw(), hi = convert(y).raw();
    *reinterpret_cast<uint32_t*>(at) = lo | (hi << 16);
  }
};

template <class ElementD, int TileM, int TileN>
using StoreRoutedCollective = gemm::RegisterEpilogueCollective<StoreRoutedEpilogue<ElementD, TileM, TileN>>;

}  // namespace flashinfer_sm12x::grouped_mm_fp4

namespace flashinfer_sm12x::gemm::detail {
template <class Format, int TileM, int TileN, class BuilderEpilogue>
struct EpilogueOf<grouped_mm_fp4::StoreRouted, Format, TileM, TileN, BuilderEpilogue> {
  using type = grouped_mm_fp4::StoreRoutedCollective<typename BuilderEpilogue::ElementD, TileM, TileN>;
};
}  // namespace flashinfer_sm12x::gemm::detail
