// SPDX-License-Identifier: Apache-2.0
// The SwiGLU activation between two GEMMs and the block quantization of its outputs to the next GEMM's input format.
// One definition serves the standalone activation kernel (moe/glue.cuh) and GEMM1's fused epilogue
// (gemm/epilogues/swiglu_quantize.cuh), so that both paths compute the same bits:
//   x = gate [* g1[e]] [+ bias_gate],  y = up [* g1[e]] [+ bias_up]
//   swiglu_oai: x = min(x, limit), y = clamp(y, -limit, limit) (when limited); a = (y + beta) * x * sigmoid(alpha * x)
//   swiglu:     a = x * sigmoid(x) * y
// then 8 consecutive outputs are quantized to the activation format of GEMM2 (E8M0 scale per 32, 128x4 layout).
// float32 with correctly rounded operations in the torch reference's order; an absent g1 or bias is skipped, not
// applied as 1 or 0 (x + 0 would turn -0 into +0). In the package's root namespace, beside the other common/ pieces:
// neither the GEMM nor the MoE glue owns it.
#pragma once

#include <cstdint>

#include "flashinfer_sm12x/quantize/block_scale.cuh"

namespace flashinfer_sm12x {

enum class ActFormat : int { kMxfp4 = 0, kMxfp8 = 1 };

template <ActFormat F>
constexpr int64_t row_bytes(int64_t cols) {
  return F == ActFormat::kMxfp4 ? cols / 2 : cols;
}

constexpr int kQuantElems = 8;  // outputs per thread in quantize_store; 4 adjacent lanes share a 32-element block

// Quantizes this thread's 8 values (all lanes of the warp call convergently) and stores them at column `col` of
// `row`; the first lane of each 4-lane group stores the block's scale.
template <ActFormat F>
__device__ __forceinline__ void quantize_store(const float (&v)[kQuantElems], bool active, int64_t row, int col,
                                               int64_t cols, uint8_t* data, uint8_t* sf) {
  const int64_t sf_cols = cols / 32;
  uint32_t code;
  if constexpr (F == ActFormat::kMxfp4) {
    uint32_t packed[1];
    code = quantize::mxfp4_quantize_segment<kQuantElems>(v, quantize::ScaleRecipe::kRceil, packed);
    if (active) *reinterpret_cast<uint32_t*>(data + row * (cols / 2) + col / 2) = packed[0];
  } else {
    uint32_t packed[2];
    code = quantize::mxfp8_quantize_segment<kQuantElems>(v, quantize::ScaleRecipe::kRceil, packed);
    if (active) *reinterpret_cast<uint2*>(data + row * cols + col) = make_uint2(packed[0], packed[1]);
  }
  if (active && (col & 31) == 0) sf[quantize::sf_offset_128x4(row, col / 32, sf_cols)] = static_cast<uint8_t>(code);
}

// torch's sigmoid in float32: 1 / (1 + exp(-x)).
__device__ __forceinline__ float sigmoid_rn(float x) { return __fdiv_rn(1.f, __fadd_rn(1.f, expf(-x))); }

// The activation's parameters as the caller gives them: scalars, or per-expert float32 [E] tensors (non-null wins).
struct SwigluArgs {
  const float* g1 = nullptr;  // per-expert scale of GEMM1's product, or null
  const float* alpha_e = nullptr;
  const float* beta_e = nullptr;
  const float* limit_e = nullptr;
  float alpha = 1.f, beta = 0.f, limit = 0.f;
  bool has_limit = false;
  bool oai = true;  // swiglu_oai, else plain swiglu
};

// The activation of one expert (its per-expert values resolved once per row or tile).
struct ExpertSwiglu {
  float g1, alpha, beta, limit;
  bool scaled, has_limit, oai;

  __device__ __forceinline__ static ExpertSwiglu of(const SwigluArgs& a, int expert) {
    return ExpertSwiglu{a.g1 ? a.g1[expert] : 1.f,
                        a.alpha_e ? a.alpha_e[expert] : a.alpha,
                        a.beta_e ? a.beta_e[expert] : a.beta,
                        a.limit_e ? a.limit_e[expert] : a.limit,
                        a.g1 != nullptr,
                        a.has_limit || a.limit_e != nullptr,
                        a.oai};
  }

  // gate/up of one output (GEMM1's values as float), with the fc1 bias of both when has_bias.
  __device__ __forceinline__ float operator()(float x, float y, bool has_bias, float bias_gate, float bias_up) const {
    if (scaled) {
      x = __fmul_rn(x, g1);
      y = __fmul_rn(y, g1);
    }
    if (has_bias) {
      x = __fadd_rn(x, bias_gate);
      y = __fadd_rn(y, bias_up);
    }
    // One sigmoid per output whichever variant runs (a division and an exponential are most of this code; it is
    // inlined 8 times per thread in GEMM1's epilogue): the variant only picks its argument and the product order.
    float arg = x;
    if (oai) {
      if (has_limit) {  // torch.clamp keeps NaN
        x = x > limit ? limit : x;
        y = y > limit ? limit : (y < -limit ? -limit : y);
      }
      arg = __fmul_rn(alpha, x);
    }
    const float s = sigmoid_rn(arg);
    return oai ? __fmul_rn(__fmul_rn(__fadd_rn(y, beta), x), s) : __fmul_rn(__fmul_rn(x, s), y);
  }
};

}  // namespace flashinfer_sm12x
