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

// The transpose of a contiguous 2-D tensor (column-major), as FlashInfer passes weights and their scales. Size-1
// dimensions may carry any stride, as for contiguity.
inline bool is_transposed_contiguous(const TensorView& t) {
  return t.ndim() == 2 && (t.size(0) == 1 || t.stride(0) == 1) && (t.size(1) == 1 || t.stride(1) == t.size(0));
}

inline void check_cuda_transposed(const TensorView& t, const char* name) {
  if (t.device().device_type != kDLCUDA) TVM_FFI_THROW(ValueError) << name << " must be a CUDA tensor";
  if (!is_transposed_contiguous(t))
    TVM_FFI_THROW(ValueError) << name << " must be the transpose of a contiguous tensor";
}

// Contiguous, or the transpose of a contiguous 2-D tensor: either way one dense block of memory from data_ptr().
inline void check_cuda_dense(const TensorView& t, const char* name) {
  if (t.device().device_type != kDLCUDA) TVM_FFI_THROW(ValueError) << name << " must be a CUDA tensor";
  if (!t.IsContiguous() && !is_transposed_contiguous(t))
    TVM_FFI_THROW(ValueError) << name << " must be contiguous or the transpose of a contiguous tensor";
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
