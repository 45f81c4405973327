// SPDX-License-Identifier: Apache-2.0
// H100/H200 (sm_90a) test of the emulated W4A8 MMA atom: kind::mxf8f6f4 m16n8k32, A e4m3, B e2m1, ue8m0 per 32.
//
// One warp computes D[16x8] = C + (A.SFA)[16x32] x (B.SFB)[8x32]^T through SM90_EMU_16x8x32_TN_E4M3_E2M1. The
// fragments come from CuTe's partitioning with the native op's MMA_Traits (TiledMMA partition_A/B/C for data, the
// traits' SFALayout/SFBLayout for scales); B enters as the unpacking ldmatrix leaves it (one e2m1 code per byte in
// bits 3:0) and goes through fp4_shift_B(MMAOp{}, ...) exactly as in the collective, then cute::gemm on zipped
// (data, scale) tensors. The host reference decodes E4M3 / E2M1 / E8M0 itself, in float64.
// Iteration 0 covers every finite e4m3 code (each twice) and every e2m1 code (each 16 times) with unit scales;
// the others are random codes and scales.
//
// Build: nvcc -std=c++17 --expt-relaxed-constexpr -O2 -I include -I $CUTLASS/include
//          -gencode=arch=compute_90a,code=sm_90a -o w4a8_atom_test tests/cpp/w4a8_atom_test.cu
// Run:   ./w4a8_atom_test            (exit code 0 = PASS, 1 = FAIL)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "flashinfer_sm12x/emulation/blockscaled_mma_sm90.cuh"

using namespace cute;
using Op = flashinfer_sm12x::emulated::SM90_EMU_16x8x32_TN_E4M3_E2M1;

#define CHECK_CUDA(x)                                                                      \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

// A: [16][32] e4m3 codes, B: [8][32] e2m1 codes (one per byte, bits 3:0), SFA: [16], SFB: [8] (ue8m0),
// C, D: [16][8] fp32 row-major.
__global__ void atom_kernel(uint8_t const* A, uint8_t const* B, uint8_t const* SFA, uint8_t const* SFB,
                            float const* C, float* D) {
  using Traits = MMA_Traits<Op>;
  using SF = typename Traits::ValTypeSF;
  const int lane = threadIdx.x;

  Tensor gA = make_tensor(make_gmem_ptr(A), make_layout(make_shape(_16{}, _32{}), LayoutRight{}));
  Tensor gB = make_tensor(make_gmem_ptr(B), make_layout(make_shape(_8{}, _32{}), LayoutRight{}));
  Tensor gC = make_tensor(make_gmem_ptr(C), make_layout(make_shape(_16{}, _8{}), LayoutRight{}));
  Tensor gD = make_tensor(make_gmem_ptr(D), make_layout(make_shape(_16{}, _8{}), LayoutRight{}));
  // One scale per row / column for the whole k32 block: a (MN, K) view with stride 0 along K.
  Tensor gSFA = make_tensor(make_gmem_ptr<SF>(SFA), make_layout(make_shape(_16{}, _32{}), make_stride(_1{}, _0{})));
  Tensor gSFB = make_tensor(make_gmem_ptr<SF>(SFB), make_layout(make_shape(_8{}, _32{}), make_stride(_1{}, _0{})));

  auto tiled_mma = make_tiled_mma(Op{});
  auto thr_mma = tiled_mma.get_slice(lane);
  Tensor tCgA = thr_mma.partition_A(gA);
  Tensor tCrA = thr_mma.partition_fragment_A(gA);
  Tensor tCgB = thr_mma.partition_B(gB);
  Tensor tCrB = thr_mma.partition_fragment_B(gB);
  Tensor tCgC = thr_mma.partition_C(gC);
  Tensor tCgD = thr_mma.partition_C(gD);
  Tensor tCrC = thr_mma.partition_fragment_C(gC);
  copy(tCgA, tCrA);
  copy(tCgB, tCrB);
  copy(tCgC, tCrC);
  // The collective's step between the unpacking ldmatrix and the MMA (ADL picks the emulated op's overload).
  fp4_shift_B(Op{}, tCrB(_, _, 0));

  Tensor tSFA = gSFA.compose(typename Traits::SFALayout{})(lane, _);
  Tensor tSFB = gSFB.compose(typename Traits::SFBLayout{})(lane, _);
  auto frag_sf_layout = make_layout(make_shape(make_shape(_32{}, _1{}), _1{}), make_stride(make_stride(_0{}, _1{}), _0{}));
  Tensor rSFA = make_tensor<SF>(frag_sf_layout);
  Tensor rSFB = make_tensor<SF>(frag_sf_layout);
  for (int v = 0; v < 32; ++v) {
    rSFA(v, 0) = tSFA(v);
    rSFB(v, 0) = tSFB(v);
  }
  cute::gemm(tiled_mma, make_zip_tensor(tCrA(_, _, 0), rSFA), make_zip_tensor(tCrB(_, _, 0), rSFB), tCrC);
  copy(tCrC, tCgD);
}

// ---------------------------------------------------------------- host reference
static double e4m3_to_double(uint32_t x) {
  const int e = int((x >> 3) & 15u), m = int(x & 7u);
  const double mag = e ? std::ldexp(1.0 + m / 8.0, e - 7) : std::ldexp(m / 8.0, -6);
  return (x & 0x80u) ? -mag : mag;
}
static double e2m1_to_double(uint32_t nib) {
  static const double mag[8] = {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0};
  return (nib & 8u) ? -mag[nib & 7u] : mag[nib & 7u];
}
static double ue8m0_to_double(uint32_t e) { return std::ldexp(1.0, int(e) - 127); }
static bool is_e4m3_nan(uint8_t x) { return (x & 0x7Fu) == 0x7Fu; }

int main() {
  std::mt19937 rng(4242);
  const int iters = 201;  // iteration 0: every code; then 200 random ones
  uint8_t *dA, *dB, *dSFA, *dSFB;
  float *dC, *dD;
  CHECK_CUDA(cudaMalloc(&dA, 16 * 32));
  CHECK_CUDA(cudaMalloc(&dB, 8 * 32));
  CHECK_CUDA(cudaMalloc(&dSFA, 16));
  CHECK_CUDA(cudaMalloc(&dSFB, 8));
  CHECK_CUDA(cudaMalloc(&dC, 16 * 8 * 4));
  CHECK_CUDA(cudaMalloc(&dD, 16 * 8 * 4));
  double worst = 0.0;
  bool ok = true;
  for (int it = 0; it < iters; ++it) {
    std::vector<uint8_t> A(16 * 32), B(8 * 32), SFA(16), SFB(8);
    std::vector<float> Cm(16 * 8), D(16 * 8);
    if (it == 0) {
      for (int i = 0; i < 16 * 32; ++i) A[i] = is_e4m3_nan(uint8_t(i)) ? uint8_t(i - 1) : uint8_t(i);
      for (int i = 0; i < 8 * 32; ++i) B[i] = uint8_t(i % 16);
      for (auto& x : SFA) x = 127;
      for (auto& x : SFB) x = 127;
      for (auto& x : Cm) x = 0.f;
    } else {
      for (auto& x : A) { x = uint8_t(rng()); if (is_e4m3_nan(x)) x = 0; }
      for (auto& x : B) x = uint8_t(rng() % 16);
      for (auto& x : SFA) x = uint8_t(100 + rng() % 50);
      for (auto& x : SFB) x = uint8_t(100 + rng() % 50);
      for (auto& x : Cm) x = float(int(rng() % 17) - 8) * 0.25f;
    }
    CHECK_CUDA(cudaMemcpy(dA, A.data(), A.size(), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dB, B.data(), B.size(), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dSFA, SFA.data(), SFA.size(), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dSFB, SFB.data(), SFB.size(), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dC, Cm.data(), Cm.size() * 4, cudaMemcpyHostToDevice));
    atom_kernel<<<1, 32>>>(dA, dB, dSFA, dSFB, dC, dD);
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaMemcpy(D.data(), dD, D.size() * 4, cudaMemcpyDeviceToHost));
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        double ref = Cm[m * 8 + n], mag = std::fabs(ref);
        for (int k = 0; k < 32; ++k) {
          double term = e4m3_to_double(A[m * 32 + k]) * e2m1_to_double(B[n * 32 + k]) *
                        ue8m0_to_double(SFA[m]) * ue8m0_to_double(SFB[n]);
          ref += term;
          mag += std::fabs(term);
        }
        const double err = std::fabs(double(D[m * 8 + n]) - ref);
        const double tol = 1e-5 * mag + 1e-30;  // fp32 sums in an order the reference does not follow
        if (mag > 0 && err / mag > worst) worst = err / mag;
        if (!(err <= tol)) {
          if (ok) std::printf("  mismatch iter %d (m=%d n=%d): got %.9g ref %.9g\n", it, m, n, double(D[m * 8 + n]), ref);
          ok = false;
        }
      }
  }
  std::printf("W4A8 (e4m3 x e2m1, ue8m0/32): %d iterations (first: every code), max error / sum|terms| %.3g -> %s\n",
              iters, worst, ok ? "PASS" : "FAIL");
  cudaFree(dA); cudaFree(dB); cudaFree(dSFA); cudaFree(dSFB); cudaFree(dC); cudaFree(dD);
  return ok ? 0 : 1;
}
