// SPDX-License-Identifier: Apache-2.0
// ByteTmaMainloop: CUTLASS's SM120 block-scaled collective with packed e2m1 A/B loaded through byte-typed TMA.
//
// The SM120 collective encodes packed fp4 A/B with CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN8B, a sub-byte TMA type that
// SM90 does not have. For packed data (no smem gaps) that transfer is byte-identical to a UINT8 transfer of half the
// K extent (common/packed_fp4_tma.cuh), which every TMA-capable GPU supports. This wrapper adds byte-typed A/B atoms
// to Params and provides its own load_init / load (the producer side); the consumer side (mma, with Params sliced to
// the base) and everything else are inherited. It serves the emulated SM90 builds of 128-row tiles and, natively,
// the packed e2m1 grouped GEMMs: with `b_batch_of_m_tile` set, M tile m multiplies B batch b_batch_of_m_tile[m]
// (common/grouped_b.cuh).
#pragma once

#include "cute/atom/copy_traits_sm90_tma.hpp"
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"

#include "flashinfer_sm12x/common/grouped_b.cuh"
#include "flashinfer_sm12x/common/packed_fp4_tma.cuh"
#include "flashinfer_sm12x/gemm/config.cuh"

namespace flashinfer_sm12x::gemm {

template <class Base>
struct ByteTmaMainloop : Base {
  using typename Base::TileShape;
  using typename Base::ElementA;
  using typename Base::ElementB;
  using typename Base::StrideA;
  using typename Base::StrideB;
  using typename Base::SmemLayoutA;
  using typename Base::SmemLayoutB;
  using typename Base::GmemTiledCopyA;
  using typename Base::GmemTiledCopyB;
  using typename Base::MainloopPipeline;
  using typename Base::PipelineState;
  using typename Base::TensorStorage;
  static_assert(cute::sizeof_bits_v<ElementA> == 4 && cute::sizeof_bits_v<ElementB> == 4, "packed fp4 operands only");

  template <class Element, class Stride, class SmemLayout, class GmemCopy, class MNExtent, class Coords>
  static auto make_byte_tma(Element const* ptr, Coords coords, Stride stride, MNExtent mn_extent) {
    using namespace cute;
    return make_packed_fp4_tma<Element, GmemCopy>(ptr, coords, stride, SmemLayout{}(_, _, Int<0>{}),
                                                  make_shape(mn_extent, shape<2>(TileShape{})));
  }
  using TMA_A8 = decltype(make_byte_tma<ElementA, StrideA, SmemLayoutA, GmemTiledCopyA>(
      nullptr, cute::repeat_like(StrideA{}, int32_t(0)), StrideA{}, cute::shape<0>(TileShape{})));
  using TMA_B8 = decltype(make_byte_tma<ElementB, StrideB, SmemLayoutB, GmemTiledCopyB>(
      nullptr, cute::repeat_like(StrideB{}, int32_t(0)), StrideB{}, cute::shape<1>(TileShape{})));

  using Arguments = GroupedBArguments<typename Base::Arguments>;

  struct Params : Base::Params {
    TMA_A8 tma_load_a8;
    TMA_B8 tma_load_b8;
    GroupedB grouped_b;
  };

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape const& problem_shape, Arguments const& args, void* workspace) {
    using namespace cute;
    (void)workspace;
    // Not Base::to_underlying_arguments: it would also encode the 16U4 descriptors, which the SM90
    // driver rejects (it prints "Failed to initialize the TMA descriptor"). The base A/B atoms stay
    // default-constructed and unused; transaction byte counts keep the base's default initializers.
    Params params{};
    auto [M, N, K, L] = append<4>(problem_shape, 1);
    params.tma_load_sfa = make_tma_copy<uint16_t>(
        typename Base::GmemTiledCopySFA{}, make_tensor(args.ptr_SFA, args.layout_SFA),
        typename Base::SmemLayoutSFA{}(_, _, Int<0>{}), make_shape(shape<0>(TileShape{}), shape<2>(TileShape{})), _1{});
    using TileShapeSFB = typename Base::TileShapeSFB;
    params.tma_load_sfb = make_tma_copy<uint16_t>(
        typename Base::GmemTiledCopySFB{}, make_tensor(args.ptr_SFB, args.layout_SFB),
        typename Base::SmemLayoutSFB{}(_, _, Int<0>{}), make_shape(shape<1>(TileShapeSFB{}), shape<2>(TileShapeSFB{})),
        _1{});
    params.layout_SFA = args.layout_SFA;
    params.layout_SFB = args.layout_SFB;
    params.tma_load_a8 = make_byte_tma<ElementA, StrideA, SmemLayoutA, GmemTiledCopyA>(
        args.ptr_A, make_shape(M, K, L), args.dA, shape<0>(TileShape{}));
    params.grouped_b = GroupedB{args.b_batch_of_m_tile, args.b_batch_of_m_tile ? args.num_b_batches : int(L)};
    params.tma_load_b8 = make_byte_tma<ElementB, StrideB, SmemLayoutB, GmemTiledCopyB>(
        args.ptr_B, make_shape(N, K, params.grouped_b.batches), args.dB, shape<1>(TileShape{}));
    return params;
  }

  CUTLASS_DEVICE static void prefetch_tma_descriptors(Params const& params) {
    cute::prefetch_tma_descriptor(params.tma_load_a8.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_load_b8.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_load_sfa.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_load_sfb.get_tma_descriptor());
  }

  // Global views for the producer: A/B through the byte-typed atoms, scales as in the base.
  template <class ProblemShape_MNKL>
  CUTLASS_DEVICE auto load_init(ProblemShape_MNKL const& problem_shape_MNKL, Params const& params) const {
    using namespace cute;
    using X = Underscore;
    auto [M, N, K, L] = problem_shape_MNKL;
    auto tile = [](auto tensor, auto step) { return local_tile(tensor, TileShape{}, make_coord(_, _, _), step); };
    return make_tuple(tile(params.tma_load_a8.get_tma_tensor(make_shape(M, K, L)), Step<_1, X, _1>{}),   // (BLK_M,BLK_K,m,k,l)
                      tile(params.tma_load_b8.get_tma_tensor(make_shape(N, K, params.grouped_b.batches)),
                           Step<X, _1, _1>{}),                                                         // (BLK_N,BLK_K,n,k,l)
                      tile(params.tma_load_sfa.get_tma_tensor(shape(params.layout_SFA)), Step<_1, X, _1>{}),
                      tile(params.tma_load_sfb.get_tma_tensor(shape(params.layout_SFB)), Step<X, _1, _1>{}));
  }

  // Producer: one elected lane issues the four TMA loads of each k-tile into the pipeline stage.
  template <class TensorA, class TensorB, class TensorSFA, class TensorSFB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load(Params const& params, MainloopPipeline pipeline, PipelineState smem_pipe_write,
                           cute::tuple<TensorA, TensorB, TensorSFA, TensorSFB> const& load_inputs,
                           BlockCoord const& blk_coord, KTileIterator k_tile_iter, int k_tile_count,
                           int /*thread_idx*/, uint32_t /*block_rank_in_cluster*/, TensorStorage& shared_tensors) {
    using namespace cute;
    if (cute::elect_one_sync()) {
      Tensor sA = make_tensor(make_smem_ptr(shared_tensors.smem_A.begin()), SmemLayoutA{});
      Tensor sB = make_tensor(make_smem_ptr(shared_tensors.smem_B.begin()), SmemLayoutB{});
      Tensor sSFA = make_tensor(make_smem_ptr(shared_tensors.smem_SFA.begin()), typename Base::SmemLayoutSFA{});
      Tensor sSFB = make_tensor(make_smem_ptr(shared_tensors.smem_SFB.begin()), typename Base::SmemLayoutSFB{});
      auto [gA_mkl, gB_nkl, gSFA_mkl, gSFB_nkl] = load_inputs;
      auto [m_coord, n_coord, k_coord, l_coord] = blk_coord;
      // SFB tiles are at least 128 wide: an N tile narrower than that loads the SFB tile that starts at
      // the 128-aligned column below it (tile index stays in units of TileN, rounded down).
      using TileShapeSFB = typename Base::TileShapeSFB;
      constexpr int kNPerSfbTile = size<1>(TileShapeSFB{}) / size<1>(TileShape{});
      const int n_sfb = (int(n_coord) / kNPerSfbTile) * kNPerSfbTile;
      auto tma_a = params.tma_load_a8.get_slice(0);
      auto tma_b = params.tma_load_b8.get_slice(0);
      auto tma_sfa = params.tma_load_sfa.get_slice(0);
      auto tma_sfb = params.tma_load_sfb.get_slice(0);
      Tensor tAgA = tma_a.partition_S(gA_mkl(_, _, m_coord, _, l_coord));
      Tensor tAsA = tma_a.partition_D(sA);
      const int l_b = params.grouped_b.batch_of(int(m_coord), int(l_coord));
      Tensor tBgB = tma_b.partition_S(gB_nkl(_, _, n_coord, _, l_b));
      Tensor tBsB = tma_b.partition_D(sB);
      Tensor tAgSFA = tma_sfa.partition_S(gSFA_mkl(_, _, m_coord, _, l_coord));
      Tensor tAsSFA = tma_sfa.partition_D(sSFA);
      Tensor tBgSFB = tma_sfb.partition_S(gSFB_nkl(_, _, n_sfb, _, l_b));
      Tensor tBsSFB = tma_sfb.partition_D(sSFB);
      CUTLASS_PRAGMA_NO_UNROLL
      for (; k_tile_count > 0; --k_tile_count, ++k_tile_iter, ++smem_pipe_write) {
        pipeline.producer_acquire(smem_pipe_write);
        auto* bar = pipeline.producer_get_barrier(smem_pipe_write);
        int stage = smem_pipe_write.index();
        copy(params.tma_load_a8.with(*bar), tAgA(_, _, _, *k_tile_iter), tAsA(_, _, _, stage));
        copy(params.tma_load_b8.with(*bar), tBgB(_, _, _, *k_tile_iter), tBsB(_, _, _, stage));
        copy(params.tma_load_sfa.with(*bar), tAgSFA(_, _, _, *k_tile_iter), tAsSFA(_, _, _, stage));
        copy(params.tma_load_sfb.with(*bar), tBgSFB(_, _, _, *k_tile_iter), tBsSFB(_, _, _, stage));
      }
    }
    __syncwarp();
  }
};

namespace detail {
template <class Collective>
struct Mainloop<Collective, MainloopKind::ByteTma> {
  using type = ByteTmaMainloop<Collective>;
};
}  // namespace detail

}  // namespace flashinfer_sm12x::gemm
