// SPDX-License-Identifier: Apache-2.0
// H100 (sm_90a) test of the emulated SM120 block-scaled MMA atom (emulated_blockscaled_mma.cuh).
//
// One warp computes D[16x8] = C + (A.SFA)[16x64] x (B.SFB)[8x64]^T through the emulated atom. The
// fragments are built with CuTe's partitioning of the SM120 MMA_Traits layouts (TiledMMA partition_A/B/C
// for data, the traits' SFALayout/SFBLayout for scales, composed exactly like the CUTLASS collective
// does) and the atom is invoked through cute::gemm on zipped (data, scale) tensors, i.e. the same path
// the SM120 collective takes. The host reference decodes E2M1 / E8M0 / UE4M3 itself.
//
// Build: nvcc -std=c++17 --expt-relaxed-constexpr -O2 -I include -I $CUTLASS/include
//          -gencode=arch=compute_90a,code=sm_90a -o emulated_atom_test tests/cpp/emulated_atom_test.cu
// Run:   ./emulated_atom_test            (exit code 0 = PASS, 1 = FAIL)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "flashinfer_sm12x/emulation/blockscaled_mma_sm90.cuh"

using namespace cute;
using flashinfer_sm12x::emulated::SM90_EMU_16x8x64_TN_VS;

#define CHECK_CUDA(x)                                                                   \
  do {                                                                                  \
    cudaError_t e_ = (x);                                                               \
    if (e_ != cudaSuccess) {                                                            \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

// A: [16][64] e2m1 K-major (32 bytes per row), B: [8][64] e2m1 K-major, SFA: [16][64/VS], SFB: [8][64/VS],
// C, D: [16][8] fp32 row-major.
template <class Op>
__global__ void atom_kernel(uint8_t const* A, uint8_t const* B, uint8_t const* SFA, uint8_t const* SFB,
                            float const* C, float* D) {
  using Traits = MMA_Traits<Op>;
  using SF = typename Traits::ValTypeSF;
  constexpr int VS = Traits::SFVecSize;
  constexpr int NSF = 64 / VS;
  const int lane = threadIdx.x;

  Tensor gA = make_tensor(make_gmem_ptr<uint4_t>(A), make_layout(make_shape(_16{}, _64{}), LayoutRight{}));
  Tensor gB = make_tensor(make_gmem_ptr<uint4_t>(B), make_layout(make_shape(_8{}, _64{}), LayoutRight{}));
  Tensor gC = make_tensor(make_gmem_ptr(C), make_layout(make_shape(_16{}, _8{}), LayoutRight{}));
  Tensor gD = make_tensor(make_gmem_ptr(D), make_layout(make_shape(_16{}, _8{}), LayoutRight{}));
  // Scales as (MN, K) tensors that are constant across each VS-wide k block (stride 0), like the
  // collective's smem SF layout.
  auto sf_layout = [](auto mn) {
    return make_layout(make_shape(mn, make_shape(Int<VS>{}, Int<NSF>{})),
                       make_stride(Int<NSF>{}, make_stride(_0{}, _1{})));
  };
  Tensor gSFA = make_tensor(make_gmem_ptr<SF>(SFA), sf_layout(_16{}));
  Tensor gSFB = make_tensor(make_gmem_ptr<SF>(SFB), sf_layout(_8{}));

  auto tiled_mma = make_tiled_mma(Op{});
  auto thr_mma = tiled_mma.get_slice(lane);

  Tensor tCgA = thr_mma.partition_A(gA);            // (MMA, 1, 1)
  Tensor tCrA = thr_mma.partition_fragment_A(gA);
  Tensor tCgB = thr_mma.partition_B(gB);
  Tensor tCrB = thr_mma.partition_fragment_B(gB);
  Tensor tCgC = thr_mma.partition_C(gC);
  Tensor tCgD = thr_mma.partition_C(gD);
  Tensor tCrC = thr_mma.partition_fragment_C(gC);  // (MMA, 1, 1)
  copy(tCgA, tCrA);
  copy(tCgB, tCrB);
  copy(tCgC, tCrC);

  // (T32, V64) views of the scales through the traits' SF layouts.
  Tensor tSFA = gSFA.compose(typename Traits::SFALayout{})(lane, _);
  Tensor tSFB = gSFB.compose(typename Traits::SFBLayout{})(lane, _);
  // Register fragments with the collective's shape (V64, 1): one physical byte per k block.
  auto frag_sf_layout = make_layout(make_shape(make_shape(Int<VS>{}, Int<NSF>{}), _1{}),
                                    make_stride(make_stride(_0{}, _1{}), _0{}));
  Tensor rSFA = make_tensor<SF>(frag_sf_layout);
  Tensor rSFB = make_tensor<SF>(frag_sf_layout);
  for (int v = 0; v < 64; ++v) {
    rSFA(v, 0) = tSFA(v);
    rSFB(v, 0) = tSFB(v);
  }

  cute::gemm(tiled_mma, make_zip_tensor(tCrA(_, _, 0), rSFA), make_zip_tensor(tCrB(_, _, 0), rSFB), tCrC);
  copy(tCrC, tCgD);
}

// ---------------------------------------------------------------- host reference
static float e2m1_to_float(uint32_t nib) {
  static const float mag[8] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
  return (nib & 8u) ? -mag[nib & 7u] : mag[nib & 7u];
}
static float ue8m0_to_float(uint32_t e) {
  return e == 255u ? NAN : std::ldexp(1.0f, int(e) - 127);
}
static float ue4m3_to_float(uint32_t x) {
  x &= 0x7Fu;
  if (x == 0x7Fu) return NAN;
  int e = int(x >> 3), m = int(x & 7u);
  return e ? std::ldexp(1.0f + m / 8.0f, e - 7) : std::ldexp(m / 8.0f, -6);
}
static uint32_t nibble(std::vector<uint8_t> const& v, int row, int k) {  // 32 bytes per row
  uint8_t byte = v[row * 32 + k / 2];
  return (k & 1) ? (byte >> 4) : (byte & 0xF);
}

template <class Op>
static bool run_case(char const* name, bool nvfp4, unsigned seed, int iters) {
  constexpr int VS = MMA_Traits<Op>::SFVecSize, NSF = 64 / VS;
  std::mt19937 rng(seed);
  uint8_t *dA, *dB, *dSFA, *dSFB;
  float *dC, *dD;
  CHECK_CUDA(cudaMalloc(&dA, 16 * 32));
  CHECK_CUDA(cudaMalloc(&dB, 8 * 32));
  CHECK_CUDA(cudaMalloc(&dSFA, 16 * NSF));
  CHECK_CUDA(cudaMalloc(&dSFB, 8 * NSF));
  CHECK_CUDA(cudaMalloc(&dC, 16 * 8 * 4));
  CHECK_CUDA(cudaMalloc(&dD, 16 * 8 * 4));
  double worst = 0.0, worst_abs = 0.0;
  bool ok = true;
  for (int it = 0; it < iters; ++it) {
    std::vector<uint8_t> A(16 * 32), B(8 * 32), SFA(16 * NSF), SFB(8 * NSF);
    std::vector<float> Cm(16 * 8), D(16 * 8);
    for (auto& x : A) x = uint8_t(rng());
    for (auto& x : B) x = uint8_t(rng());
    // Scales spread over a wide exponent range but away from NaN / inf of the product.
    for (auto& x : SFA) x = nvfp4 ? uint8_t(8 + rng() % 110) : uint8_t(100 + rng() % 50);
    for (auto& x : SFB) x = nvfp4 ? uint8_t(8 + rng() % 110) : uint8_t(100 + rng() % 50);
    for (auto& x : Cm) x = float(int(rng() % 17) - 8) * 0.25f;
    CHECK_CUDA(cudaMemcpy(dA, A.data(), A.size(), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dB, B.data(), B.size(), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dSFA, SFA.data(), SFA.size(), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dSFB, SFB.data(), SFB.size(), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dC, Cm.data(), Cm.size() * 4, cudaMemcpyHostToDevice));
    atom_kernel<Op><<<1, 32>>>(dA, dB, dSFA, dSFB, dC, dD);
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaMemcpy(D.data(), dD, D.size() * 4, cudaMemcpyDeviceToHost));
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        double ref = Cm[m * 8 + n], mag = std::fabs(ref);
        for (int k = 0; k < 64; ++k) {
          double sa = nvfp4 ? ue4m3_to_float(SFA[m * NSF + k / VS]) : ue8m0_to_float(SFA[m * NSF + k / VS]);
          double sb = nvfp4 ? ue4m3_to_float(SFB[n * NSF + k / VS]) : ue8m0_to_float(SFB[n * NSF + k / VS]);
          double term = double(e2m1_to_float(nibble(A, m, k))) * e2m1_to_float(nibble(B, n, k)) * sa * sb;
          ref += term;
          mag += std::fabs(term);
        }
        double err = std::fabs(double(D[m * 8 + n]) - ref);
        double tol = 1e-5 * mag + 1e-30;  // fp32 accumulation, order differs from the reference
        double rel = err / (mag > 0 ? mag : 1.0);
        if (rel > worst) worst = rel;
        if (err > worst_abs) worst_abs = err;
        if (!(err <= tol)) {
          if (ok) std::printf("  %s mismatch iter %d (m=%d n=%d): got %.9g ref %.9g\n", name, it, m, n,
                              double(D[m * 8 + n]), ref);
          ok = false;
        }
      }
  }
  std::printf("%s: %d iters, max abs error %.3g, max error / sum|terms| %.3g -> %s\n", name, iters,
              worst_abs, worst, ok ? "PASS" : "FAIL");
  cudaFree(dA); cudaFree(dB); cudaFree(dSFA); cudaFree(dSFB); cudaFree(dC); cudaFree(dD);
  return ok;
}

int main() {
  bool ok = true;
  ok &= run_case<SM90_EMU_16x8x64_TN_VS<cutlass::float_ue8m0_t, 32>>("MXFP4 (e2m1 x e2m1, ue8m0/32)", false, 1234, 200);
  ok &= run_case<SM90_EMU_16x8x64_TN_VS<cutlass::float_ue4m3_t, 16>>("NVFP4 (e2m1 x e2m1, ue4m3/16)", true, 5678, 200);
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
