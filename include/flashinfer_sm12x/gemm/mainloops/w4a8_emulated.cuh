// SPDX-License-Identifier: Apache-2.0
// EmulatedW4A8Mainloop: CUTLASS's SM120 W4A8 collective (A e4m3, B e2m1, kind::mxf8f6f4) built for sm_90a.
//
// Natively the e2m1 operand reaches shared memory through the 16U4_ALIGN16B TMA type (each 16-code k-chunk of a row
// becomes 8 bytes of data and 8 of padding in a 16-byte chunk of the collective's uint8 SW128 layout) and registers
// through `ldmatrix ... b8x16.b4x16_p64`. SM90 has neither. This wrapper loads B with a byte TMA of the packed rows
// into a packed image inside the same smem buffer: the 8 rows x 128 codes that one 1024-byte atom of the native layout
// holds land, unswizzled, in that atom's first 512 bytes (row r, chunk c at atom + 64 r + 8 c). The emulated copy op
// (emulation/blockscaled_mma_sm90.cuh, SM90_EMU_SU4_DU8x16_x4_LDSM_N) maps the native chunk address the collective's
// partitioning gives it to that location and widens the codes, so the consumer side (the collective's mma(), its
// fp4_shift_B and the emulated atom) sees the fragment the native path produces. The transaction byte count is the
// base's: it already counts B at 4 bits per code. A (e4m3, a plain UINT8 TMA) and the scales load as in the base.
// Like ByteTmaMainloop it also serves grouped GEMMs: with `b_batch_of_m_tile` set, M tile m multiplies B batch
// b_batch_of_m_tile[m] (common/grouped_b.cuh).
#pragma once

#include "cute/atom/copy_traits_sm90_tma.hpp"
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"

#include "flashinfer_sm12x/common/a_row_bounds.cuh"
#include "flashinfer_sm12x/common/grouped_b.cuh"
#include "flashinfer_sm12x/common/packed_fp4_tma.cuh"
#include "flashinfer_sm12x/common/tma_producer.cuh"
#include "flashinfer_sm12x/gemm/config.cuh"

namespace flashinfer_sm12x::gemm {

// The packed image of B inside the collective's SW128 uint8 layout, in 4-bit units: one stage is (TileN, TileK)
// codes; the native layout tiles its 8 x 128 atoms N first, then K, then stages (checked below).
template <int TileN, int TileK, int Stages>
using PackedFp4ImageLayout =
    cute::Layout<cute::Shape<cute::Shape<cute::_8, cute::Int<TileN / 8>>, cute::Shape<cute::_128, cute::Int<TileK / 128>>,
                             cute::Int<Stages>>,
                 cute::Stride<cute::Stride<cute::_128, cute::_2048>, cute::Stride<cute::_1, cute::Int<TileN / 8 * 2048>>,
                              cute::Int<TileN * TileK * 2>>>;

template <class Base, bool Grouped>
struct EmulatedW4A8Mainloop : Base, ARowBoundsRing<Grouped> {
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
  static_assert(cute::sizeof_bits_v<ElementA> == 8 && cute::sizeof_bits_v<ElementB> == 4, "W4A8: e4m3 A, e2m1 B");

  static constexpr int kTileN = cute::size<1>(TileShape{});
  static constexpr int kTileK = cute::size<2>(TileShape{});
  static constexpr int kStages = cute::size<2>(SmemLayoutB{});
  using SmemLayoutPackedB = PackedFp4ImageLayout<kTileN, kTileK, kStages>;
  // The native layout's atoms: 8 rows of 128 bytes each, atom (n / 8, k / 128) at ((n / 8) + (k / 128) N / 8) KiB.
  static_assert(kTileN % 8 == 0 && kTileK % 128 == 0, "W4A8 tiles: TileN a multiple of 8, TileK of 128");
  static_assert(cute::cosize_v<SmemLayoutB> == kTileN * kTileK * kStages, "unexpected native B smem layout");
  static_assert(SmemLayoutB{}.layout_b()(cute::_8{}, cute::_0{}, cute::_0{}) == 1024 &&
                    (kTileK == 128 || SmemLayoutB{}.layout_b()(cute::_0{}, cute::_128{}, cute::_0{}) == kTileN / 8 * 1024) &&
                    SmemLayoutB{}.layout_b()(cute::_0{}, cute::_0{}, cute::_1{}) == kTileN * kTileK,
                "the native B layout tiles its atoms N first, then K, then stages");
  static_assert(cute::is_same_v<typename Base::SmemLayoutAtomB, cute::UMMA::Layout_K_SW128_Atom<uint8_t>>,
                "the packed image assumes the collective's uint8 K-major SW128 atom (8 x 128 bytes)");

  template <class Coords>
  static auto make_b_tma(ElementB const* ptr, Coords coords, StrideB stride) {
    using namespace cute;
    return make_packed_fp4_tma<ElementB, GmemTiledCopyB>(ptr, coords, stride, SmemLayoutPackedB{}(_, _, Int<0>{}),
                                                         make_shape(Int<kTileN>{}, Int<kTileK>{}));
  }
  using TMA_B8 = decltype(make_b_tma(nullptr, cute::repeat_like(StrideB{}, int32_t(0)), StrideB{}));

  using Arguments = GroupedBArguments<typename Base::Arguments>;

  struct DenseParams : Base::Params {
    TMA_B8 tma_load_b8;
    GroupedB grouped_b;
  };
  using ABounds = ARowBounds<a_row_bound_slots_per_owner(kStages), cute::size<0>(TileShape{})>;
  struct GroupedParams : DenseParams {
    ABounds a_row_bounds;  // common/a_row_bounds.cuh
  };
  using Params = cute::conditional_t<Grouped, GroupedParams, DenseParams>;

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape const& problem_shape, Arguments const& args, void* workspace) {
    using namespace cute;
    (void)workspace;
    // Not Base::to_underlying_arguments: it would encode B with 16U4_ALIGN16B, which the SM90 driver rejects. The
    // base B atom stays default-constructed and unused; transaction byte counts keep the base's initializers.
    Params params{};
    auto [M, N, K, L] = append<4>(problem_shape, 1);
    auto tensor_a = make_tensor(recast_ptr<typename Base::TmaInternalElementA>(args.ptr_A),
                                make_layout(make_shape(M, K, L), args.dA));
    params.tma_load_a = make_tma_copy(GmemTiledCopyA{}, tensor_a, SmemLayoutA{}(_, _, Int<0>{}),
                                      make_shape(shape<0>(TileShape{}), shape<2>(TileShape{})), _1{});
    encode_collective_scale_tmas<Base>(params, args);
    params.grouped_b = GroupedB::of(args, int(L));
    params.tma_load_b8 = make_b_tma(args.ptr_B, make_shape(N, K, params.grouped_b.batches), args.dB);
    if constexpr (Grouped) {
      params.a_row_bounds = ABounds::of(args.a_row_bounds, params.tma_load_a, [&](int rows) {
        return a_rows_tensor<typename Base::TmaInternalElementA>(args.ptr_A, rows, int(K), int(L), args.dA);
      }, int(M));
    }
    return params;
  }

  CUTLASS_DEVICE static void prefetch_tma_descriptors(Params const& params) {
    flashinfer_sm12x::prefetch_tma_descriptors(params.tma_load_a, params.tma_load_b8, params.tma_load_sfa,
                                               params.tma_load_sfb);
  }

  // Producer (common/tma_producer.cuh): A and the scales as in the base, B into its packed image.
  template <class ProblemShape_MNKL>
  CUTLASS_DEVICE auto load_init(ProblemShape_MNKL const& problem_shape_MNKL, Params const& params) const {
    return collective_operand_tiles<Base>(params.tma_load_a, params.tma_load_b8, params, problem_shape_MNKL);
  }

  // The packed image of B's stages, as the byte TMA writes it.
  CUTLASS_DEVICE static auto packed_b_image(TensorStorage& shared_tensors) {
    using namespace cute;
    return make_tensor(recast_ptr<ElementB>(make_smem_ptr(shared_tensors.smem_B.begin())), SmemLayoutPackedB{});
  }

  template <class TensorA, class TensorB, class TensorSFA, class TensorSFB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load(Params const& params, MainloopPipeline pipeline, PipelineState smem_pipe_write,
                           cute::tuple<TensorA, TensorB, TensorSFA, TensorSFB> const& load_inputs,
                           BlockCoord const& blk_coord, KTileIterator k_tile_iter, int k_tile_count,
                           int /*thread_idx*/, uint32_t /*block_rank_in_cluster*/, TensorStorage& shared_tensors) {
    produce_k_tiles(pipeline, smem_pipe_write, k_tile_iter, k_tile_count, [&] {
      if constexpr (Grouped) {
        return collective_tma_operands<Base>(params.tma_load_a, params.tma_load_b8, params, load_inputs, blk_coord,
                                             shared_tensors, packed_b_image(shared_tensors),
                                             this->a_descriptor(params.a_row_bounds, params.tma_load_a));
      } else {
        return collective_tma_operands<Base>(params.tma_load_a, params.tma_load_b8, params, load_inputs, blk_coord,
                                             shared_tensors, packed_b_image(shared_tensors));
      }
    });
  }
};

namespace detail {
template <class Collective, bool Grouped>
struct Mainloop<Collective, MainloopKind::EmulatedW4A8, Grouped> {
  using type = EmulatedW4A8Mainloop<Collective, Grouped>;
};
}  // namespace detail

}  // namespace flashinfer_sm12x::gemm
