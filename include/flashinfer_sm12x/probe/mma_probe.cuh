// SPDX-License-Identifier: Apache-2.0
// The MXFP4 block-scaled MMA probe: one warp, one m16n8 tile, K = 64 * KTiles.
//
// Why it exists: it is the smallest program whose SASS must hold the native block-scaled MMA
// (OMMA.SF.16864.F32.E2M1.E2M1.E8), so it proves the toolchain and the arch targets (compile-proof harness),
// and on an SM12x GPU it checks the fragment and scale-lane layouts of the instruction against the CPU
// reference (tests/sm12x). Layouts (g = lane >> 2, t = lane & 3, 8 e2m1 per 32-bit register):
//   A: a0 = row g, k 8t..8t+7; a1 = row g+8; a2 = row g, k 32+8t..; a3 = row g+8, k 32+8t..
//   B: b0 = col g, k 8t..8t+7; b1 = col g, k 32+8t..
//   D: d0,d1 = row g, cols 2t,2t+1; d2,d3 = row g+8
//   SFA (scale_vec::2X, thread-id 0, byte-id 0): lanes with lane%4 in {0,1} give row 8*(lane%2) + lane/4,
//        low byte = scale of k 0..31, next byte = scale of k 32..63. SFB: lane%4 == 0 gives column lane/4.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM120_ALL) && !defined(__CUDA_ARCH_FEAT_SM121_ALL) && \
    !(defined(__CUDA_ARCH_FAMILY_SPECIFIC__) && __CUDA_ARCH_FAMILY_SPECIFIC__ >= 1200)
#error "flashinfer_sm12x: the block-scaled MMA needs an arch-specific target: sm_120a, sm_121a or sm_120f (not sm_120)"
#endif

namespace flashinfer_sm12x::mma_probe {

__device__ __forceinline__ void mma_mxfp4_m16n8k64(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                   uint32_t sfa, uint32_t sfb) {
  const uint16_t byte_id = 0, thread_id = 0;
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.kind::mxf4nvf4.block_scale.scale_vec::2X.f32.e2m1.e2m1.f32.ue8m0 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3}, %10, {%11, %12}, %13, {%14, %15};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
        "r"(sfa), "h"(byte_id), "h"(thread_id), "r"(sfb), "h"(byte_id), "h"(thread_id));
}

__device__ __forceinline__ uint32_t load_u32(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// a [16, K/2], b [8, K/2] packed e2m1 (element 2i in the low nibble); sfa [16, K/32], sfb [8, K/32] ue8m0
// row-major; d [16, 8] fp32 row-major.
template <int KTiles>
__global__ void __launch_bounds__(32) mma_probe_kernel(const uint8_t* __restrict__ a, const uint8_t* __restrict__ b,
                                                       const uint8_t* __restrict__ sfa,
                                                       const uint8_t* __restrict__ sfb, float* __restrict__ d) {
  constexpr int kRowBytes = KTiles * 32;
  constexpr int kScaleCols = KTiles * 2;
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  const int scale_row = 8 * (lane % 2) + lane / 4;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int kt = 0; kt < KTiles; ++kt) {
    const int k0 = kt * 32 + 4 * t;  // byte offset of this thread's first 8 elements in the 64-wide k tile
    const uint32_t af[4] = {load_u32(a + g * kRowBytes + k0), load_u32(a + (g + 8) * kRowBytes + k0),
                            load_u32(a + g * kRowBytes + k0 + 16), load_u32(a + (g + 8) * kRowBytes + k0 + 16)};
    const uint32_t bf[2] = {load_u32(b + g * kRowBytes + k0), load_u32(b + g * kRowBytes + k0 + 16)};
    const uint32_t sa = sfa[scale_row * kScaleCols + 2 * kt] | (uint32_t(sfa[scale_row * kScaleCols + 2 * kt + 1]) << 8);
    const uint32_t sb = sfb[g * kScaleCols + 2 * kt] | (uint32_t(sfb[g * kScaleCols + 2 * kt + 1]) << 8);
    mma_mxfp4_m16n8k64(acc, af, bf, sa, sb);
  }
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

template <int KTiles>
cudaError_t launch(const uint8_t* a, const uint8_t* b, const uint8_t* sfa, const uint8_t* sfb, float* d,
                   cudaStream_t stream) {
  mma_probe_kernel<KTiles><<<1, 32, 0, stream>>>(a, b, sfa, sfb, d);
  return cudaGetLastError();
}

}  // namespace flashinfer_sm12x::mma_probe
