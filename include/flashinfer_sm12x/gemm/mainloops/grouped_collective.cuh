// SPDX-License-Identifier: Apache-2.0
// GroupedCollectiveMainloop: CUTLASS's SM120 block-scaled collective, unchanged, serving a grouped GEMM (the W4A8
// path: A e4m3, B e2m1 unpacked to 8 bit in smem by the 16U4_ALIGN16B TMA type). It re-encodes B's descriptor over
// all E batches, gives A and SFA a stride-0 batch mode, and calls the collective's own producer with l = the tile's
// expert: A/SFA read batch 0, B/SFB read the expert. Native only (SM90 has neither that TMA type nor the unpacking
// ldmatrix). The packed e2m1 x e2m1 grouped configs use ByteTmaMainloop (byte_tma.cuh) instead.
#pragma once

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"

#include "flashinfer_sm12x/common/grouped_b.cuh"
#include "flashinfer_sm12x/gemm/config.cuh"

namespace flashinfer_sm12x::grouped_mm_fp4 {

template <class Base>
struct GroupedCollectiveMainloop : Base {
  using typename Base::TileShape;
  using Arguments = GroupedBArguments<typename Base::Arguments>;

  struct Params : Base::Params {
    GroupedB grouped_b;
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
    return params;
  }

  template <class ProblemShape_MNKL>
  CUTLASS_DEVICE auto load_init(ProblemShape_MNKL const& problem_shape_MNKL, Params const& params) const {
    using namespace cute;
    using X = Underscore;
    auto [gA_mkl, gB_nkl, gSFA_mkl, gSFB_nkl] = Base::load_init(problem_shape_MNKL, params);
    auto [M, N, K, L] = problem_shape_MNKL;
    const int batches = params.grouped_b.batches;
    // (BLK_M,BLK_K,m,k,l) views whose l mode repeats batch 0, so slicing them at an expert index stays in A.
    auto repeat_batch0 = [batches](auto const& t) {
      return make_tensor(t.data(), make_layout(replace<4>(t.shape(), batches), replace<4>(t.stride(), Int<0>{})));
    };
    auto gB_experts = local_tile(params.tma_load_b.get_tma_tensor(make_shape(N, K, batches)), TileShape{},
                                 make_coord(_, _, _), Step<X, _1, _1>{});
    return make_tuple(repeat_batch0(gA_mkl), gB_experts, repeat_batch0(gSFA_mkl), gSFB_nkl);
  }

  template <class Pipeline, class PipelineState, class LoadInputs, class BlockCoord, class... Rest>
  CUTLASS_DEVICE void load(Params const& params, Pipeline pipeline, PipelineState smem_pipe_write,
                           LoadInputs const& load_inputs, BlockCoord const& blk_coord, Rest&&... rest) {
    auto [m_coord, n_coord, k_coord, l_coord] = blk_coord;
    const int expert = params.grouped_b.batch_of(int(m_coord), int(l_coord));
    Base::load(params, pipeline, smem_pipe_write, load_inputs, cute::make_coord(m_coord, n_coord, k_coord, expert),
               static_cast<Rest&&>(rest)...);
  }
};

}  // namespace flashinfer_sm12x::grouped_mm_fp4

namespace flashinfer_sm12x::gemm::detail {
template <class Collective>
struct Mainloop<Collective, MainloopKind::GroupedCollective> {
  using type = grouped_mm_fp4::GroupedCollectiveMainloop<Collective>;
};
}  // namespace flashinfer_sm12x::gemm::detail
