// SPDX-License-Identifier: Apache-2.0
// The producer side our mainloops share: the producer warp of CUTLASS's warp-specialised kernels calls a mainloop's
// load_init (the operands' global tiles) and load (the TMA loop). Every mainloop of ours that replaces the
// collective's producer (gemm/mainloops/byte_tma.cuh, w4a8_emulated.cuh, m64_pingpong.cuh) differs from the others
// only in its TMA atoms, the tile each operand reads and where it lands in shared memory; the loop that issues the
// loads of each k-tile into its pipeline stage is this one.
//
//   load_init: a_tiles = m_side_tiles<TileShape>(tma_a, shape), b_tiles = n_side_tiles<TileShape>(tma_b, shape), ...
//   load:      produce_k_tiles(pipeline, write_state, k_tile_iter, k_tile_count, [&] {
//                return cute::make_tuple(tma_operand(tma_a, a_tiles(_, _, m, _, l), smem_a), ...);
//              });
#pragma once

#include "cute/atom/copy_traits_sm90_tma.hpp"
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"

#include "flashinfer_sm12x/common/a_row_bounds.cuh"

namespace flashinfer_sm12x {

// Global tiles of an operand whose rows run along M (A, SFA) or N (B, SFB), through its TMA atom's coordinate
// tensor over `shape`: (BLK_MN, BLK_K, mn, k, l). CtaTile is (M, N, K), or another tile for the scales.
template <class CtaTile, class Tma, class Shape>
CUTLASS_DEVICE auto m_side_tiles(Tma const& tma, Shape const& shape) {
  using namespace cute;
  return local_tile(tma.get_tma_tensor(shape), CtaTile{}, make_coord(_, _, _), Step<_1, Underscore, _1>{});
}
template <class CtaTile, class Tma, class Shape>
CUTLASS_DEVICE auto n_side_tiles(Tma const& tma, Shape const& shape) {
  using namespace cute;
  return local_tile(tma.get_tma_tensor(shape), CtaTile{}, make_coord(_, _, _), Step<Underscore, _1, _1>{});
}

// One operand's share of every k-tile: its atom, this CTA's tiles along K in global memory and the pipeline's stages
// in shared memory, both partitioned for the atom.
template <class Tma, class SrcTiles, class DstStages>
struct TmaOperand {
  Tma const* tma;
  SrcTiles src;   // (TMA, TMA_MN, TMA_K, k)
  DstStages dst;  // (TMA, TMA_MN, TMA_K, PIPE)

  template <class Barrier, class KTile>
  CUTLASS_DEVICE void load(Barrier& full_barrier, KTile const& k_tile, int stage) const {
    using cute::_;
    cute::copy(tma->with(full_barrier), src(_, _, _, k_tile), dst(_, _, _, stage));
  }
};

// `cta_tiles`: (BLK_MN, BLK_K, k), the operand's tiles of this CTA; `smem_stages`: (BLK_MN, BLK_K, PIPE).
template <class Tma, class CtaTiles, class SmemStages>
CUTLASS_DEVICE auto tma_operand(Tma const& tma, CtaTiles const& cta_tiles, SmemStages const& smem_stages) {
  auto cta_tma = tma.get_slice(0);  // cluster 1x1x1 on SM12x: no multicast
  auto src = cta_tma.partition_S(cta_tiles);
  auto dst = cta_tma.partition_D(smem_stages);
  return TmaOperand<Tma, decltype(src), decltype(dst)>{&tma, src, dst};
}

// The producer warp's loop: one elected lane waits for a free stage, then issues every operand's TMA load of the
// k-tile into it, arriving on the stage's full barrier (the atoms' transaction bytes are the pipeline's). The
// operands are built by `make_operands` inside the elected lane's branch, so that what they read to find their tile
// (e.g. the grouped GEMM's expert of the M tile, one global load) is read by that lane only.
template <class Pipeline, class PipelineState, class KTileIterator, class MakeOperands>
CUTLASS_DEVICE void produce_k_tiles(Pipeline& pipeline, PipelineState write_state, KTileIterator k_tile_iter,
                                    int k_tile_count, MakeOperands const& make_operands) {
  if (cute::elect_one_sync()) {
    auto operands = make_operands();
    CUTLASS_PRAGMA_NO_UNROLL
    for (; k_tile_count > 0; --k_tile_count, ++k_tile_iter, ++write_state) {
      pipeline.producer_acquire(write_state);
      auto* full_barrier = pipeline.producer_get_barrier(write_state);
      const int stage = write_state.index();
      cute::for_each(operands, [&](auto const& operand) { operand.load(*full_barrier, *k_tile_iter, stage); });
    }
  }
  __syncwarp();
}

template <class... Tmas>
CUTLASS_DEVICE void prefetch_tma_descriptors(Tmas const&... tmas) {
  (cute::prefetch_tma_descriptor(tmas.get_tma_descriptor()), ...);
}

// ---- Wrappers of CUTLASS's SM120 collective with A/B atoms of their own ---------------------------------------
// (gemm/mainloops/byte_tma.cuh, w4a8_emulated.cuh): A and the scales land where the collective puts them, B where
// the wrapper says; B and SFB are read at the M tile's B batch (common/grouped_b.cuh, Params::grouped_b).

// load_init's global tiles: A and B through `tma_a` / `tma_b`, the scales through the collective's atoms.
template <class Collective, class TmaA, class TmaB, class Params, class ProblemShape_MNKL>
CUTLASS_DEVICE auto collective_operand_tiles(TmaA const& tma_a, TmaB const& tma_b, Params const& params,
                                             ProblemShape_MNKL const& problem_shape_MNKL) {
  using namespace cute;
  using TileShape = typename Collective::TileShape;
  auto [M, N, K, L] = problem_shape_MNKL;
  return make_tuple(m_side_tiles<TileShape>(tma_a, make_shape(M, K, L)),  // (BLK_M,BLK_K,m,k,l)
                    n_side_tiles<TileShape>(tma_b, make_shape(N, K, params.grouped_b.batches)),
                    m_side_tiles<TileShape>(params.tma_load_sfa, shape(params.layout_SFA)),
                    n_side_tiles<TileShape>(params.tma_load_sfb, shape(params.layout_SFB)));
}

// The A operand of dense configs: through A's atom as encoded.
struct UnboundedA {};

// load's operands (for produce_k_tiles) of the tile at `blk_coord`, B's stages being `smem_b`. `a_descriptor`:
// UnboundedA, or (grouped configs) a callable (m_tile, expert) -> the descriptor A's tile loads through
// (common/a_row_bounds.cuh).
template <class Collective, class TmaA, class TmaB, class Params, class LoadInputs, class BlockCoord,
          class TensorStorage, class SmemB, class ADescriptor = UnboundedA>
CUTLASS_DEVICE auto collective_tma_operands(TmaA const& tma_a, TmaB const& tma_b, Params const& params,
                                            LoadInputs const& load_inputs, BlockCoord const& blk_coord,
                                            TensorStorage& smem, SmemB const& smem_b,
                                            ADescriptor const& a_descriptor = {}) {
  using namespace cute;
  using TileShape = typename Collective::TileShape;
  auto [gA_mkl, gB_nkl, gSFA_mkl, gSFB_nkl] = load_inputs;
  auto [m_coord, n_coord, k_coord, l_coord] = blk_coord;
  // SFB tiles are at least 128 wide: an N tile narrower than that loads the SFB tile that starts at the 128-aligned
  // column below it (tile index stays in units of TileN, rounded down).
  constexpr int kNPerSfbTile = size<1>(typename Collective::TileShapeSFB{}) / size<1>(TileShape{});
  const int n_sfb = (int(n_coord) / kNPerSfbTile) * kNPerSfbTile;
  auto other_operands = [&](auto const& a, int l_b) {
    return make_tuple(
        a, tma_operand(tma_b, gB_nkl(_, _, n_coord, _, l_b), smem_b),
        tma_operand(params.tma_load_sfa, gSFA_mkl(_, _, m_coord, _, l_coord),
                    make_tensor(make_smem_ptr(smem.smem_SFA.begin()), typename Collective::SmemLayoutSFA{})),
        tma_operand(params.tma_load_sfb, gSFB_nkl(_, _, n_sfb, _, l_b),
                    make_tensor(make_smem_ptr(smem.smem_SFB.begin()), typename Collective::SmemLayoutSFB{})));
  };
  if constexpr (is_same_v<ADescriptor, UnboundedA>) {
    // A is partitioned before the expert lookup, as the wrappers did before sharing this: in that order ptxas assigns
    // the producer's registers as it did (an emulated sm_90a build swapped two otherwise; scripts/sass_identity.py).
    auto a = tma_operand(tma_a, gA_mkl(_, _, m_coord, _, l_coord),
                         make_tensor(make_smem_ptr(smem.smem_A.begin()), typename Collective::SmemLayoutA{}));
    return other_operands(a, params.grouped_b.batch_of(int(m_coord), int(l_coord)));
  } else {
    // The expert first: it bounds A's rows.
    const int l_b = params.grouped_b.batch_of(int(m_coord), int(l_coord));
    return other_operands(
        bounded_tma_operand(tma_a, a_descriptor(int(m_coord), l_b), gA_mkl(_, _, m_coord, _, l_coord),
                            make_tensor(make_smem_ptr(smem.smem_A.begin()), typename Collective::SmemLayoutA{})),
        l_b);
  }
}

// The scale factors' atoms as CUTLASS's SM120 collective encodes them (2-byte elements), for the wrappers whose
// to_underlying_arguments cannot call the collective's (it would encode A/B with TMA types they avoid).
template <class Collective, class Params, class Arguments>
void encode_collective_scale_tmas(Params& params, Arguments const& args) {
  using namespace cute;
  using TileShape = typename Collective::TileShape;
  using TileShapeSFB = typename Collective::TileShapeSFB;
  params.tma_load_sfa = make_tma_copy<uint16_t>(
      typename Collective::GmemTiledCopySFA{}, make_tensor(args.ptr_SFA, args.layout_SFA),
      typename Collective::SmemLayoutSFA{}(_, _, Int<0>{}), make_shape(shape<0>(TileShape{}), shape<2>(TileShape{})),
      _1{});
  params.tma_load_sfb = make_tma_copy<uint16_t>(
      typename Collective::GmemTiledCopySFB{}, make_tensor(args.ptr_SFB, args.layout_SFB),
      typename Collective::SmemLayoutSFB{}(_, _, Int<0>{}),
      make_shape(shape<1>(TileShapeSFB{}), shape<2>(TileShapeSFB{})), _1{});
  params.layout_SFA = args.layout_SFA;
  params.layout_SFB = args.layout_SFB;
}

}  // namespace flashinfer_sm12x
