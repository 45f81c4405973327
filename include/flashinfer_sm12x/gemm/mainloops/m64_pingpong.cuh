// SPDX-License-Identifier: Apache-2.0
// The mainloop of the 64-row Pingpong tiles (64x128x128 and wider N) of mm_fp4, for decode and small M.
//
// Why CUTLASS's SM120 block-scaled collective cannot run TileM = 64
//   Its SFA shared-memory layout has a TileM/128 mode (one "128x4" scale atom = 128 rows x 4 scale columns
//   = 512 B), which is 0 for 64 rows, and the gmem scale tensor is tiled in whole 128-row atoms, so a 64-row
//   box is not a TMA box of it either ("TMA requires CTA_Tile and SLayout top-level size equivalence").
//
// The 128x4 atom seen from a 64-row tile
//   Row m (0..127), scale column c (0..3) sits at byte (m % 32) * 16 + (m / 32) * 4 + c. Rows 0..63 are bytes
//   0..7 of every 16-byte line and rows 64..127 bytes 8..15: the two halves interleave. As a CuTe layout the
//   atom's row mode is (32, (2, 2)) : (16, (4, 8)), and half h is that layout with the last row mode fixed
//   at h, i.e. the 64-row layout (32, 2) : (16, 4) at byte offset 8 h. TMA cannot load 8 bytes of each
//   16-byte line, so the whole 512 B atom is loaded.
//
// Design (everything else is the SM120 Pingpong kernel, epilogue and scheduler, unchanged)
//   - Shared memory per stage: A 64 x TileK, B TileN x TileK, and SFA for the full 128 rows (the layout of a
//     TileM = 128 tile); SFB as CUTLASS lays it out for TileN >= 128.
//   - Producer: the SFA box is the 128-row block that holds this CTA's 64 rows (m-tile / 2); a neighbouring
//     CTA fetches the same 512 B per k-tile (an L2 hit; MXFP4 64x128x128: +4 % of the stage's bytes).
//     A and B go through byte-typed TMA atoms (packed_fp4_tma.cuh), the same on SM12x and in the SM90
//     emulation, so the emulated build differs from the native one only in the MMA atom.
//   - Consumer: the SFA smem tensor is the 64-row view above at offset 8 h (h = m-tile % 2, a run-time value
//     that only moves the smem base pointer). From there on the scale fragments, their smem->register copies
//     and the MMA atoms are those of a plain 64-row tile: CUTLASS's partitioning helpers are inherited.
//   - Grouped: A's rows are bounded per expert (common/a_row_bounds.cuh); the SFA block stays whole.
//   - Stages: computed by the caller for 101,376 B (MmFp4Config); MXFP4 64x128x128: 13,312 B per stage.
//
// Inherits the CUTLASS collective built for the same 64-row tile (the "blueprint": TiledMma with a 64-row
// permutation, A/B smem layouts, copy atoms, strides, dispatch policy) and replaces every SFA-dependent part:
// SFA smem layout, SharedStorage, Params, TMA setup, load and mma.
#pragma once

#include "cute/tensor.hpp"
#include "cutlass/arch/barrier.h"
#include "cutlass/cutlass.h"

#include "flashinfer_sm12x/common/a_row_bounds.cuh"
#include "flashinfer_sm12x/common/grouped_b.cuh"
#include "flashinfer_sm12x/common/packed_fp4_tma.cuh"
#include "flashinfer_sm12x/common/tma_producer.cuh"
#include "flashinfer_sm12x/gemm/config.cuh"

namespace flashinfer_sm12x::gemm {

template <class Blueprint, bool Grouped>
struct M64PingpongMainloop : Blueprint, ARowBoundsRing<Grouped> {
  using Base = Blueprint;
  using typename Base::ArchTag;
  using Arguments = GroupedBArguments<typename Base::Arguments>;
  using typename Base::DispatchPolicy;
  using typename Base::ElementA;
  using typename Base::ElementB;
  using typename Base::ElementSF;
  using typename Base::GmemTiledCopyA;
  using typename Base::GmemTiledCopyB;
  using typename Base::GmemTiledCopySFA;
  using typename Base::GmemTiledCopySFB;
  using typename Base::LayoutSFA;
  using typename Base::LayoutSFB;
  using typename Base::MainloopPipeline;
  using typename Base::PipelineState;
  using typename Base::SmemCopyAtomA;
  using typename Base::SmemCopyAtomB;
  using typename Base::SmemCopyAtomSFA;
  using typename Base::SmemCopyAtomSFB;
  using typename Base::SmemLayoutA;
  using typename Base::SmemLayoutB;
  using typename Base::SmemLayoutSFB;
  using typename Base::StrideA;
  using typename Base::StrideB;
  using typename Base::TiledMma;
  using typename Base::TileShape;

  static constexpr int kTileM = cute::size<0>(TileShape{});
  static constexpr int kTileN = cute::size<1>(TileShape{});
  static constexpr int kTileK = cute::size<2>(TileShape{});
  static constexpr int kStages = DispatchPolicy::Stages;
  static constexpr int kVecSize = Base::SFVecSize;
  static constexpr int kAtomK = cute::size<2>(typename TiledMma::AtomShape_MNK{});
  static constexpr int kScalesPerAtom = kAtomK / kVecSize;   // 2 (MXFP4) or 4 (NVFP4) per m16n8k64
  static constexpr int kScaleColumns = kTileK / kVecSize;    // per k-tile
  static constexpr int kSfaLoadRows = 128;                   // one 128x4 atom row block
  static constexpr int kTilesPerSfaLoad = kSfaLoadRows / kTileM;

  static_assert(kTileM == 64, "this mainloop serves 64-row tiles (128-row tiles use CUTLASS's collective)");
  static_assert(kTileN % 128 == 0, "SFB is loaded as CUTLASS does for TileN >= 128");
  static_assert(kAtomK == 64 && cute::sizeof_bits_v<ElementA> == 4 && cute::sizeof_bits_v<ElementB> == 4,
                "packed e2m1 x e2m1 (m16n8k64) only: W4A8 keeps fp4 unpacked in smem and has no 64-row tile");
  static_assert(kScaleColumns % 4 == 0, "TileK must cover whole 4-column scale atoms");

  // ---- SFA in shared memory ------------------------------------------------------------------------------
  // One stage = the full 128-row block: rows ((32, 4) : (16, 4)), k ((VS, scales per atom), (atoms per 4
  // columns, 4-column blocks)) with stride 0 across the VS elements that share a scale.
  using SfaRowsFull = cute::Layout<cute::Shape<cute::_32, cute::_4>, cute::Stride<cute::_16, cute::_4>>;
  using SfaRowsHalf = cute::Layout<cute::Shape<cute::_32, cute::Int<kTileM / 32>>, cute::Stride<cute::_16, cute::_4>>;
  using SfaK = cute::Layout<
      cute::Shape<cute::Shape<cute::Int<kVecSize>, cute::Int<kScalesPerAtom>>,
                  cute::Shape<cute::Int<4 / kScalesPerAtom>, cute::Int<kScaleColumns / 4>>>,
      cute::Stride<cute::Stride<cute::_0, cute::_1>, cute::Stride<cute::Int<kScalesPerAtom>, cute::_512>>>;
  static constexpr int kSfaStageBytes = kSfaLoadRows * kScaleColumns;
  using SfaLoadStage = decltype(cute::make_layout(SfaRowsFull{}, SfaK{}));                          // (128, K)
  using SmemLayoutSFA = decltype(cute::make_layout(SfaRowsFull{}, SfaK{},
      cute::Layout<cute::Int<kStages>, cute::Int<kSfaStageBytes>>{}));                           // (128, K, PIPE)
  // What the consumers read: this CTA's 64 rows, `kSfaHalfOffset * h` bytes into each line.
  using SmemLayoutSFAHalf = decltype(cute::make_layout(SfaRowsHalf{}, SfaK{},
      cute::Layout<cute::Int<kStages>, cute::Int<kSfaStageBytes>>{}));                           // (64, K, PIPE)
  static constexpr int kSfaHalfOffset = (kTileM / 32) * 4;

  // ---- Shared storage ------------------------------------------------------------------------------------
  using SmemAllocTypeA = typename TiledMma::ValTypeA;
  using SmemAllocTypeB = typename TiledMma::ValTypeB;

  struct SharedStorage {
    struct TensorStorage : cute::aligned_struct<128, cute::_0> {
      alignas(1024) cute::ArrayEngine<SmemAllocTypeA, cute::cosize_v<SmemLayoutA>> smem_A;
      alignas(1024) cute::ArrayEngine<SmemAllocTypeB, cute::cosize_v<SmemLayoutB>> smem_B;
      alignas(16) cute::ArrayEngine<ElementSF, cute::cosize_v<SmemLayoutSFA>> smem_SFA;
      alignas(16) cute::ArrayEngine<ElementSF, cute::cosize_v<SmemLayoutSFB>> smem_SFB;
    } tensors;
    using PipelineStorage = typename MainloopPipeline::SharedStorage;
    alignas(16) PipelineStorage pipeline_storage;
  };
  using TensorStorage = typename SharedStorage::TensorStorage;
  using PipelineStorage = typename SharedStorage::PipelineStorage;

  // Bytes one stage's barrier waits for: A (64 rows) + B + the full SFA block + SFB.
  static constexpr uint32_t TmaTransactionBytes = static_cast<uint32_t>(
      cutlass::bits_to_bytes(cute::size(cute::take<0, 2>(SmemLayoutA{})) * cute::sizeof_bits_v<ElementA>) +
      cutlass::bits_to_bytes(cute::size(cute::take<0, 2>(SmemLayoutB{})) * cute::sizeof_bits_v<ElementB>) +
      kSfaStageBytes * sizeof(ElementSF) +
      cutlass::bits_to_bytes(cute::cosize(cute::take<0, 2>(SmemLayoutSFB{})) * cute::sizeof_bits_v<ElementSF>));

  // ---- TMA atoms -----------------------------------------------------------------------------------------
  using BoxA = cute::Shape<cute::Int<kTileM>, cute::Int<kTileK>>;
  using BoxB = cute::Shape<cute::Int<kTileN>, cute::Int<kTileK>>;
  using BoxSFA = cute::Shape<cute::Int<kSfaLoadRows>, cute::Int<kTileK>>;
  using SmemStageA = decltype(SmemLayoutA{}(cute::_, cute::_, cute::Int<0>{}));
  using SmemStageB = decltype(SmemLayoutB{}(cute::_, cute::_, cute::Int<0>{}));
  using SmemStageSFB = decltype(SmemLayoutSFB{}(cute::_, cute::_, cute::Int<0>{}));

  template <class Layout, class Box, class SmemStage>
  static auto make_sf_tma(ElementSF const* ptr, Layout layout, SmemStage stage, Box box) {
    // 2-byte TMA elements, as CUTLASS loads scale factors.
    return cute::make_tma_copy<uint16_t>(cute::SM90_TMA_LOAD{}, cute::make_tensor(ptr, layout), stage, box,
                                         cute::_1{});
  }

  struct DenseParams {
    PackedFp4Tma<ElementA, GmemTiledCopyA, SmemStageA, StrideA, BoxA> tma_load_a;
    PackedFp4Tma<ElementB, GmemTiledCopyB, SmemStageB, StrideB, BoxB> tma_load_b;
    decltype(make_sf_tma(nullptr, LayoutSFA{}, SfaLoadStage{}, BoxSFA{})) tma_load_sfa;
    decltype(make_sf_tma(nullptr, LayoutSFB{}, SmemStageSFB{}, BoxB{})) tma_load_sfb;
    LayoutSFA layout_SFA;
    LayoutSFB layout_SFB;
    GroupedB grouped_b;
    uint32_t tma_transaction_bytes = TmaTransactionBytes;
  };
  using ABounds = ARowBounds<a_row_bound_slots_per_owner(kStages), kTileM>;
  struct GroupedParams : DenseParams {
    ABounds a_row_bounds;  // common/a_row_bounds.cuh
  };
  using Params = cute::conditional_t<Grouped, GroupedParams, DenseParams>;

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape const& problem_shape, Arguments const& args, void*) {
    using namespace cute;
    auto [M, N, K, L] = append<4>(problem_shape, 1);
    Params params{};
    params.grouped_b = GroupedB::of(args, int(L));
    params.tma_load_a = make_packed_fp4_tma<ElementA, GmemTiledCopyA>(args.ptr_A, make_shape(M, K, L), args.dA,
                                                                      SmemStageA{}, BoxA{});
    params.tma_load_b = make_packed_fp4_tma<ElementB, GmemTiledCopyB>(
        args.ptr_B, make_shape(N, K, params.grouped_b.batches), args.dB, SmemStageB{}, BoxB{});
    params.tma_load_sfa = make_sf_tma(args.ptr_SFA, args.layout_SFA, SfaLoadStage{}, BoxSFA{});
    params.tma_load_sfb = make_sf_tma(args.ptr_SFB, args.layout_SFB, SmemStageSFB{}, BoxB{});
    params.layout_SFA = args.layout_SFA;
    params.layout_SFB = args.layout_SFB;
    if constexpr (Grouped) {
      params.a_row_bounds = ABounds::of(args.a_row_bounds, params.tma_load_a, [&](int rows) {
        return a_rows_tensor<uint8_t>(args.ptr_A, rows, int(K), int(L), args.dA);
      }, int(M));
    }
    return params;
  }

  CUTLASS_DEVICE static void prefetch_tma_descriptors(Params const& params) {
    flashinfer_sm12x::prefetch_tma_descriptors(params.tma_load_a, params.tma_load_b, params.tma_load_sfa,
                                               params.tma_load_sfb);
  }

  // ---- Producer (common/tma_producer.cuh) ----------------------------------------------------------------
  // Global views, tiled: A (64, K, m, k, l), B (N, K, n, k, l), SFA in 128-row blocks (128, K, m/2, k, l).
  template <class ProblemShape_MNKL>
  CUTLASS_DEVICE auto load_init(ProblemShape_MNKL const& problem_shape_MNKL, Params const& params) const {
    using namespace cute;
    auto [M, N, K, L] = problem_shape_MNKL;
    using SfaTile = Shape<Int<kSfaLoadRows>, Int<kTileN>, Int<kTileK>>;
    return make_tuple(m_side_tiles<TileShape>(params.tma_load_a, make_shape(M, K, L)),
                      n_side_tiles<TileShape>(params.tma_load_b, make_shape(N, K, params.grouped_b.batches)),
                      m_side_tiles<SfaTile>(params.tma_load_sfa, shape(params.layout_SFA)),
                      n_side_tiles<TileShape>(params.tma_load_sfb, shape(params.layout_SFB)));
  }

  // SFA: the 128-row block that holds this CTA's 64 rows (m-tile / 2), whole.
  template <class TensorA, class TensorB, class TensorSFA, class TensorSFB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load(Params const& params, MainloopPipeline pipeline, PipelineState write_state,
                           cute::tuple<TensorA, TensorB, TensorSFA, TensorSFB> const& load_inputs,
                           BlockCoord const& blk_coord, KTileIterator k_tile_iter, int k_tile_count,
                           int /*thread_idx*/, uint32_t /*block_rank_in_cluster*/, TensorStorage& smem) {
    produce_k_tiles(pipeline, write_state, k_tile_iter, k_tile_count, [&] {
      using namespace cute;
      auto [gA_mkl, gB_nkl, gSFA_mkl, gSFB_nkl] = load_inputs;
      auto [m_coord, n_coord, k_coord, l_coord] = blk_coord;
      const int sfa_block = int(m_coord) / kTilesPerSfaLoad;
      const int l_b = params.grouped_b.batch_of(int(m_coord), int(l_coord));
      auto other_operands = [&] {
        return make_tuple(
            tma_operand(params.tma_load_b, gB_nkl(_, _, n_coord, _, l_b),
                        make_tensor(make_smem_ptr(smem.smem_B.begin()), SmemLayoutB{})),
            tma_operand(params.tma_load_sfa, gSFA_mkl(_, _, sfa_block, _, l_coord),
                        make_tensor(make_smem_ptr(smem.smem_SFA.begin()), SmemLayoutSFA{})),
            tma_operand(params.tma_load_sfb, gSFB_nkl(_, _, n_coord, _, l_b),
                        make_tensor(make_smem_ptr(smem.smem_SFB.begin()), SmemLayoutSFB{})));
      };
      if constexpr (Grouped) {
        return prepend(other_operands(),
                       bounded_tma_operand(params.tma_load_a,
                                           this->a_descriptor(params.a_row_bounds, params.tma_load_a)(int(m_coord), l_b),
                                           gA_mkl(_, _, m_coord, _, l_coord),
                                           make_tensor(make_smem_ptr(smem.smem_A.begin()), SmemLayoutA{})));
      } else {
        return make_tuple(
            tma_operand(params.tma_load_a, gA_mkl(_, _, m_coord, _, l_coord),
                        make_tensor(make_smem_ptr(smem.smem_A.begin()), SmemLayoutA{})),
            tma_operand(params.tma_load_b, gB_nkl(_, _, n_coord, _, l_b),
                        make_tensor(make_smem_ptr(smem.smem_B.begin()), SmemLayoutB{})),
            tma_operand(params.tma_load_sfa, gSFA_mkl(_, _, sfa_block, _, l_coord),
                        make_tensor(make_smem_ptr(smem.smem_SFA.begin()), SmemLayoutSFA{})),
            tma_operand(params.tma_load_sfb, gSFB_nkl(_, _, n_coord, _, l_b),
                        make_tensor(make_smem_ptr(smem.smem_SFB.begin()), SmemLayoutSFB{})));
      }
    });
  }

  // ---- Consumer ------------------------------------------------------------------------------------------
  // One warp group. Registers hold every k-block of the current stage; k-block b+1 is read from smem while
  // the MMAs of k-block b issue, and the next stage's first k-block is read before the last MMAs of this one.
  template <class FrgTensorC, class BlockCoord>
  CUTLASS_DEVICE void mma(MainloopPipeline pipeline, PipelineState read_state, FrgTensorC& accum, int k_tile_count,
                          int thread_idx, TensorStorage& smem, Params const& /*params*/, BlockCoord const& blk_coord) {
    using namespace cute;
    static_assert(is_rmem<FrgTensorC>::value, "accumulators live in registers");
    clear(accum);

    const int half = int(get<0>(blk_coord)) % kTilesPerSfaLoad;
    Tensor sA = make_tensor(make_smem_ptr(smem.smem_A.begin()), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(smem.smem_B.begin()), SmemLayoutB{});
    Tensor sSFA = make_tensor(make_smem_ptr(smem.smem_SFA.begin() + half * kSfaHalfOffset), SmemLayoutSFAHalf{});
    Tensor sSFB = make_tensor(make_smem_ptr(smem.smem_SFB.begin()), SmemLayoutSFB{});

    TiledMma tiled_mma;
    auto thr_mma = tiled_mma.get_thread_slice(thread_idx);
    Tensor frag_a = thr_mma.partition_fragment_A(sA(_, _, Int<0>{}));                    // (MMA, MMA_M, MMA_K)
    Tensor frag_b = thr_mma.partition_fragment_B(sB(_, _, Int<0>{}));                    // (MMA, MMA_N, MMA_K)
    Tensor frag_sfa = this->partition_fragment_SFA(sSFA(_, _, Int<0>{}), thr_mma);       // (MMA, MMA_M, MMA_K)
    Tensor frag_sfb = this->partition_fragment_SFB(sSFB(_, _, Int<0>{}), thr_mma);       // (MMA, MMA_N, MMA_K)

    auto copy_a = make_tiled_copy_A(SmemCopyAtomA{}, tiled_mma);
    auto copy_b = make_tiled_copy_B(SmemCopyAtomB{}, tiled_mma);
    auto mma_tile = tile_shape(tiled_mma);
    auto copy_sfa = make_tiled_copy_impl(SmemCopyAtomSFA{}, this->get_layoutSFA_TV(tiled_mma),
                                         make_shape(size<0>(mma_tile), size<2>(mma_tile)));
    auto copy_sfb = make_tiled_copy_impl(SmemCopyAtomSFB{}, this->get_layoutSFB_TV(tiled_mma),
                                         make_shape(size<1>(mma_tile), size<2>(mma_tile)));
    auto thr_copy_a = copy_a.get_thread_slice(thread_idx);
    auto thr_copy_b = copy_b.get_thread_slice(thread_idx);
    auto thr_copy_sfa = copy_sfa.get_thread_slice(thread_idx);
    auto thr_copy_sfb = copy_sfb.get_thread_slice(thread_idx);
    Tensor smem_a = thr_copy_a.partition_S(as_position_independent_swizzle_tensor(sA));  // (CPY, CPY_M, CPY_K, PIPE)
    Tensor smem_b = thr_copy_b.partition_S(as_position_independent_swizzle_tensor(sB));
    Tensor smem_sfa = thr_copy_sfa.partition_S(sSFA);
    Tensor smem_sfb = thr_copy_sfb.partition_S(sSFB);
    Tensor reg_a = thr_copy_a.retile_D(frag_a);                                          // (CPY, CPY_M, CPY_K)
    Tensor reg_b = thr_copy_b.retile_D(frag_b);
    Tensor reg_sfa = thr_copy_sfa.retile_D(frag_sfa);
    Tensor reg_sfb = thr_copy_sfb.retile_D(frag_sfb);

    CUTE_STATIC_ASSERT_V(size<1>(frag_a) == size<1>(accum));      // MMA_M
    CUTE_STATIC_ASSERT_V(size<1>(frag_sfa) == size<1>(accum));
    CUTE_STATIC_ASSERT_V(size<1>(frag_b) == size<2>(accum));      // MMA_N
    CUTE_STATIC_ASSERT_V(size<1>(frag_sfb) == size<2>(accum));
    CUTE_STATIC_ASSERT_V(size<2>(smem_a) == size<2>(smem_sfa));   // k-blocks per stage
    CUTE_STATIC_ASSERT_V(size<2>(smem_b) == size<2>(smem_sfb));
    CUTE_STATIC_ASSERT_V(size<3>(smem_a) == size<3>(smem_sfa));   // stages
    constexpr int kBlocks = size<2>(frag_a);
    // The peeled last k-tile doubles the k-tile's code. On SM12x the fragments stay in registers; in the sm_90a
    // emulation (wider dequantized fragments) ptxas then moved them to local memory, where CuTe's byte-typed fragment
    // arrays took misaligned 4-byte stores (CUDA "misaligned address"): the emulated build keeps one k-tile body
    // with the trip-count branch. Both forms run the same reads, MMAs, releases and waits in the same order.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 1200
    constexpr bool kPeelLastTile = false;
#else
    constexpr bool kPeelLastTile = true;
#endif

    auto read_k_block = [&](int stage, auto b) {
      copy(copy_a, smem_a(_, _, b, stage), reg_a(_, _, b));
      copy(copy_b, smem_b(_, _, b, stage), reg_b(_, _, b));
      copy(smem_sfa(_, _, b, stage), reg_sfa(_, _, b));
      copy(smem_sfb(_, _, b, stage), reg_sfb(_, _, b));
    };
    auto mma_k_block = [&](auto b) {
      cute::gemm(tiled_mma, make_zip_tensor(frag_a(_, _, b), frag_sfa(_, _, b)),
                 make_zip_tensor(frag_b(_, _, b), frag_sfb(_, _, b)), accum);
    };

    // Every warp of the group holds the current stage in registers once the last k-block is read: hand the stage
    // back to the producer.
    auto release_stage = [&] {
      cutlass::arch::NamedBarrier::sync(thr_size(tiled_mma), cutlass::arch::ReservedNamedBarriers::Sm120MainloopBarrier);
      pipeline.consumer_release(read_state);
      ++read_state;
    };

    // One k-tile: k-block b + 1 is read while the MMAs of b issue. At the last k-block the stage is released and,
    // when another k-tile follows (`has_next`), the next stage is waited for and its first k-block read before the
    // last MMAs of this one.
    int stage = 0;
    auto run_k_tile = [&](auto last_tile, bool has_next) {
      for_each(make_int_sequence<kBlocks>{}, [&](auto b) {
        constexpr int kb = decltype(b)::value;
        if constexpr (kb + 1 < kBlocks) {
          read_k_block(stage, Int<kb + 1>{});
        } else {
          release_stage();
          if constexpr (!decltype(last_tile)::value) {
            if (has_next) {
              pipeline.consumer_wait(read_state);
              stage = read_state.index();
              read_k_block(stage, Int<0>{});
            }
          }
        }
        mma_k_block(b);
      });
    };

    pipeline.consumer_wait(read_state);
    stage = read_state.index();
    read_k_block(stage, Int<0>{});
    if constexpr (kPeelLastTile) {
      // Every k-tile but the last waits for the next stage unconditionally (no branch on the trip count between
      // the barrier's try-wait and its check, so the scheduler can place this k-block's MMAs there); the last
      // k-tile, peeled, has nothing to wait for.
      CUTLASS_PRAGMA_NO_UNROLL
      for (; k_tile_count > 1; --k_tile_count) run_k_tile(cute::false_type{}, true);
      run_k_tile(cute::true_type{}, false);
    } else {
      CUTLASS_PRAGMA_NO_UNROLL
      for (; k_tile_count > 0; --k_tile_count) run_k_tile(cute::false_type{}, k_tile_count > 1);
    }
  }
};

namespace detail {
template <class Collective, bool Grouped>
struct Mainloop<Collective, MainloopKind::M64Pingpong, Grouped> {
  using type = M64PingpongMainloop<Collective, Grouped>;
};
}  // namespace detail

}  // namespace flashinfer_sm12x::gemm
