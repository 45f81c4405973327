// SPDX-License-Identifier: Apache-2.0
// What CUTLASS's warp-specialised kernels and GemmUniversalAdapter ask of an epilogue that stores from registers
// (the interface behind Sm90TmaWarpSpecializedAdapter): type names, host-side argument handling with no workspace.
// The MoE epilogues (swiglu_quantize.cuh, store_routed.cuh) derive from it and add can_implement and operator().
#pragma once

#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/cuda_host_adapter.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/detail.hpp"
#include "cutlass/epilogue/dispatch_policy.hpp"

namespace flashinfer_sm12x::gemm {

// Arguments_ is both the host arguments and the kernel's Params (plain pointers and scalars).
template <class Arguments_, class ElementD_>
struct RegisterEpilogue {
  using EpilogueSchedule = cutlass::epilogue::NoSmemWarpSpecialized;
  using DispatchPolicy = EpilogueSchedule;
  using ThreadEpilogueOp = void;
  using ElementC = void;
  using ElementD = ElementD_;
  using ElementAccumulator = float;
  using StrideC = cute::Stride<int64_t, cute::_1, int64_t>;
  using StrideD = StrideC;
  using GmemTiledCopyC = void;
  using GmemTiledCopyD = void;
  using Arguments = Arguments_;
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*, cudaStream_t,
                                              cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }

  CUTLASS_HOST_DEVICE explicit RegisterEpilogue(Params const& params) : params_(params) {}

  CUTLASS_DEVICE bool is_source_needed() { return false; }

 protected:
  Params params_;
};

// The collective CUTLASS's kernels call for such an epilogue.
template <class Epilogue>
using RegisterEpilogueCollective = cutlass::epilogue::collective::detail::Sm90TmaWarpSpecializedAdapter<Epilogue>;

}  // namespace flashinfer_sm12x::gemm
