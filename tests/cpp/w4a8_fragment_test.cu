// SPDX-License-Identifier: Apache-2.0
// H100/H200 (sm_90a) test of the emulated W4A8 e2m1 operand path: byte TMA into the packed image, emulated unpacking
// ldmatrix, fp4_shift_B. Each register fragment it produces must equal the native path's fragment.
//
// The collective is CUTLASS's SM120 W4A8 collective (CollectiveBuilder: A e4m3, B e2m1, kind::mxf8f6f4) with the
// emulated atom and copy (WithEmulatedAtom), the producer side of EmulatedW4A8Mainloop. One CTA of size(TiledMma)
// threads loads B tile (n 1, k 1) of a random [2 TileN, 2 TileK] e2m1 matrix into pipeline stage 1 (smem filled with
// a poison pattern first) with the mainloop's byte TMA, then partitions smem and registers exactly as the
// collective's mma() does and copies every k-block. The host computes the native fragment from CUTLASS's traits:
// the TiledMma's B partition of an identity tensor gives each (thread, value) its (n, k), and the native
// ldmatrix + fp4_shift_B leave code(n, k) << 2 in that byte (the container kind::mxf8f6f4 takes).
// Covers the shipped W4A8 tile widths: N = 32, 64, 128 (TileM 128, TileK 128), Pingpong and Cooperative.
//
// Build: nvcc -std=c++17 --expt-relaxed-constexpr -O2 -I include -I $CUTLASS/include
//          -gencode=arch=compute_90a,code=sm_90a -o w4a8_fragment_test tests/cpp/w4a8_fragment_test.cu
// Run:   ./w4a8_fragment_test            (exit code 0 = PASS, 1 = FAIL)
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/arch/barrier.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "flashinfer_sm12x/emulation/blockscaled_mma_sm90.cuh"
#include "flashinfer_sm12x/gemm/mainloops/w4a8_emulated.cuh"

using namespace cute;

#define CHECK_CUDA(x)                                                                      \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

template <int TileN, class Schedule>
struct W4A8Case {
  using TileShape = Shape<_128, Int<TileN>, _128>;
  using Native = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm120, cutlass::arch::OpClassBlockScaledTensorOp,
      cutlass::mx_float8_t<cutlass::float_e4m3_t>, cutlass::layout::RowMajor, 16,
      cutlass::mx_float4_t<cutlass::float_e2m1_t>, cutlass::layout::ColumnMajor, 128, float, TileShape,
      Shape<_1, _1, _1>, cutlass::gemm::collective::StageCount<2>, Schedule>::CollectiveOp;
  using Mainloop = flashinfer_sm12x::gemm::EmulatedW4A8Mainloop<
      typename flashinfer_sm12x::emulated::WithEmulatedAtom<Native>::type>;
  static_assert(cute::is_same_v<typename Mainloop::SmemCopyAtomB,
                                Copy_Atom<flashinfer_sm12x::emulated::SM90_EMU_SU4_DU8x16_x4_LDSM_N, uint8_t>>,
                "the emulated collective must use the emulated unpacking copy");
};

// The test loads into the second pipeline stage (index 1): its offset is part of what is tested.
using LoadStage = _1;

template <class Mainloop, class TmaB>
__global__ void fragment_kernel(CUTE_GRID_CONSTANT TmaB const tma_b, int n_extent, int k_extent, uint8_t* out,
                                int* misaligned) {
  using TensorStorage = typename Mainloop::TensorStorage;
  using TileShape = typename Mainloop::TileShape;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  auto& storage = *reinterpret_cast<TensorStorage*>(smem_raw);
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem_raw + ((sizeof(TensorStorage) + 15) / 16) * 16);
  const int tid = threadIdx.x;
  if (tid == 0 && (cast_smem_ptr_to_uint(smem_raw) & 1023u) != 0) *misaligned = 1;
  for (int i = tid; i < int(sizeof(TensorStorage)); i += blockDim.x) smem_raw[i] = 0xA5;  // poison
  if (tid == 0) cutlass::arch::ClusterTransactionBarrier::init(bar, 1);
  cutlass::arch::fence_view_async_shared();
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  if (tid == 0) {
    constexpr int kBytes = size<1>(TileShape{}) * size<2>(TileShape{}) / 2;
    cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(bar, kBytes);
    Tensor gB = local_tile(tma_b.get_tma_tensor(make_shape(n_extent, k_extent, 1)), TileShape{},
                           make_coord(_, _, _), Step<Underscore, _1, _1>{});  // (BLK_N, BLK_K, n, k, l)
    auto tma = tma_b.get_slice(0);
    Tensor tBgB = tma.partition_S(gB(_, _, 1, _, 0));
    Tensor tBsB = tma.partition_D(Mainloop::packed_b_image(storage));
    copy(tma_b.with(*bar), tBgB(_, _, _, 1), tBsB(_, _, _, LoadStage{}));
  }
  cutlass::arch::ClusterTransactionBarrier::wait(bar, 0);

  // The collective's consumer-side partitioning (sm120_blockscaled_mma_tma.hpp, mma()).
  typename Mainloop::TiledMma tiled_mma;
  auto thr_mma = tiled_mma.get_thread_slice(tid);
  Tensor sB = make_tensor(make_smem_ptr(storage.smem_B.begin()), typename Mainloop::SmemLayoutB{});
  Tensor tCrB = thr_mma.partition_fragment_B(sB(_, _, Int<0>{}));
  auto smem_tiled_copy_B = make_tiled_copy_B(typename Mainloop::SmemCopyAtomB{}, tiled_mma);
  auto smem_thr_copy_B = smem_tiled_copy_B.get_thread_slice(tid);
  Tensor tCsB = smem_thr_copy_B.partition_S(as_position_independent_swizzle_tensor(sB));
  Tensor tCrB_copy_view = smem_thr_copy_B.retile_D(tCrB);
  using MMAOp = typename Mainloop::TiledMma::MMA_Op;
  for_each(make_int_sequence<size<2>(tCrB)>{}, [&](auto k_block) {
    copy(smem_tiled_copy_B, tCsB(_, _, k_block, LoadStage{}), tCrB_copy_view(_, _, k_block));
    fp4_shift_B(MMAOp{}, tCrB_copy_view(_, _, k_block));
  });
  CUTE_UNROLL
  for (int i = 0; i < size(tCrB); ++i) out[tid * size(tCrB) + i] = tCrB(i);
}

template <class Case>
static bool run(char const* name, unsigned seed) {
  using Mainloop = typename Case::Mainloop;
  using TileShape = typename Case::TileShape;
  constexpr int TN = size<1>(TileShape{}), TK = size<2>(TileShape{});
  const int N = 2 * TN, K = 2 * TK;
  std::mt19937 rng(seed);
  std::vector<uint8_t> codes(size_t(N) * K), packed(size_t(N) * K / 2);
  for (auto& c : codes) c = uint8_t(rng() % 16);
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; k += 2)
      packed[(size_t(n) * K + k) / 2] = uint8_t(codes[size_t(n) * K + k] | (codes[size_t(n) * K + k + 1] << 4));

  using ElementB = typename Mainloop::ElementB;
  void* dB;
  CHECK_CUDA(cudaMalloc(&dB, packed.size()));
  CHECK_CUDA(cudaMemcpy(dB, packed.data(), packed.size(), cudaMemcpyHostToDevice));
  const typename Mainloop::StrideB stride_b{int64_t(K), _1{}, int64_t(N) * K};  // [N, K] K-major, one batch
  auto tma_b = Mainloop::make_b_tma(static_cast<ElementB const*>(dB), make_shape(N, K, 1), stride_b);

  constexpr int threads = size(typename Mainloop::TiledMma{});
  typename Mainloop::TiledMma tiled_mma;
  using FragShape = decltype(tiled_mma.get_thread_slice(0).partition_fragment_B(
      make_tensor(make_smem_ptr<uint8_t>(nullptr), typename Mainloop::SmemLayoutB{})(_, _, Int<0>{})).shape());
  constexpr int frag = size(FragShape{});
  uint8_t* dOut;
  int* dMis;
  CHECK_CUDA(cudaMalloc(&dOut, threads * frag));
  CHECK_CUDA(cudaMalloc(&dMis, sizeof(int)));
  CHECK_CUDA(cudaMemset(dMis, 0, sizeof(int)));
  const int smem = int(((sizeof(typename Mainloop::TensorStorage) + 15) / 16) * 16 + 16);
  auto kernel = fragment_kernel<Mainloop, decltype(tma_b)>;
  CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<1, threads, smem>>>(tma_b, N, K, dOut, dMis);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<uint8_t> got(size_t(threads) * frag);
  int misaligned = 0;
  CHECK_CUDA(cudaMemcpy(got.data(), dOut, got.size(), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(&misaligned, dMis, sizeof(int), cudaMemcpyDeviceToHost));

  // The native fragment, from the traits: (thread, value) -> (n, k) of the tile; the byte is code << 2.
  Tensor coords = make_identity_tensor(make_shape(Int<TN>{}, Int<TK>{}));
  int bad = 0;
  for (int t = 0; t < threads; ++t) {
    Tensor tCcB = tiled_mma.get_thread_slice(t).partition_B(coords);
    static_assert(decltype(size(tCcB))::value == frag, "fragment sizes differ");
    for (int i = 0; i < frag; ++i) {
      auto c = tCcB(i);
      const int n = TN + int(get<0>(c)), k = TK + int(get<1>(c));
      const uint8_t want = uint8_t(codes[size_t(n) * K + k] << 2);
      if (got[size_t(t) * frag + i] != want) {
        if (bad < 5)
          std::printf("  %s: thread %d value %d (n=%d k=%d): got 0x%02x want 0x%02x\n", name, t, i, n, k,
                      got[size_t(t) * frag + i], want);
        ++bad;
      }
    }
  }
  std::printf("%s: %d threads x %d bytes, %d mismatches%s -> %s\n", name, threads, frag, bad,
              misaligned ? " (smem base not 1024-aligned)" : "", bad == 0 && !misaligned ? "PASS" : "FAIL");
  cudaFree(dB); cudaFree(dOut); cudaFree(dMis);
  return bad == 0 && !misaligned;
}

int main() {
  bool ok = true;
  ok &= run<W4A8Case<128, cutlass::gemm::KernelTmaWarpSpecializedMxf8f6f4Sm120>>("W4A8 B 128x128 Cooperative", 11);
  ok &= run<W4A8Case<64, cutlass::gemm::KernelTmaWarpSpecializedPingpongMxf8f6f4Sm120>>("W4A8 B 128x64 Pingpong", 12);
  ok &= run<W4A8Case<32, cutlass::gemm::KernelTmaWarpSpecializedPingpongMxf8f6f4Sm120>>("W4A8 B 128x32 Pingpong", 13);
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
