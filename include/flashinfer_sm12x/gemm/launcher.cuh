// SPDX-License-Identifier: Apache-2.0
// Host side of the block-scaled GEMMs: the problem description, CUTLASS arguments from it, workspace size and the
// launch. No host synchronisation: argument setup, TMA descriptor encoding (driver entry point resolved at run time,
// no -lcuda) and the launch are all asynchronous with respect to the stream.
#pragma once

#include <cuda_runtime.h>

#include "cutlass/util/packed_stride.hpp"  // tools/util/include

#include "flashinfer_sm12x/common/a_row_bounds.cuh"
#include "flashinfer_sm12x/gemm/config.cuh"

namespace flashinfer_sm12x::gemm {

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
  // Grouped configs only, optional (both or neither): the routing plan's per-expert tables, int32 [num_b_batches] on
  // the device. Expert e's rows are [padded_start[e], padded_start[e] + counts[e]); A's rows past them are not read
  // (common/a_row_bounds.cuh): the GEMM's rows there are computed from zeros.
  const int32_t* a_row_padded_start = nullptr;
  const int32_t* a_row_counts = nullptr;
  // Fused-epilogue configs only: the epilogue's Arguments (host memory, read while the arguments are built).
  const void* epilogue_args = nullptr;
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

// Owners of A-row-bound descriptor slots (grouped configs, common/a_row_bounds.cuh): the emulated SM90 build's
// persistent grid has at most one CTA per SM, indexed by blockIdx; natively an owner is an SM by %smid, whose values
// need not be contiguous on a part with SMs disabled: twice the SM count covers any die with at most twice the SMs
// enabled (an owner past them reads whole tiles).
template <class Config>
int a_row_bound_owners() {
  return Config::kEmulated ? sm_count_cached() : 2 * sm_count_cached();
}

template <class Config>
size_t a_row_bounds_bytes() {
  if constexpr (Config::kGrouped) {
    return a_row_bounds_slot_bytes(a_row_bound_owners<Config>(), Config::kStages);
  } else {
    return 0;
  }
}

// `a_row_slots`: the A-row-bound descriptor slots in the workspace (grouped configs; null for a size query).
template <class Config>
typename Config::Gemm::Arguments make_arguments(Problem const& caller_problem, void* a_row_slots = nullptr) {
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
    if (p.a_row_padded_start && p.a_row_counts && a_row_slots) {
      ml.a_row_bounds = ARowBoundsArguments{p.a_row_padded_start, p.a_row_counts, a_row_slots,
                                            a_row_bound_owners<Config>()};
    }
  }

  typename Epilogue::Arguments epi{};
  if constexpr (Config::kFusedEpilogue) {
    // No arguments (a workspace-size query): the defaults; run() refuses to launch without them.
    if (p.epilogue_args) epi = *static_cast<typename Epilogue::Arguments const*>(p.epilogue_args);
  } else {
    epi.thread.alpha = 1.0f;
    epi.thread.beta = 0.0f;
    epi.thread.alpha_ptr = p.alpha;  // read on device; nullptr -> scalar alpha (1)
    epi.ptr_C = nullptr;
    epi.ptr_D = static_cast<decltype(epi.ptr_D)>(p.d);
    epi.dD = cutlass::make_cute_packed_stride(typename Epilogue::StrideD{}, cute::make_shape(p.m, p.n, 1));
    epi.dC = epi.dD;
  }

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

// The kernel's workspace, then (grouped configs) the A-row-bound descriptor slots at a 128-byte boundary.
template <class Config>
size_t workspace_bytes(Problem const& p) {
  const size_t kernel = Config::Gemm::get_workspace_size(detail::make_arguments<Config>(p));
  const size_t slots = detail::a_row_bounds_bytes<Config>();
  return slots ? (kernel + 127) / 128 * 128 + slots : kernel;
}

// No host synchronisation: argument setup, TMA descriptor encoding (driver entry point resolved at
// run time, no -lcuda) and the launch are all asynchronous with respect to `stream`.
template <class Config>
cudaError_t run(Problem const& p, void* workspace, cudaStream_t stream, bool enable_pdl = false) {
  if (p.m <= 0 || p.n <= 0 || p.k <= 0 || !p.a || !p.b || !p.sfa || !p.sfb || !p.d)
    return cudaErrorInvalidValue;
  if (Config::kGrouped && (!p.b_batch_of_m_tile || p.num_b_batches <= 0)) return cudaErrorInvalidValue;
  if (Config::kFusedEpilogue && !p.epilogue_args) return cudaErrorInvalidValue;
  if (Config::kGrouped && (p.a_row_padded_start == nullptr) != (p.a_row_counts == nullptr)) return cudaErrorInvalidValue;
  void* a_row_slots = nullptr;
  if (Config::kGrouped && p.a_row_padded_start && detail::a_row_bounds_bytes<Config>()) {
    const size_t kernel = Config::Gemm::get_workspace_size(detail::make_arguments<Config>(p));
    a_row_slots = static_cast<uint8_t*>(workspace) + (kernel + 127) / 128 * 128;
  }
  auto args = detail::make_arguments<Config>(p, a_row_slots);
  typename Config::Gemm gemm;
  cutlass::Status s = gemm.can_implement(args);
  if (s != cutlass::Status::kSuccess)
    return s == cutlass::Status::kErrorNotSupported ? cudaErrorNotSupported : cudaErrorInvalidValue;
  s = gemm.initialize(args, workspace, stream);
  if (s != cutlass::Status::kSuccess) return detail::to_cuda(s);
  return detail::to_cuda(gemm.run(stream, /*cuda_adapter=*/nullptr, enable_pdl));
}

}  // namespace flashinfer_sm12x::gemm
