// SPDX-License-Identifier: Apache-2.0
// The block-scaled GEMM configuration shared by mm_fp4 (dense, gemm/mm_fp4.cuh) and grouped_mm_fp4 (the MoE GEMM,
// gemm/grouped_mm_fp4.cuh) on SM120/SM121 (RTX 50xx, RTX PRO 6000, DGX Spark), in namespace flashinfer_sm12x::gemm
// (each GEMM's own pieces are in flashinfer_sm12x::mm_fp4 / flashinfer_sm12x::grouped_mm_fp4):
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
// - Emulated = true (see emulation/blockscaled_mma_sm90.cuh) keeps the SAME collective and kernel templates
//   and swaps what SM90 (H100) lacks: the MMA atom (block-scaled OMMA -> bf16 mma.sync on dequantized
//   e2m1, same register/fragment interface), the tile scheduler (the SM120 default uses CLC
//   instructions; the SM90 persistent one is used) and the fp4 TMA element type (Blackwell's packed
//   16U4 TMA type -> UINT8 with half the K extent, producer side only). Build for sm_90a.
//   W4A8 additionally swaps its e2m1 operand's smem path (16U4_ALIGN16B TMA and unpacking ldmatrix -> a packed byte
//   image and an emulated ldmatrix: gemm/mainloops/w4a8_emulated.cuh).
// - Measured (nvcc 13.0, 128x128x128, bf16 out): MXFP4 Pingpong/Cooperative 5 stages, 97,280 B;
//   NVFP4 4 stages, 83,968 B; W4A8 only 2 stages, 77,824 B (fp4 is unpacked to 8 bit in smem and the
//   16U4_ALIGN16B TMA box must be 128 wide in K) - prefer a narrower N tile for W4A8.
// - TileM is 64 or a multiple of 128. CUTLASS's collective needs whole 128-row scale atoms; 64-row Pingpong
//   tiles (MXFP4 / NVFP4) use our mainloop, gemm/mainloops/m64_pingpong.cuh, which documents that design.
#pragma once

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


namespace flashinfer_sm12x::gemm {

// ---------------------------------------------------------------------------------------------
// Compile-time tags
// ---------------------------------------------------------------------------------------------
struct Mxfp4 {};       // e2m1 x e2m1, ue8m0 scale per 32 (kind::mxf4nvf4, scale_vec::2X)
struct Nvfp4 {};       // e2m1 x e2m1, ue4m3 scale per 16 (kind::mxf4nvf4, scale_vec::4X)
struct Mxfp8Mxfp4 {};  // W4A8: A e4m3, B e2m1, ue8m0 per 32 (kind::mxf8f6f4, FP8 rate)

// Epilogues: what GEMM writes. StoreD is CUTLASS's TMA epilogue, D = alpha * acc in bf16 / fp16; the grouped GEMM's
// fused MoE epilogues (grouped_mm_fp4::SwigluQuantize, grouped_mm_fp4::StoreRouted) are tags of their own headers.
struct StoreD {};

struct Pingpong {};
struct Cooperative {};
struct StreamK {};     // Cooperative kernel + stream-K tile scheduler

namespace detail {

// One specialization per format, written out in full: a table of CUTLASS types, alike by design.
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

// Customization points. The config names what a build needs; the header that provides it is included by the
// rendered source only when the build needs it (jit/*.cu.jinja), so a native dense config compiles none of the
// emulation, the 64-row mainloop or the grouped mainloops.
//
// Tile-scheduler tag handed to GemmUniversal. Native: CUTLASS's SM120 defaults (CLC persistent, or stream-K).
// Emulated: specialised in emulation/blockscaled_mma_sm90.cuh (tags that map to the SM90 schedulers).
template <class Schedule, bool Emulated>
struct SchedulerTag {
  static_assert(!Emulated, "emulated builds include flashinfer_sm12x/emulation/blockscaled_mma_sm90.cuh");
  using type = cute::conditional_t<cute::is_same_v<Schedule, StreamK>, cutlass::gemm::StreamKScheduler, void>;
};

// The collective with the MMA atom of the build: native, or (emulation/blockscaled_mma_sm90.cuh) the SM90 atom.
template <class Collective, bool Emulated>
struct MaybeEmulatedAtom {
  static_assert(!Emulated, "emulated builds include flashinfer_sm12x/emulation/blockscaled_mma_sm90.cuh");
  using type = Collective;
};

// The collective epilogue of an epilogue kind: CUTLASS's (built from the config) for StoreD, else specialised in the
// kind's header under gemm/epilogues/.
template <class Kind, class Format, int TileM, int TileN, class BuilderEpilogue>
struct EpilogueOf {
  static_assert(cute::is_same_v<Kind, StoreD>, "this config's epilogue header (gemm/epilogues/*.cuh) is not included");
  using type = BuilderEpilogue;
};

}  // namespace detail

// Which mainloop runs the collective CUTLASS built:
//   Collective        CUTLASS's SM120 collective as built (native dense 128/256-row tiles);
//   ByteTma           the same with packed e2m1 A/B through byte TMA (emulated 128-row tiles; native grouped W4A4);
//   GroupedCollective CUTLASS's collective with a per-M-tile expert batch (grouped W4A8);
//   M64Pingpong       our 64-row mainloop (MXFP4 / NVFP4 64-row Pingpong tiles, dense and grouped);
//   EmulatedW4A8      the W4A8 collective with its e2m1 operand through a packed byte image (emulated, dense and
//                     grouped).
// Each kind but the first is specialised in its header under gemm/mainloops/. jit/gemm_includes.cu.jinja picks the
// header to include by the same rules, and the rendered source asserts that both chose the same kind
// (Config::kMainloopKind == kIncludedMainloop, jit/compile_facts.cu.jinja; tests/test_mainloop_choice.py renders
// every shipped spec against this function).
enum class MainloopKind { Collective, ByteTma, GroupedCollective, M64Pingpong, EmulatedW4A8 };

namespace detail {

template <bool Emulated, bool M64, bool Grouped, bool PackedFp4>
constexpr MainloopKind mainloop_kind() {
  if (M64) return MainloopKind::M64Pingpong;
  if (Emulated && !PackedFp4) return MainloopKind::EmulatedW4A8;
  if (Grouped && !PackedFp4) return MainloopKind::GroupedCollective;
  if (Emulated || Grouped) return MainloopKind::ByteTma;
  return MainloopKind::Collective;
}

// Grouped: the mainloop serves a grouped GEMM (per-expert A row bounds, common/a_row_bounds.cuh); dense configs
// instantiate the mainloops without them, so their code is what it was.
template <class Collective, MainloopKind Kind, bool Grouped>
struct Mainloop {
  static_assert(Kind == MainloopKind::Collective,
                "this config's mainloop header (flashinfer_sm12x/gemm/mainloops/*.cuh) is not included");
  using type = Collective;
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
// Epilogue: StoreD, or a fused epilogue kind (grouped configs only).
template <class Format, class ElementD_, int TileM, int TileN, int TileK, class Schedule, bool Emulated,
          bool SwapAB = false, bool Grouped = false, class Epilogue = StoreD>
struct MmFp4Config {
  static_assert(cute::is_same_v<Epilogue, StoreD> || Grouped, "fused epilogues are the MoE GEMMs' (grouped)");
  static_assert(!(Grouped && (SwapAB || cute::is_same_v<Schedule, StreamK>)),
                "grouped GEMMs: unswapped, Pingpong or Cooperative");
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

  using BuilderEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      ArchTag, OpClass, TileShape, ClusterShape, cutlass::epilogue::collective::EpilogueTileAuto,
      ElementAccumulator, ElementCompute,
      ElementC, LayoutD, AlignmentD,
      ElementD, LayoutD, AlignmentD,
      EpilogueSchedule>::CollectiveOp;
  using CollectiveEpilogue = typename detail::EpilogueOf<Epilogue, Format, TileM, TileN, BuilderEpilogue>::type;

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

  static constexpr MainloopKind kMainloopKind =
      detail::mainloop_kind<Emulated, kM64, Grouped, !cute::is_same_v<Format, Mxfp8Mxfp4>>();
  using CollectiveMainloop = typename detail::Mainloop<
      typename detail::MaybeEmulatedAtom<NativeMainloop, Emulated>::type, kMainloopKind, Grouped>::type;

  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<
      cute::Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue,
      typename detail::SchedulerTag<Schedule, Emulated>::type>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

  using Sm1xxBlkScaledConfig = typename CollectiveMainloop::Sm1xxBlkScaledConfig;
  static constexpr int kStages = CollectiveMainloop::DispatchPolicy::Stages;
  static constexpr int kSmemBytes = static_cast<int>(sizeof(typename GemmKernel::SharedStorage));
  static_assert(kSmemBytes <= cutlass::arch::sm120_smem_capacity_bytes, "SharedStorage exceeds 101376 B");
  // The grouped mainloops own A-descriptor slots per SM on SM12x (common/a_row_bounds.cuh): one CTA per SM.
  static_assert(!Grouped || 2 * kSmemBytes > cutlass::arch::sm120_smem_capacity_bytes,
                "grouped configs must not fit two CTAs per SM (their A-descriptor slots are per SM)");
  static constexpr bool kEmulated = Emulated;
  static constexpr bool kSwapAB = SwapAB;
  static constexpr bool kGrouped = Grouped;
  static constexpr bool kFusedEpilogue = !cute::is_same_v<Epilogue, StoreD>;
};

}  // namespace flashinfer_sm12x::gemm
