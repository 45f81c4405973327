// SPDX-License-Identifier: Apache-2.0
// Argument checks shared by the tvm_ffi bindings. The Python layer validates first (typed errors before any
// launch); these are the last line, so a wrong call from C++ or a stale Python layer cannot corrupt memory.
#pragma once

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>

#include <cuda_runtime.h>

namespace flashinfer_sm12x::ffi {

using tvm::ffi::TensorView;

inline void check(bool ok, const char* what) {
  if (!ok) TVM_FFI_THROW(ValueError) << what;
}

inline void check_cuda_contiguous(const TensorView& t, const char* name) {
  if (t.device().device_type != kDLCUDA) TVM_FFI_THROW(ValueError) << name << " must be a CUDA tensor";
  if (!t.IsContiguous()) TVM_FFI_THROW(ValueError) << name << " must be contiguous";
}

inline void check_dtype(const TensorView& t, uint8_t code, uint8_t bits, const char* name) {
  if (t.dtype().code != code || t.dtype().bits != bits || t.dtype().lanes != 1)
    TVM_FFI_THROW(TypeError) << name << " has the wrong dtype";
}

inline void check_shape(const TensorView& t, std::initializer_list<int64_t> shape, const char* name) {
  bool ok = t.ndim() == static_cast<int32_t>(shape.size());
  int i = 0;
  for (int64_t s : shape) ok = ok && t.size(i++) == s;
  if (!ok) TVM_FFI_THROW(ValueError) << name << " has the wrong shape";
}

inline cudaStream_t current_stream(const TensorView& t) {
  return static_cast<cudaStream_t>(TVMFFIEnvGetStream(t.device().device_type, t.device().device_id));
}

inline void check_launch(cudaError_t status, const char* what) {
  if (status != cudaSuccess) TVM_FFI_THROW(RuntimeError) << what << ": " << cudaGetErrorString(status);
}

}  // namespace flashinfer_sm12x::ffi
