// SPDX-License-Identifier: Apache-2.0
// GroupedCollectiveMainloop: CUTLASS's SM120 block-scaled collective, unchanged, serving a grouped GEMM (the W4A8
// path: A e4m3, B e2m1 unpacked to 8 bit in smem by the 16U4_ALIGN16B TMA type). It re-encodes B's descriptor over
// all E batches and runs the collective's atoms through our producer (common/tma_producer.cuh): A/SFA at the
// problem's batch, A's rows bounded per expert (common/a_row_bounds.cuh), B/SFB at the tile's expert. Native only
// (SM90 has neither that TMA type nor the unpacking ldmatrix). The packed e2m1 x e2m1 grouped configs use ByteTmaMainloop (byte_tma.cuh) instead.
#pragma once

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"

#include "flashinfer_sm12x/common/a_row_bounds.cuh"
#include "flashinfer_sm12x/common/grouped_b.cuh"
#include "flashinfer_sm12x/common/tma_producer.cuh"
#include "flashinfer_sm12x/gemm/config.cuh"

namespace flashinfer_sm12x::grouped_mm_fp4 {

template <class Base, bool Grouped = true>
struct GroupedCollectiveMainloop : Base, ARowBoundsRing<true> {
  static_assert(Grouped, "the grouped W4A8 mainloop serves grouped configs only");
  using typename Base::TileShape;
  using typename Base::MainloopPipeline;
  using typename Base::PipelineState;
  using typename Base::SmemLayoutB;
  using typename Base::TensorStorage;
  using Arguments = GroupedBArguments<typename Base::Arguments>;
  using ABounds = ARowBounds<a_row_bound_slots_per_owner(Base::DispatchPolicy::Stages), cute::size<0>(TileShape{})>;

  struct Params : Base::Params {
    GroupedB grouped_b;
    ABounds a_row_bounds;  // common/a_row_bounds.cuh
  };

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape const& problem_shape, Arguments const& args, void* workspace) {
    using namespace cute;
    Params params{};
    static_cast<typename Base::Params&>(params) = Base::to_underlying_arguments(problem_shape, args, workspace);
    auto [M, N, K, L] = append<4>(problem_shape, 1);
    params.grouped_b = GroupedB::of(args, int(L));
    // The base encoded B over the problem's L; the experts' B spans all batches (its SFB layout already does:
    // the launcher builds layout_SFB over num_b_batches).
    auto tensor_b = make_tensor(recast_ptr<typename Base::TmaInternalElementB>(args.ptr_B),
                                make_layout(make_shape(N, K, params.grouped_b.batches), args.dB));
    params.tma_load_b = make_tma_copy(typename Base::GmemTiledCopyB{}, tensor_b,
                                      typename Base::SmemLayoutB{}(_, _, Int<0>{}),
                                      make_shape(shape<1>(TileShape{}), shape<2>(TileShape{})), _1{});
    params.a_row_bounds = ABounds::of(args.a_row_bounds, params.tma_load_a, [&](int rows) {
      return a_rows_tensor<typename Base::TmaInternalElementA>(args.ptr_A, rows, int(K), int(L), args.dA);
    }, int(M));
    return params;
  }

  // Producer (common/tma_producer.cuh), the collective's own atoms: A (bounded per expert) and SFA at the problem's
  // batch, B and SFB at the M tile's expert.
  template <class ProblemShape_MNKL>
  CUTLASS_DEVICE auto load_init(ProblemShape_MNKL const& problem_shape_MNKL, Params const& params) const {
    return collective_operand_tiles<Base>(params.tma_load_a, params.tma_load_b, params, problem_shape_MNKL);
  }

  template <class TensorA, class TensorB, class TensorSFA, class TensorSFB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load(Params const& params, MainloopPipeline pipeline, PipelineState smem_pipe_write,
                           cute::tuple<TensorA, TensorB, TensorSFA, TensorSFB> const& load_inputs,
                           BlockCoord const& blk_coord, KTileIterator k_tile_iter, int k_tile_count,
                           int /*thread_idx*/, uint32_t /*block_rank_in_cluster*/, TensorStorage& shared_tensors) {
    produce_k_tiles(pipeline, smem_pipe_write, k_tile_iter, k_tile_count, [&] {
      using namespace cute;
      return collective_tma_operands<Base>(params.tma_load_a, params.tma_load_b, params, load_inputs, blk_coord,
                                           shared_tensors,
                                           make_tensor(make_smem_ptr(shared_tensors.smem_B.begin()), SmemLayoutB{}),
                                           this->a_descriptor(params.a_row_bounds, params.tma_load_a));
    });
  }
};

}  // namespace flashinfer_sm12x::grouped_mm_fp4

namespace flashinfer_sm12x::gemm::detail {
template <class Collective, bool Grouped>
struct Mainloop<Collective, MainloopKind::GroupedCollective, Grouped> {
  using type = grouped_mm_fp4::GroupedCollectiveMainloop<Collective, Grouped>;
};
}  // namespace flashinfer_sm12x::gemm::detail
