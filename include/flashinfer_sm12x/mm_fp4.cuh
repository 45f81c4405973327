// Dense block-scaled GEMM for SM120/SM121 (RTX 50xx, RTX PRO 6000, DGX Spark):
//
//   D[M,N] = alpha * (A[M,K] . SFA) x (B[N,K] . SFB)^T       (TN: A and B both K-major, D row-major)
//
// Design
// - Built entirely from CUTLASS 4.5 SM120 pieces: the block-scaled collective builder
//   (sm120_blockscaled_mma_builder.inl -> collective/sm120_blockscaled_mma_tma.hpp), the SM120 TMA
//   epilogue builder and GemmUniversal, which for SM120 dispatches to the SM90 warp-specialized
//   Pingpong / Cooperative kernels. Loads are TMA (no multicast: cluster 1x1x1), smem->reg LDSM,
//   MMA is the warp-level `mma.sync ... block_scale` (SASS OMMA.SF for e2m1 x e2m1, QMMA.SF for W4A8).
// - Scale factors use the "128x4" layout (cutlass::detail::Sm1xxBlockScaledConfig, identical to
//   FlashInfer's layout_128x4); the host builds the CuTe layouts from (M, N, K) only.
// - The epilogue has no C operand (ElementC = void), so beta is 0 and no C tile is loaded; alpha is a
//   device pointer (read by the epilogue on the GPU, never by the host; nullptr means alpha = 1).
// - Stage count: StageCountAutoCarveout<sizeof(epilogue SharedStorage)>; the builder additionally
//   subtracts the CLC scheduler storage. smem_bytes<Config>() is the kernel SharedStorage size and is
//   static_assert-ed to fit the 101,376 B SM120 limit.
// - Emulated = true (see emulated_blockscaled_mma.cuh) keeps the SAME collective and kernel templates
//   and swaps what SM90 (H100) lacks: the MMA atom (block-scaled OMMA -> bf16 mma.sync on dequantized
//   e2m1, same register/fragment interface), the tile scheduler (the SM120 default uses CLC
//   instructions; the SM90 persistent one is used) and the fp4 TMA element type (Blackwell's packed
//   16U4 TMA type -> UINT8 with half the K extent, producer side only). Build for sm_90a.
//   MXFP4 and NVFP4 only (W4A8 would also need SM90 copies for its unpacked-fp4 smem path).
// - Measured (nvcc 13.0, 128x128x128, bf16 out): MXFP4 Pingpong/Cooperative 5 stages, 97,280 B;
//   NVFP4 4 stages, 83,968 B; W4A8 only 2 stages, 77,824 B (fp4 is unpacked to 8 bit in smem and the
//   16U4_ALIGN16B TMA box must be 128 wide in K) - prefer a narrower N tile for W4A8.
// - TileM is 64 or a multiple of 128. CUTLASS's collective needs whole 128-row scale atoms; 64-row Pingpong
//   tiles (MXFP4 / NVFP4) use our mainloop, mm_fp4_m64_mainloop.cuh, which documents that design.
#pragma once

#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/sm100_blockscaled_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/util/packed_stride.hpp"  // tools/util/include

#include "flashinfer_sm12x/emulated_blockscaled_mma.cuh"
#include "flashinfer_sm12x/grouped_mm_fp4.cuh"
#include "flashinfer_sm12x/mm_fp4_m64_mainloop.cuh"

namespace flashinfer_sm12x::mm_fp4 {

// ---------------------------------------------------------------------------------------------
// Compile-time tags
// ---------------------------------------------------------------------------------------------
struct Mxfp4 {};       // e2m1 x e2m1, ue8m0 scale per 32 (kind::mxf4nvf4, scale_vec::2X)
struct Nvfp4 {};       // e2m1 x e2m1, ue4m3 scale per 16 (kind::mxf4nvf4, scale_vec::4X)
struct Mxfp8Mxfp4 {};  // W4A8: A e4m3, B e2m1, ue8m0 per 32 (kind::mxf8f6f4, FP8 rate)

struct Pingpong {};
struct Cooperative {};
struct StreamK {};     // Cooperative kernel + stream-K tile scheduler

namespace detail {

template <class Format> struct FormatTraits;

template <> struct FormatTraits<Mxfp4> {
  static constexpr int kVecSize = 32;
  using ElementA = cutlass::mx_float4_t<cutlass::float_e2m1_t>;
  using ElementB = cutlass::mx_float4_t<cutlass::float_e2m1_t>;
  static constexpr int AlignmentA = 32;  // 128-bit TMA rows
  static constexpr int AlignmentB = 32;
  using PingpongTag    = cutlass::gemm::KernelTmaWarpSpecializedPingpongMxf4Sm120;
  using CooperativeTag = cutlass::gemm::KernelTmaWarpSpecializedMxf4Sm120;
};

template <> struct FormatTraits<Nvfp4> {
  static constexpr int kVecSize = 16;
  using ElementA = cutlass::nv_float4_t<cutlass::float_e2m1_t>;
  using ElementB = cutlass::nv_float4_t<cutlass::float_e2m1_t>;
  static constexpr int AlignmentA = 32;
  static constexpr int AlignmentB = 32;
  using PingpongTag    = cutlass::gemm::KernelTmaWarpSpecializedPingpongNvf4Sm120;
  using CooperativeTag = cutlass::gemm::KernelTmaWarpSpecializedNvf4Sm120;
};

template <> struct FormatTraits<Mxfp8Mxfp4> {
  static constexpr int kVecSize = 32;
  using ElementA = cutlass::mx_float8_t<cutlass::float_e4m3_t>;
  using ElementB = cutlass::mx_float4_t<cutlass::float_e2m1_t>;
  static constexpr int AlignmentA = 16;   // 128 bits of fp8
  static constexpr int AlignmentB = 128;  // kind::mxf8f6f4 keeps fp4 unpacked in smem: 128-element rows
  using PingpongTag    = cutlass::gemm::KernelTmaWarpSpecializedPingpongMxf8f6f4Sm120;
  using CooperativeTag = cutlass::gemm::KernelTmaWarpSpecializedMxf8f6f4Sm120;
};

template <class Format, class Schedule>
struct MainloopScheduleTag {
  using type = cute::conditional_t<cute::is_same_v<Schedule, Pingpong>,
                                   typename FormatTraits<Format>::PingpongTag,
                                   typename FormatTraits<Format>::CooperativeTag>;
};

// Tile-scheduler tag handed to GemmUniversal. Native: CUTLASS's SM120 defaults (CLC persistent,
// or stream-K). Emulated: tags that map to the SM90 schedulers (see emulated_blockscaled_mma.cuh).
template <class Schedule, bool Emulated>
struct SchedulerTag {
  using type = cute::conditional_t<cute::is_same_v<Schedule, StreamK>,
                                   cutlass::gemm::StreamKScheduler, void>;
};
template <class Schedule>
struct SchedulerTag<Schedule, true> {
  using type = cute::conditional_t<cute::is_same_v<Schedule, StreamK>,
                                   emulated::Sm90StreamKSchedulerTag,
                                   emulated::Sm90PersistentSchedulerTag>;
};

// Lazy: only touch the emulation metafunctions when asked for. 128-row tiles: CUTLASS's collective (emulated:
// with the SM90 atom and byte-typed A/B TMA). 64-row tiles: our mainloop over the collective CUTLASS builds
// for that tile (emulated: the same mainloop, only the atom differs; it always loads A/B as bytes).
// Grouped GEMMs (grouped_mm_fp4.cuh): packed e2m1 x e2m1 through a byte-TMA mainloop (ByteTmaMainloop for 128-row
// tiles, natively too); W4A8 (unpacked e2m1 in smem, native only) through GroupedCollectiveMainloop.
template <class Collective, bool Emulated>
struct MaybeEmulatedAtom { using type = Collective; };
template <class Collective>
struct MaybeEmulatedAtom<Collective, true> { using type = typename emulated::WithEmulatedAtom<Collective>::type; };

template <class Collective, bool Emulated, bool M64, bool Grouped, bool PackedFp4>
struct SelectMainloop {
  using WithAtom = typename MaybeEmulatedAtom<Collective, Emulated>::type;
  using type = cute::conditional_t<
      M64, M64PingpongMainloop<WithAtom>,
      cute::conditional_t<Grouped && !PackedFp4, GroupedCollectiveMainloop<Collective>,
                          cute::conditional_t<Emulated || Grouped, emulated::ByteTmaMainloop<WithAtom>, Collective>>>;
};

// Stages of a 64-row tile: the builder cannot size them (its SFA layout is empty for 64 rows), so count what
// one stage holds (64-row A, B, the full 128-row SFA block, SFB) against the smem left after the epilogue,
// the per-stage pipeline barriers and a reserve for the scheduler and kernel barriers (the static_assert on
// the kernel's SharedStorage is the real check).
template <int TileN, int TileK, int VecSize>
constexpr int m64_stages(int epilogue_bytes) {
  const int stage = 64 * TileK / 2 + TileN * TileK / 2 + 128 * (TileK / VecSize) +
                    (TileN < 128 ? 128 : TileN) * (TileK / VecSize) + 16;
  const int reserve = 1024;
  return (cutlass::arch::sm120_smem_capacity_bytes - epilogue_bytes - reserve) / stage;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// The kernel configuration
// ---------------------------------------------------------------------------------------------
// SwapAB computes D^T = B * A^T: the weights fill the 128-row M tile and the few activation rows of a decode
// step land in a narrow N tile. D^T in column-major is D in row-major, so the caller's output is unchanged.
// Grouped: rows are expert-contiguous and B is batched per expert (grouped_mm_fp4.cuh); the MoE GEMMs.
template <class Format, class ElementD_, int TileM, int TileN, int TileK, class Schedule, bool Emulated,
          bool SwapAB = false, bool Grouped = false>
struct MmFp4Config {
  static_assert(!(Grouped && (SwapAB || cute::is_same_v<Schedule, StreamK>)),
                "grouped GEMMs: unswapped, Pingpong or Cooperative");
  static_assert(!(Emulated && cute::is_same_v<Format, Mxfp8Mxfp4>),
                "W4A8 is native only: SM90 lacks its unpacking TMA type and ldmatrix (see emulated_blockscaled_mma.cuh)");
  static_assert(!(SwapAB && cute::is_same_v<Format, Mxfp8Mxfp4>), "W4A8 has distinct A/B formats: no swap");
  static_assert(cute::is_same_v<ElementD_, cutlass::bfloat16_t> || cute::is_same_v<ElementD_, cutlass::half_t>,
                "D must be bf16 or fp16");
  static constexpr bool kM64 = TileM == 64;
  static_assert(TileM % 128 == 0 || (kM64 && cute::is_same_v<Schedule, Pingpong> && !SwapAB &&
                                     !cute::is_same_v<Format, Mxfp8Mxfp4> && TileN % 128 == 0),
                "TileM is a multiple of 128, or 64 for Pingpong MXFP4/NVFP4 tiles with TileN a multiple of 128");
  static_assert(TileN >= 32 && TileK % 128 == 0, "TileN >= 32, TileK a multiple of 128");

  using Fmt = detail::FormatTraits<Format>;
  using ElementD = ElementD_;
  using ElementC = void;  // no source operand
  using ElementAccumulator = float;
  using ElementCompute = float;
  using LayoutA = cutlass::layout::RowMajor;     // A [M,K] K-major
  using LayoutB = cutlass::layout::ColumnMajor;  // B [N,K] K-major
  using LayoutD = cute::conditional_t<SwapAB, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  static constexpr int AlignmentD = 128 / cutlass::sizeof_bits<ElementD>::value;

  using ArchTag = cutlass::arch::Sm120;
  using OpClass = cutlass::arch::OpClassBlockScaledTensorOp;
  using TileShape = cute::Shape<cute::Int<TileM>, cute::Int<TileN>, cute::Int<TileK>>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;

  using EpilogueSchedule = cute::conditional_t<cute::is_same_v<Schedule, Pingpong>,
                                               cutlass::epilogue::TmaWarpSpecialized,
                                               cutlass::epilogue::TmaWarpSpecializedCooperative>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      ArchTag, OpClass, TileShape, ClusterShape, cutlass::epilogue::collective::EpilogueTileAuto,
      ElementAccumulator, ElementCompute,
      ElementC, LayoutD, AlignmentD,
      ElementD, LayoutD, AlignmentD,
      EpilogueSchedule>::CollectiveOp;

  using NativeMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      ArchTag, OpClass,
      typename Fmt::ElementA, LayoutA, Fmt::AlignmentA,
      typename Fmt::ElementB, LayoutB, Fmt::AlignmentB,
      ElementAccumulator, TileShape, ClusterShape,
      cute::conditional_t<kM64,
          cutlass::gemm::collective::StageCount<detail::m64_stages<TileN, TileK, Fmt::kVecSize>(
              static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage)))>,
          cutlass::gemm::collective::StageCountAutoCarveout<
              static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>>,
      typename detail::MainloopScheduleTag<Format, Schedule>::type>::CollectiveOp;

  using CollectiveMainloop = typename detail::SelectMainloop<NativeMainloop, Emulated, kM64, Grouped,
                                                             !cute::is_same_v<Format, Mxfp8Mxfp4>>::type;

  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<
      cute::Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue,
      typename detail::SchedulerTag<Schedule, Emulated>::type>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

  using Sm1xxBlkScaledConfig = typename CollectiveMainloop::Sm1xxBlkScaledConfig;
  static constexpr int kStages = CollectiveMainloop::DispatchPolicy::Stages;
  static constexpr int kSmemBytes = static_cast<int>(sizeof(typename GemmKernel::SharedStorage));
  static_assert(kSmemBytes <= cutlass::arch::sm120_smem_capacity_bytes, "SharedStorage exceeds 101376 B");
  static constexpr bool kEmulated = Emulated;
  static constexpr bool kSwapAB = SwapAB;
  static constexpr bool kGrouped = Grouped;
};

// ---------------------------------------------------------------------------------------------
// Launcher API
// ---------------------------------------------------------------------------------------------
struct Problem {
  int m, n, k;
  const void* a;      // [m, k] packed (fp4: 2 per byte, low nibble first; fp8: 1 per byte)
  const void* b;      // [n, k] packed fp4
  const void* sfa;    // 128x4 layout, rows padded to 128, scale columns to a multiple of 4
  const void* sfb;    // 128x4 layout
  void* d;            // [m, n] row-major bf16/fp16
  const float* alpha; // device pointer, or nullptr for alpha = 1
  // Grouped configs only: b is [num_b_batches, n, k] (sfb likewise, one 128x4 block per batch) and M tile i
  // uses batch b_batch_of_m_tile[i] (device memory, ceil(m / TileM) entries).
  const int32_t* b_batch_of_m_tile = nullptr;
  int num_b_batches = 1;
};

template <class Config>
constexpr int smem_bytes() { return Config::kSmemBytes; }

namespace detail {

inline int sm_count_cached() {
  // cudaDeviceGetAttribute is cheap but not free; cache per device (no sync either way).
  static int cache[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0;
  if (cache[dev] == 0) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess) cache[dev] = n;
  }
  return cache[dev];
}

// The problem the kernel sees: the caller's, or its transpose for SwapAB configs.
template <class Config>
Problem kernel_problem(Problem const& p) {
  if constexpr (Config::kSwapAB) {
    return Problem{p.n, p.m, p.k, p.b, p.a, p.sfb, p.sfa, p.d, p.alpha};
  } else {
    return p;
  }
}

template <class Config>
typename Config::Gemm::Arguments make_arguments(Problem const& caller_problem) {
  const Problem p = kernel_problem<Config>(caller_problem);
  using Gemm = typename Config::Gemm;
  using Mainloop = typename Config::CollectiveMainloop;
  using Epilogue = typename Config::CollectiveEpilogue;
  using SfCfg = typename Config::Sm1xxBlkScaledConfig;

  auto shape = cute::make_shape(p.m, p.n, p.k, 1);

  typename Mainloop::Arguments ml{};
  ml.ptr_A = static_cast<decltype(ml.ptr_A)>(p.a);
  ml.dA = cutlass::make_cute_packed_stride(typename Mainloop::StrideA{}, cute::make_shape(p.m, p.k, 1));
  const int b_batches = Config::kGrouped ? p.num_b_batches : 1;
  ml.ptr_B = static_cast<decltype(ml.ptr_B)>(p.b);
  ml.dB = cutlass::make_cute_packed_stride(typename Mainloop::StrideB{}, cute::make_shape(p.n, p.k, b_batches));
  ml.ptr_SFA = static_cast<decltype(ml.ptr_SFA)>(p.sfa);
  ml.layout_SFA = SfCfg::tile_atom_to_shape_SFA(shape);
  ml.ptr_SFB = static_cast<decltype(ml.ptr_SFB)>(p.sfb);
  ml.layout_SFB = SfCfg::tile_atom_to_shape_SFB(cute::make_shape(p.m, p.n, p.k, b_batches));
  if constexpr (Config::kGrouped) {
    ml.b_batch_of_m_tile = p.b_batch_of_m_tile;
    ml.num_b_batches = p.num_b_batches;
  }

  typename Epilogue::Arguments epi{};
  epi.thread.alpha = 1.0f;
  epi.thread.beta = 0.0f;
  epi.thread.alpha_ptr = p.alpha;  // read on device; nullptr -> scalar alpha (1)
  epi.ptr_C = nullptr;
  epi.ptr_D = static_cast<decltype(epi.ptr_D)>(p.d);
  epi.dD = cutlass::make_cute_packed_stride(typename Epilogue::StrideD{}, cute::make_shape(p.m, p.n, 1));
  epi.dC = epi.dD;

  cutlass::KernelHardwareInfo hw{};
  cudaGetDevice(&hw.device_id);
  hw.sm_count = sm_count_cached();

  typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm, shape, ml, epi, hw};
  return args;
}

inline cudaError_t to_cuda(cutlass::Status s) {
  switch (s) {
    case cutlass::Status::kSuccess: return cudaSuccess;
    case cutlass::Status::kErrorMisalignedOperand:
    case cutlass::Status::kErrorInvalidProblem:
    case cutlass::Status::kErrorInvalidLayout: return cudaErrorInvalidValue;
    case cutlass::Status::kErrorNotSupported:
    case cutlass::Status::kErrorArchMismatch: return cudaErrorNotSupported;
    case cutlass::Status::kErrorInternal: {
      cudaError_t e = cudaGetLastError();
      return e != cudaSuccess ? e : cudaErrorUnknown;
    }
    default: return cudaErrorUnknown;
  }
}

}  // namespace detail

template <class Config>
size_t workspace_bytes(Problem const& p) {
  return Config::Gemm::get_workspace_size(detail::make_arguments<Config>(p));
}

// No host synchronisation: argument setup, TMA descriptor encoding (driver entry point resolved at
// run time, no -lcuda) and the launch are all asynchronous with respect to `stream`.
template <class Config>
cudaError_t run(Problem const& p, void* workspace, cudaStream_t stream, bool enable_pdl = false) {
  if (p.m <= 0 || p.n <= 0 || p.k <= 0 || !p.a || !p.b || !p.sfa || !p.sfb || !p.d)
    return cudaErrorInvalidValue;
  if (Config::kGrouped && (!p.b_batch_of_m_tile || p.num_b_batches <= 0)) return cudaErrorInvalidValue;
  auto args = detail::make_arguments<Config>(p);
  typename Config::Gemm gemm;
  cutlass::Status s = gemm.can_implement(args);
  if (s != cutlass::Status::kSuccess)
    return s == cutlass::Status::kErrorNotSupported ? cudaErrorNotSupported : cudaErrorInvalidValue;
  s = gemm.initialize(args, workspace, stream);
  if (s != cutlass::Status::kSuccess) return detail::to_cuda(s);
  return detail::to_cuda(gemm.run(stream, /*cuda_adapter=*/nullptr, enable_pdl));
}

}  // namespace flashinfer_sm12x::mm_fp4
