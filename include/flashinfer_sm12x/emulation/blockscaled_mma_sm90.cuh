// SPDX-License-Identifier: Apache-2.0
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
//  3. Host side only: the fp4 A/B TMA descriptors are re-encoded as UINT8 (gemm/mainloops/byte_tma.cuh).
//  W4A8 (kind::mxf8f6f4, e4m3 x e2m1) has its own atom, SM90_EMU_16x8x32_TN_E4M3_E2M1 (below), and its e2m1 operand
//  reaches registers through SM90_EMU_SU4_DU8x16_x4_LDSM_N from a packed smem image that
//  gemm/mainloops/w4a8_emulated.cuh loads (SM90 has neither the 16U4_ALIGN16B TMA type nor the unpacking ldmatrix).
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

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "cute/arch/mma_sm120.hpp"
#include "cute/arch/mma_sm80.hpp"
#include "cute/arch/copy_sm100.hpp"
#include "cute/atom/copy_traits_sm100.hpp"
#include "cute/atom/mma_traits_sm120.hpp"
#include "cute/atom/copy_traits_sm90_tma.hpp"
#include "cute/atom/mma_traits_sm80.hpp"
#include "cutlass/gemm/collective/collective_mma_decl.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"

#include "flashinfer_sm12x/gemm/config.cuh"

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

// f16 m16n8k16 (sm_80+). Used by the W4A8 atom: every e4m3 value is a normal f16 and every e2m1 value is exact in
// f16, so the operands need no rescaling (bf16 would need a detour through f32 for e4m3).
CUTE_DEVICE void mma_f16_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                               uint32_t b0, uint32_t b1) {
  cute::SM80_16x8x16_F32F16F16F32_TN::fma(d[0], d[1], d[2], d[3], a0, a1, a2, a3, b0, b1,
                                          d[0], d[1], d[2], d[3]);
}

// Two e4m3 codes (low 16 bits of s, element 0 lowest) -> f16x2 {e0 low, e1 high}: cvt.rn.f16x2.e4m3x2 (sm_89+).
CUTE_DEVICE uint32_t e4m3x2_to_f16x2(uint32_t s) {
  __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(s & 0xFFFFu), __NV_E4M3);
  return uint32_t(h.x) | (uint32_t(h.y) << 16);
}

// Four e2m1 values in the 8-bit containers kind::mxf8f6f4 takes (code in bits 5:2 of each byte, element 0 in the
// lowest byte) -> two f16x2: {e0, e1} and {e2, e3}. The f16 patterns of the eight magnitudes have a zero low byte,
// so one byte-permute table lookup gives the high bytes; the sign (container bit 5) becomes bit 7 of that byte.
CUTE_DEVICE void e2m1x4_container_to_f16x4(uint32_t s, uint32_t& p01, uint32_t& p23) {
  // f16 high bytes of 0, .5, 1, 1.5, 2, 3, 4, 6: 0x00 0x38 0x3C 0x3E 0x40 0x42 0x44 0x46
  const uint32_t idx = (s >> 2) & 0x07070707u;                    // magnitude code per byte
  const uint32_t packed = idx | (idx >> 4);                        // codes 0,1 in byte 0, codes 2,3 in byte 2
  const uint32_t sel = (packed & 0xFFu) | ((packed >> 8) & 0xFF00u);  // one selector nibble per element
  const uint32_t hi = prmt(0x3E3C3800u, 0x46444240u, sel) | ((s << 2) & 0x80808080u);
  p01 = __byte_perm(hi, 0u, 0x1404u);  // bytes {0, hi0, 0, hi1}
  p23 = __byte_perm(hi, 0u, 0x3424u);  // bytes {0, hi2, 0, hi3}
}

// An emulated op keeps the register interface of the native op it stands for (its MMA_Traits are the native ones).
template <class NativeOp>
struct NativeRegisters {
  using Native = NativeOp;
  using DRegisters = typename Native::DRegisters;
  using ARegisters = typename Native::ARegisters;
  using BRegisters = typename Native::BRegisters;
  using CRegisters = typename Native::CRegisters;
  using SFARegisters = typename Native::SFARegisters;
  using SFBRegisters = typename Native::SFBRegisters;
};

}  // namespace detail

// The emulated operation. SF = cutlass::float_ue8m0_t (VS 32) or cutlass::float_ue4m3_t (VS 16).
template <class SF, int VS>
struct SM90_EMU_16x8x64_TN_VS
    : detail::NativeRegisters<cute::SM120::BLOCKSCALED::SM120_16x8x64_TN_VS<cutlass::float_e2m1_t,
                                                                             cutlass::float_e2m1_t, float, SF, VS>> {
  static_assert((cute::is_same_v<SF, cutlass::float_ue8m0_t> && VS == 32) ||
                    (cute::is_same_v<SF, cutlass::float_ue4m3_t> && VS == 16),
                "emulated: MXFP4 (ue8m0/32) and NVFP4 (ue4m3/16) only");
  using RegTypeSF = typename SM90_EMU_16x8x64_TN_VS::Native::RegTypeSF;

  // One argument per register, as CuTe's MMA op interface (and the native op) has it; the W4A8 op's is alike.
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

// The emulated W4A8 operation: kind::mxf8f6f4 m16n8k32, A e4m3, B e2m1, ue8m0 scales per 32 (scale_vec::1X), with
// the register interface of cute::SM120::BLOCKSCALED::SM120_16x8x32_TN_VS<e4m3, e2m1, float, ue8m0, 32>: A and B
// hold one 8-bit value per byte (an e2m1 code sits in bits 5:2 of its byte, where the collective's fp4_shift_B put
// it after the unpacking ldmatrix), the traits are the native ones (the SM80 m16n8k32 8-bit fragment layouts:
// a0 = A[g][4t..4t+3], a1 = A[g+8][4t..], a2 = A[g][16+4t..], a3 = A[g+8][16+4t..], b0 = B[g][4t..4t+3],
// b1 = B[g][16+4t..]). Lane t owns the f16 m16n8k16 k-slots {2t, 2t+1, 2t+8, 2t+9} in A and in B, so two f16 MMAs
// over its own k-values (4t.. in the first, 16+4t.. in the second, same slot order for A and B) compute the k32 dot
// product, permuted. The products are exact (e4m3 x e2m1 has <= 6 significant bits) and the whole k32 is one
// scale block, so the scales are applied once to the fp32 block sum.
struct SM90_EMU_16x8x32_TN_E4M3_E2M1
    : detail::NativeRegisters<cute::SM120::BLOCKSCALED::SM120_16x8x32_TN_VS<
          cutlass::float_e4m3_t, cutlass::float_e2m1_t, float, cutlass::float_ue8m0_t, 32>> {

  CUTE_HOST_DEVICE static void
  fma(float& d0, float& d1, float& d2, float& d3,
      uint32_t const& a0, uint32_t const& a1, uint32_t const& a2, uint32_t const& a3,
      uint32_t const& b0, uint32_t const& b1,
      float const& c0, float const& c1, float const& c2, float const& c3,
      uint8_t const& sfa0, uint8_t const& sfb0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    using namespace detail;
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    // Rows g and g+8 of SFA live in lanes 4g and 4g+1; columns 2t and 2t+1 of SFB in lanes 8t and 8t+4.
    const uint32_t sa_g = shfl(uint32_t(sfa0), 4 * g), sa_g8 = shfl(uint32_t(sfa0), 4 * g + 1);
    const uint32_t sb_0 = shfl(uint32_t(sfb0), 8 * t), sb_1 = shfl(uint32_t(sfb0), 8 * t + 4);
    const uint32_t a_row_g[2] = {a0, a2}, a_row_g8[2] = {a1, a3}, b_col[2] = {b0, b1};
    float p[4] = {0.f, 0.f, 0.f, 0.f};
    CUTE_UNROLL
    for (int h = 0; h < 2; ++h) {  // k 4t..4t+3, then 16+4t..16+4t+3
      uint32_t b01, b23;
      e2m1x4_container_to_f16x4(b_col[h], b01, b23);
      mma_f16_16816(p, e4m3x2_to_f16x2(a_row_g[h]), e4m3x2_to_f16x2(a_row_g8[h]), e4m3x2_to_f16x2(a_row_g[h] >> 16),
                    e4m3x2_to_f16x2(a_row_g8[h] >> 16), b01, b23);
    }
    const float fa_g = ue8m0_to_float(sa_g & 0xFFu), fa_g8 = ue8m0_to_float(sa_g8 & 0xFFu);
    const float fb_0 = ue8m0_to_float(sb_0 & 0xFFu), fb_1 = ue8m0_to_float(sb_1 & 0xFFu);
    d0 = c0 + (p[0] * fa_g) * fb_0;
    d1 = c1 + (p[1] * fa_g) * fb_1;
    d2 = c2 + (p[2] * fa_g8) * fb_0;
    d3 = c3 + (p[3] * fa_g8) * fb_1;
#else
    CUTE_INVALID_CONTROL_PATH("SM90_EMU_16x8x32_TN_E4M3_E2M1 needs sm_89+ (cvt.f16x2.e4m3x2)");
#endif
  }
};

// The collective moves an e2m1 fragment into place with fp4_shift_B(MMAOp{}, ...) after the unpacking ldmatrix
// (CUTLASS: the ldmatrix leaves a code in bits 3:0 of its byte, the MMA takes it in bits 5:2). The emulated atom
// takes the native register format, so the same shift applies to it (found by ADL, more specialised than the
// no-op default).
template <class Tensor>
CUTE_DEVICE void fp4_shift_B(SM90_EMU_16x8x32_TN_E4M3_E2M1 const&, Tensor&& tensor) {
  cute::transform(cute::recast<uint32_t>(tensor), [](uint32_t& v) { return v << 2; });
}

// ---------------------------------------------------------------------------------------------
// The W4A8 e2m1 operand's shared-memory path without the 16U4_ALIGN16B TMA type and the unpacking ldmatrix
// ---------------------------------------------------------------------------------------------
// Native: the TMA writes each 16-element (8-byte) k-chunk of a B row into a 16-byte smem chunk (8 bytes of data,
// 8 of padding) of the collective's uint8 SW128 layout (8 rows x 128 chunks-bytes per 1024-byte atom, chunk c of
// row r at physical chunk c ^ r), and `ldmatrix ... b8x16.b4x16_p64` reads 16-byte rows, giving each lane 4
// consecutive codes per matrix, one per byte in bits 3:0.
// Emulated: a byte TMA (gemm/mainloops/w4a8_emulated.cuh) writes the packed rows of each atom into that atom's
// own first 512 bytes, unswizzled: row r's chunk c at atom + 64 r + 8 c. packed_chunk_address maps the native
// chunk address that the collective's partitioning hands the copy to that location.
CUTE_DEVICE uint32_t packed_chunk_address(uint32_t native_chunk) {
  const uint32_t atom = native_chunk & ~1023u;
  const uint32_t row = (native_chunk >> 7) & 7u;
  const uint32_t chunk = ((native_chunk >> 4) & 7u) ^ row;
  return atom + 64u * row + 8u * chunk;
}

// 4 packed codes (16 bits, element 0 in the low nibble) -> one code per byte in bits 3:0, element 0 lowest.
CUTE_DEVICE uint32_t widen_e2m1x4(uint32_t packed) {
  return (packed & 0xFu) | ((packed & 0xF0u) << 4) | ((packed & 0xF00u) << 8) | ((packed & 0xF000u) << 12);
}

// The copy op that replaces SM100_SU4_DU8x16_x4_LDSM_N (same Copy_Traits: lane L names row L % 8 of matrix
// L / 8; register j of lane L receives codes 4 (L % 4) .. 4 (L % 4) + 3 of row L / 4 of matrix j). Row addresses
// travel by shfl (the copy is warp-synchronous, like ldmatrix), each lane loads its 2 packed bytes and widens them.
struct SM90_EMU_SU4_DU8x16_x4_LDSM_N {
  using SRegisters = cute::uint128_t[1];
  using DRegisters = uint32_t[4];

  CUTE_DEVICE static void copy(cute::uint128_t const& smem_src, uint32_t& d0, uint32_t& d1, uint32_t& d2,
                               uint32_t& d3) {
    const uint32_t my_row = cute::cast_smem_ptr_to_uint(&smem_src);
    const int lane = threadIdx.x & 31;
    uint32_t d[4];
    CUTE_UNROLL
    for (int j = 0; j < 4; ++j) {
      const uint32_t row = detail::shfl(my_row, 8 * j + (lane >> 2));
      uint16_t packed;
      asm volatile("ld.shared.u16 %0, [%1];" : "=h"(packed) : "r"(packed_chunk_address(row) + 2u * (lane & 3)));
      d[j] = widen_e2m1x4(packed);
    }
    d0 = d[0]; d1 = d[1]; d2 = d[2]; d3 = d[3];
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
                "emulation covers e2m1 x e2m1 (MXFP4 / NVFP4) and e4m3 x e2m1 with ue8m0 (W4A8) only");
};
template <>
struct EmulatedOp<SM90_EMU_16x8x32_TN_E4M3_E2M1::Native> {
  using type = SM90_EMU_16x8x32_TN_E4M3_E2M1;
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

// smem->register copy atoms: the unpacking ldmatrix of an e2m1 operand becomes its emulation; others stay.
template <class CopyAtom> struct EmulatedCopyAtom { using type = CopyAtom; };
template <class T>
struct EmulatedCopyAtom<cute::Copy_Atom<cute::SM100_SU4_DU8x16_x4_LDSM_N, T>> {
  using type = cute::Copy_Atom<SM90_EMU_SU4_DU8x16_x4_LDSM_N, T>;
};
template <class CopyAtoms> struct EmulatedCopyAtoms;
template <class DataAtom, class ScaleAtom>
struct EmulatedCopyAtoms<cute::tuple<DataAtom, ScaleAtom>> {
  using type = cute::tuple<typename EmulatedCopyAtom<DataAtom>::type, ScaleAtom>;
};

// The same collective with the emulated atom in its TiledMma and emulated smem->register copies (everything else
// as built for SM120).
template <class Collective> struct WithEmulatedAtom;
template <class DP, class TS, class EA, class SA, class EB, class SB, class TM, class GA, class LA, class CA,
          class TrA, class GB, class LB, class CB, class TrB>
struct WithEmulatedAtom<cutlass::gemm::collective::CollectiveMma<DP, TS, EA, SA, EB, SB, TM, GA, LA, CA, TrA,
                                                                 GB, LB, CB, TrB>> {
  using type = cutlass::gemm::collective::CollectiveMma<
      DP, TS, EA, SA, EB, SB, typename EmulateTiledMma<TM>::type, GA, LA, typename EmulatedCopyAtoms<CA>::type, TrA,
      GB, LB, typename EmulatedCopyAtoms<CB>::type, TrB>;
};

// Scheduler tags (GemmUniversal's 4th parameter) that select SM90 schedulers for the SM120 kernel.
struct Sm90PersistentSchedulerTag {};
struct Sm90StreamKSchedulerTag {};

}  // namespace flashinfer_sm12x::emulated

// The config's customization points for emulated builds (gemm/config.cuh): the atom and the SM90 schedulers.
namespace flashinfer_sm12x::gemm::detail {
template <class Collective>
struct MaybeEmulatedAtom<Collective, true> {
  using type = typename emulated::WithEmulatedAtom<Collective>::type;
};
template <class Schedule>
struct SchedulerTag<Schedule, true> {
  using type = cute::conditional_t<cute::is_same_v<Schedule, StreamK>, emulated::Sm90StreamKSchedulerTag,
                                   emulated::Sm90PersistentSchedulerTag>;
};
}  // namespace flashinfer_sm12x::gemm::detail

namespace cute {
template <>
struct MMA_Traits<flashinfer_sm12x::emulated::SM90_EMU_16x8x32_TN_E4M3_E2M1>
    : MMA_Traits<flashinfer_sm12x::emulated::SM90_EMU_16x8x32_TN_E4M3_E2M1::Native> {};
template <>
struct Copy_Traits<flashinfer_sm12x::emulated::SM90_EMU_SU4_DU8x16_x4_LDSM_N>
    : Copy_Traits<SM100_SU4_DU8x16_x4_LDSM_N> {};
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
