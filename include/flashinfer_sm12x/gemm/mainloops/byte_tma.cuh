// SPDX-License-Identifier: Apache-2.0
// ByteTmaMainloop: CUTLASS's SM120 block-scaled collective with packed e2m1 A/B loaded through byte-typed TMA.
//
// The SM120 collective encodes packed fp4 A/B with CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN8B, a sub-byte TMA type that
// SM90 does not have. For packed data (no smem gaps) that transfer is byte-identical to a UINT8 transfer of half the
// K extent (common/packed_fp4_tma.cuh), which every TMA-capable GPU supports. This wrapper adds byte-typed A/B atoms
// to Params and provides its own load_init / load (the producer side, common/tma_producer.cuh); the consumer side
// (mma, with Params sliced to the base) and everything else are inherited. It serves the emulated SM90 builds of
// 128-row tiles and, natively, the packed e2m1 grouped GEMMs: with `b_batch_of_m_tile` set, M tile m multiplies B
// batch b_batch_of_m_tile[m] (common/grouped_b.cuh) and, with Grouped, A's rows are bounded per expert
// (common/a_row_bounds.cuh).
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

template <class Base, bool Grouped>
struct ByteTmaMainloop : Base, ARowBoundsRing<Grouped> {
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

  struct DenseParams : Base::Params {
    TMA_A8 tma_load_a8;
    TMA_B8 tma_load_b8;
    GroupedB grouped_b;
  };
  using ABounds = ARowBounds<a_row_bound_slots_per_owner(Base::DispatchPolicy::Stages), cute::size<0>(TileShape{})>;
  struct GroupedParams : DenseParams {
    ABounds a_row_bounds;
  };
  using Params = cute::conditional_t<Grouped, GroupedParams, DenseParams>;

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape const& problem_shape, Arguments const& args, void* workspace) {
    using namespace cute;
    (void)workspace;
    // Not Base::to_underlying_arguments: it would also encode the 16U4 descriptors, which the SM90
    // driver rejects (it prints "Failed to initialize the TMA descriptor"). The base A/B atoms stay
    // default-constructed and unused; transaction byte counts keep the base's default initializers.
    Params params{};
    auto [M, N, K, L] = append<4>(problem_shape, 1);
    encode_collective_scale_tmas<Base>(params, args);
    params.tma_load_a8 = make_byte_tma<ElementA, StrideA, SmemLayoutA, GmemTiledCopyA>(
        args.ptr_A, make_shape(M, K, L), args.dA, shape<0>(TileShape{}));
    params.grouped_b = GroupedB::of(args, int(L));
    params.tma_load_b8 = make_byte_tma<ElementB, StrideB, SmemLayoutB, GmemTiledCopyB>(
        args.ptr_B, make_shape(N, K, params.grouped_b.batches), args.dB, shape<1>(TileShape{}));
    if constexpr (Grouped) {
      params.a_row_bounds = ABounds::of(args.a_row_bounds, params.tma_load_a8, [&](int rows) {
        return a_rows_tensor<uint8_t>(args.ptr_A, rows, int(K), int(L), args.dA);
      }, int(M));
    }
    return params;
  }

  CUTLASS_DEVICE static void prefetch_tma_descriptors(Params const& params) {
    flashinfer_sm12x::prefetch_tma_descriptors(params.tma_load_a8, params.tma_load_b8, params.tma_load_sfa,
                                               params.tma_load_sfb);
  }

  // Producer (common/tma_producer.cuh): A/B through the byte-typed atoms, the scales as in the base.
  template <class ProblemShape_MNKL>
  CUTLASS_DEVICE auto load_init(ProblemShape_MNKL const& problem_shape_MNKL, Params const& params) const {
    return collective_operand_tiles<Base>(params.tma_load_a8, params.tma_load_b8, params, problem_shape_MNKL);
  }

  template <class TensorA, class TensorB, class TensorSFA, class TensorSFB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load(Params const& params, MainloopPipeline pipeline, PipelineState smem_pipe_write,
                           cute::tuple<TensorA, TensorB, TensorSFA, TensorSFB> const& load_inputs,
                           BlockCoord const& blk_coord, KTileIterator k_tile_iter, int k_tile_count,
                           int /*thread_idx*/, uint32_t /*block_rank_in_cluster*/, TensorStorage& shared_tensors) {
    produce_k_tiles(pipeline, smem_pipe_write, k_tile_iter, k_tile_count, [&] {
      using namespace cute;
      if constexpr (Grouped) {
        return collective_tma_operands<Base>(
            params.tma_load_a8, params.tma_load_b8, params, load_inputs, blk_coord, shared_tensors,
            make_tensor(make_smem_ptr(shared_tensors.smem_B.begin()), SmemLayoutB{}),
            this->a_descriptor(params.a_row_bounds, params.tma_load_a8));
      } else {
        return collective_tma_operands<Base>(
            params.tma_load_a8, params.tma_load_b8, params, load_inputs, blk_coord, shared_tensors,
            make_tensor(make_smem_ptr(shared_tensors.smem_B.begin()), SmemLayoutB{}));
      }
    });
  }
};

namespace detail {
template <class Collective, bool Grouped>
struct Mainloop<Collective, MainloopKind::ByteTma, Grouped> {
  using type = ByteTmaMainloop<Collective, Grouped>;
};
}  // namespace detail

}  // namespace flashinfer_sm12x::gemm
