// SPDX-License-Identifier: Apache-2.0
// Binding-side arguments of the SwiGLU activation (common/swiglu.cuh), shared by the glue module's activation kernel
// and GEMM1's fused swiglu + quantize epilogue: optional per-expert float32 [E] tensors or scalars.
#pragma once

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/optional.h>

#include "ffi_checks.h"
#include "flashinfer_sm12x/common/swiglu.cuh"

namespace flashinfer_sm12x::ffi {

inline const float* optional_floats(const tvm::ffi::Optional<TensorView>& t, int64_t experts, const char* name) {
  if (!t.has_value()) return nullptr;
  check_cuda_contiguous(*t, name);
  check_dtype(*t, kDLFloat, 32, name);
  check((*t).numel() == experts, name);
  return static_cast<const float*>((*t).data_ptr());
}

inline SwigluArgs swiglu_args(int64_t experts, bool oai, const tvm::ffi::Optional<TensorView>& g1,
                                   const tvm::ffi::Optional<TensorView>& alpha_e,
                                   const tvm::ffi::Optional<TensorView>& beta_e,
                                   const tvm::ffi::Optional<TensorView>& limit_e, double alpha, double beta,
                                   double limit, bool has_limit) {
  SwigluArgs a;
  a.oai = oai;
  a.g1 = optional_floats(g1, experts, "g1 must be float32 [E]");
  a.alpha_e = optional_floats(alpha_e, experts, "alpha must be float32 [E]");
  a.beta_e = optional_floats(beta_e, experts, "beta must be float32 [E]");
  a.limit_e = optional_floats(limit_e, experts, "limit must be float32 [E]");
  a.alpha = static_cast<float>(alpha);
  a.beta = static_cast<float>(beta);
  a.limit = static_cast<float>(limit);
  a.has_limit = has_limit || a.limit_e != nullptr;
  return a;
}

}  // namespace flashinfer_sm12x::ffi
