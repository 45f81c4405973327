// SM90 (H100) emulation of the SM120 block-scaled MMA, so that CUTLASS's SM120 block-scaled collective
// and the SM90-family warp-specialized kernels can be compiled for sm_90a and tested on an H100.
//
// Three pieces differ from the native SM120 build (collective and kernel templates are the same):
//  1. The MMA operation. `SM90_EMU_16x8x64_TN_VS<SF, VS>` has exactly the register interface of
//     cute::SM120::BLOCKSCALED::SM120_16x8x64_TN_VS<e2m1, e2m1, float, SF, VS>, and its MMA_Traits
//     inherit the SM120 traits (ALayout/BLayout/CLayout/SFALayout/SFBLayout, value types), so all
//     CuTe partitioning, LDSM copies and scale-factor copies are unchanged. Its fma runs SM80
//     `mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32` on dequantized e2m1 values.
//  2. The tile scheduler: the default non-grouped SM120 scheduler (PersistentTileSchedulerSm100) uses
//     CLC instructions that SM90 lacks, so tags below select PersistentTileSchedulerSm90(/StreamK).
//  3. Host side only: the fp4 A/B TMA descriptors are re-encoded as UINT8 (see ByteTmaMainloop).
//
// Why the bf16 emulation is exact per k-block (fragment facts from mma_traits_sm120.hpp):
//  lane = 4g + t. The m16n8k64 A fragment holds a0 = A[g][8t..8t+7], a1 = A[g+8][8t..], a2 = A[g][32+8t..],
//  a3 = A[g+8][32+8t..] (8 nibbles each, element 0 in the low nibble); B holds b0 = B[g][8t..8t+7],
//  b1 = B[g][32+8t..]. The m16n8k16 bf16 MMA sums over 16 k-slots, and lane t owns slots {2t,2t+1,2t+8,
//  2t+9} in BOTH its A and B fragments. So feeding lane t's own k-values (4 per MMA) into its own slots,
//  in the same order for A and B, computes a dot product over 16 real k-values, just permuted. Two bf16
//  MMAs cover one 32-wide k-block; e2m1 values are exact in bf16 and products/sums of <= 32 of them are
//  exact in fp32, so the block partial is exact and the scales are applied afterwards:
//    MXFP4 (ue8m0, VS=32): d += (P_kb * sa[row][kb]) * sb[col][kb], per 32-block kb (post-scaling keeps
//      the full e8m0 range; the bf16 operands never see the scale).
//    NVFP4 (ue4m3, VS=16): lanes t<2 and t>=2 hold different 16-blocks inside one MMA, so the scale
//      cannot be factored out of the MMA sum. Instead each operand is pre-scaled in bf16 (e2m1 x ue4m3
//      has <= 6 significant bits and a small range: exact in bf16; products exact in fp32).
//  Scales: SFA of lane L is row 8*(L&1) + (L>>2) (the layout's stride-0 mode duplicates lanes L and L^2);
//  SFB of lane L is column L>>2. Each register packs the per-k-block scales, lowest k first. A lane
//  needs rows g and g+8 (lanes 4g and 4g+1) and, for post-scaling, columns 2t and 2t+1 (lanes 8t,
//  8t+4): fetched with shfl.sync (the MMA is warp-synchronous, so all 32 lanes are converged).
//
// Cost: re-decoding per atom call plus 4 bf16 MMAs per m16n8k64. At 128x128 the Pingpong kernel
// (128 fp32 accumulators per thread) spills ~1.5 KB/thread, Cooperative ~130 B: fine for a
// correctness vehicle; prefer Cooperative for long emulated runs.
//
// Summation order differs from the hardware OMMA (which is undocumented anyway): compare with tolerance.
#pragma once

#include <cstdint>

#include "cute/arch/mma_sm120.hpp"
#include "cute/arch/mma_sm80.hpp"
#include "cute/atom/mma_traits_sm120.hpp"
#include "cute/atom/copy_traits_sm90_tma.hpp"
#include "cute/atom/mma_traits_sm80.hpp"
#include "cutlass/gemm/collective/collective_mma_decl.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"

#include "flashinfer_sm12x/grouped_mm_fp4.cuh"
#include "flashinfer_sm12x/packed_fp4_tma.cuh"

namespace flashinfer_sm12x::emulated {

namespace detail {

// `volatile`: the collective calls the atom for every (m, n) pair with the same A (or B) registers;
// this stops NVVM from hoisting the decoded (4x larger) fragments across calls. ptxas may still
// merge some (the Pingpong spill went from 1604 to 1472 B only), but it is the cheaper direction.
CUTE_DEVICE uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm volatile("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

// Same reason, for the per-(m, n) scale values and their fp32 decodes.
CUTE_DEVICE uint32_t shfl(uint32_t v, int src_lane) {
  uint32_t r;
  asm volatile("shfl.sync.idx.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=r"(r) : "r"(v), "r"(src_lane));
  return r;
}

// 4 e2m1 nibbles (low 16 bits of s, element 0 lowest) -> two bf16x2: {e0,e1} and {e2,e3}.
// Magnitude via two byte-permute table lookups (low and high byte of the bf16 pattern), sign by OR.
CUTE_DEVICE void e2m1x4_to_bf16x4(uint32_t s, uint32_t& p01, uint32_t& p23) {
  // bf16 bit patterns of 0, .5, 1, 1.5, 2, 3, 4, 6:
  //   0x0000 0x3F00 0x3F80 0x3FC0 0x4000 0x4040 0x4080 0x40C0
  uint32_t sel = s & 0x7777u;
  uint32_t lo = prmt(0xC0800000u, 0xC0804000u, sel);
  uint32_t hi = prmt(0x3F3F3F00u, 0x40404040u, sel);
  p01 = __byte_perm(lo, hi, 0x5140u) | ((s << 12) & 0x8000u) | ((s << 24) & 0x80000000u);
  p23 = __byte_perm(lo, hi, 0x7362u) | ((s << 4) & 0x8000u) | ((s << 16) & 0x80000000u);
}

CUTE_DEVICE float ue8m0_to_float(uint32_t e) {
  uint32_t bits = e == 0u ? 0x00400000u : (e == 0xFFu ? 0x7FC00000u : (e << 23));
  return __uint_as_float(bits);
}

CUTE_DEVICE float ue4m3_to_float(uint32_t x) {
  x &= 0x7Fu;
  if (x == 0x7Fu) return __uint_as_float(0x7FC00000u);
  uint32_t e = x >> 3, m = x & 7u;
  return e ? __uint_as_float(((e + 120u) << 23) | (m << 20)) : float(m) * 0.001953125f;  // m * 2^-9
}

// bf16x2 * bf16x2 (exact here: both factors have few significant bits). fma with -0 rather than
// mul.bf16x2, which needs sm_90; fma.bf16x2 is sm_80+.
CUTE_DEVICE uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
  return r;
}

CUTE_DEVICE uint32_t float_to_bf16x2(float f) {  // f is exactly representable (ue4m3 value)
  uint32_t h = __float_as_uint(f) >> 16;
  return h | (h << 16);
}

CUTE_DEVICE void mma_bf16_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                uint32_t b0, uint32_t b1) {
  cute::SM80_16x8x16_F32BF16BF16F32_TN::fma(d[0], d[1], d[2], d[3], a0, a1, a2, a3, b0, b1,
                                            d[0], d[1], d[2], d[3]);
}

}  // namespace detail

// The emulated operation. SF = cutlass::float_ue8m0_t (VS 32) or cutlass::float_ue4m3_t (VS 16).
template <class SF, int VS>
struct SM90_EMU_16x8x64_TN_VS {
  static_assert((cute::is_same_v<SF, cutlass::float_ue8m0_t> && VS == 32) ||
                    (cute::is_same_v<SF, cutlass::float_ue4m3_t> && VS == 16),
                "emulated: MXFP4 (ue8m0/32) and NVFP4 (ue4m3/16) only");
  using Native = cute::SM120::BLOCKSCALED::SM120_16x8x64_TN_VS<cutlass::float_e2m1_t, cutlass::float_e2m1_t,
                                                               float, SF, VS>;
  using DRegisters = typename Native::DRegisters;
  using ARegisters = typename Native::ARegisters;
  using BRegisters = typename Native::BRegisters;
  using CRegisters = typename Native::CRegisters;
  using SFARegisters = typename Native::SFARegisters;
  using SFBRegisters = typename Native::SFBRegisters;
  using RegTypeSF = typename Native::RegTypeSF;

  CUTE_HOST_DEVICE static void
  fma(float& d0, float& d1, float& d2, float& d3,
      uint32_t const& a0, uint32_t const& a1, uint32_t const& a2, uint32_t const& a3,
      uint32_t const& b0, uint32_t const& b1,
      float const& c0, float const& c1, float const& c2, float const& c3,
      RegTypeSF const& sfa0, RegTypeSF const& sfb0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    using namespace detail;
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    // Scales of rows g and g+8 (A) live in lanes 4g and 4g+1.
    const uint32_t sa_g = shfl(uint32_t(sfa0), 4 * g);
    const uint32_t sa_g8 = shfl(uint32_t(sfa0), 4 * g + 1);
    const uint32_t a_row_g[2] = {a0, a2}, a_row_g8[2] = {a1, a3}, b_col[2] = {b0, b1};

    if constexpr (VS == 32) {
      // Columns 2t and 2t+1 of the accumulator: SFB of lanes 8t and 8t+4.
      const uint32_t sb_0 = shfl(uint32_t(sfb0), 8 * t);
      const uint32_t sb_1 = shfl(uint32_t(sfb0), 8 * t + 4);
      float acc[4] = {c0, c1, c2, c3};
      CUTE_UNROLL
      for (int kb = 0; kb < 2; ++kb) {  // 32-wide scale blocks
        float p[4] = {0.f, 0.f, 0.f, 0.f};
        CUTE_UNROLL
        for (int j = 0; j < 2; ++j) {  // 4 of this lane's 8 k-values per bf16 MMA
          uint32_t ag01, ag23, ah01, ah23, b01, b23;
          e2m1x4_to_bf16x4(a_row_g[kb] >> (16 * j), ag01, ag23);
          e2m1x4_to_bf16x4(a_row_g8[kb] >> (16 * j), ah01, ah23);
          e2m1x4_to_bf16x4(b_col[kb] >> (16 * j), b01, b23);
          mma_bf16_16816(p, ag01, ah01, ag23, ah23, b01, b23);
        }
        const int sh = 8 * kb;
        const float fa_g = ue8m0_to_float((sa_g >> sh) & 0xFFu), fa_g8 = ue8m0_to_float((sa_g8 >> sh) & 0xFFu);
        const float fb_0 = ue8m0_to_float((sb_0 >> sh) & 0xFFu), fb_1 = ue8m0_to_float((sb_1 >> sh) & 0xFFu);
        acc[0] += (p[0] * fa_g) * fb_0;
        acc[1] += (p[1] * fa_g) * fb_1;
        acc[2] += (p[2] * fa_g8) * fb_0;
        acc[3] += (p[3] * fa_g8) * fb_1;
      }
      d0 = acc[0]; d1 = acc[1]; d2 = acc[2]; d3 = acc[3];
    } else {
      // NVFP4: pre-scale operands. This lane's k-values of 32-half kb lie in 16-block 2*kb + (t>>1).
      // B column g is this lane's own SFB (lane L holds column L>>2 = g).
      const uint32_t sb = uint32_t(sfb0);
      float acc[4] = {c0, c1, c2, c3};
      CUTE_UNROLL
      for (int kb = 0; kb < 2; ++kb) {
        const int sh = 8 * (2 * kb + (t >> 1));
        const uint32_t s_ag = float_to_bf16x2(ue4m3_to_float((sa_g >> sh) & 0xFFu));
        const uint32_t s_ah = float_to_bf16x2(ue4m3_to_float((sa_g8 >> sh) & 0xFFu));
        const uint32_t s_b = float_to_bf16x2(ue4m3_to_float((sb >> sh) & 0xFFu));
        CUTE_UNROLL
        for (int j = 0; j < 2; ++j) {
          uint32_t ag01, ag23, ah01, ah23, b01, b23;
          e2m1x4_to_bf16x4(a_row_g[kb] >> (16 * j), ag01, ag23);
          e2m1x4_to_bf16x4(a_row_g8[kb] >> (16 * j), ah01, ah23);
          e2m1x4_to_bf16x4(b_col[kb] >> (16 * j), b01, b23);
          mma_bf16_16816(acc, bf16x2_mul(ag01, s_ag), bf16x2_mul(ah01, s_ah), bf16x2_mul(ag23, s_ag),
                         bf16x2_mul(ah23, s_ah), bf16x2_mul(b01, s_b), bf16x2_mul(b23, s_b));
        }
      }
      d0 = acc[0]; d1 = acc[1]; d2 = acc[2]; d3 = acc[3];
    }
#else
    CUTE_INVALID_CONTROL_PATH("SM90_EMU_16x8x64_TN_VS needs sm_80+ (bf16 mma.sync)");
#endif
  }
};

// The SM120 traits' mma_unpack (which unzips A/SFA, B/SFB and explodes into fma) is generic in the op;
// make it visible to ADL for our op, exactly as it is for the native one.
using cute::SM120::BLOCKSCALED::mma_unpack;

// ---------------------------------------------------------------------------------------------
// Re-instantiate a built collective with the emulated atom
// ---------------------------------------------------------------------------------------------
template <class Op> struct EmulatedOp {
  static_assert(cutlass::detail::dependent_false<Op>,
                "emulation covers e2m1 x e2m1 (MXFP4 / NVFP4) only. W4A8 (kind::mxf8f6f4) would also need "
                "SM90 substitutes for its fp4 smem->reg copy (SM100_SU4_DU8x16_*_LDSM_N) and 16U4_ALIGN16B TMA");
};
template <class SF, int VS>
struct EmulatedOp<cute::SM120::BLOCKSCALED::SM120_16x8x64_TN_VS<cutlass::float_e2m1_t, cutlass::float_e2m1_t,
                                                                float, SF, VS>> {
  using type = SM90_EMU_16x8x64_TN_VS<SF, VS>;
};

template <class TiledMma> struct EmulateTiledMma;
template <class Op, class ThrLayoutVMNK, class PermutationMNK>
struct EmulateTiledMma<cute::TiledMMA<cute::MMA_Atom<Op>, ThrLayoutVMNK, PermutationMNK>> {
  using type = cute::TiledMMA<cute::MMA_Atom<typename EmulatedOp<Op>::type>, ThrLayoutVMNK, PermutationMNK>;
};

// TMA: the SM120 collective encodes packed fp4 A/B with CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN8B, a sub-byte
// TMA type that SM90 does not have. For packed data (no smem gaps) that transfer is byte-identical to a
// UINT8 transfer of half the K extent, which SM90 supports (CUTLASS's SM90 mixed-input GEMM loads int4
// the same way). The byte-typed atom computes its gmem coordinates in bytes, i.e. its type differs, so
// this wrapper adds byte-typed A/B atoms to Params and provides its own load_init / load (the producer
// side); the consumer side (mma, with Params sliced to the base) and everything else are inherited.
// It also serves natively (byte TMA is valid on SM12x) for grouped GEMMs over expert-contiguous rows: with
// `b_batch_of_m_tile` set, M-tile m multiplies B batch b_batch_of_m_tile[m] (see grouped_mm_fp4.cuh).
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

// The same collective with the emulated atom in its TiledMma (everything else as built for SM120).
template <class Collective> struct WithEmulatedAtom;
template <class DP, class TS, class EA, class SA, class EB, class SB, class TM, class GA, class LA, class CA,
          class TrA, class GB, class LB, class CB, class TrB>
struct WithEmulatedAtom<cutlass::gemm::collective::CollectiveMma<DP, TS, EA, SA, EB, SB, TM, GA, LA, CA, TrA,
                                                                 GB, LB, CB, TrB>> {
  using type = cutlass::gemm::collective::CollectiveMma<
      DP, TS, EA, SA, EB, SB, typename EmulateTiledMma<TM>::type, GA, LA, CA, TrA, GB, LB, CB, TrB>;
};

template <class Collective> struct EmulateCollective {
  using type = ByteTmaMainloop<typename WithEmulatedAtom<Collective>::type>;
};

// Scheduler tags (GemmUniversal's 4th parameter) that select SM90 schedulers for the SM120 kernel.
struct Sm90PersistentSchedulerTag {};
struct Sm90StreamKSchedulerTag {};

}  // namespace flashinfer_sm12x::emulated

namespace cute {
template <class SF, int VS>
struct MMA_Traits<flashinfer_sm12x::emulated::SM90_EMU_16x8x64_TN_VS<SF, VS>>
    : MMA_Traits<SM120::BLOCKSCALED::SM120_16x8x64_TN_VS<cutlass::float_e2m1_t, cutlass::float_e2m1_t, float, SF, VS>> {};
}  // namespace cute

namespace cutlass::gemm::kernel::detail {
template <class TileShape, class ClusterShape, uint32_t SchedulerPipelineStageCount>
struct TileSchedulerSelector<flashinfer_sm12x::emulated::Sm90PersistentSchedulerTag, arch::Sm120, TileShape,
                             ClusterShape, SchedulerPipelineStageCount> {
  using Scheduler = PersistentTileSchedulerSm90;
};
template <class TileShape, class ClusterShape, uint32_t SchedulerPipelineStageCount>
struct TileSchedulerSelector<flashinfer_sm12x::emulated::Sm90StreamKSchedulerTag, arch::Sm120, TileShape,
                             ClusterShape, SchedulerPipelineStageCount> {
  using Scheduler = PersistentTileSchedulerSm90StreamK<TileShape, ClusterShape>;
};
}  // namespace cutlass::gemm::kernel::detail
