// SPDX-License-Identifier: Apache-2.0
//
// Block-scale conversion primitives: E2M1 / E4M3 elements, E8M0 / E4M3 block scales, scale-factor layouts.
// Bit-exact with the torch reference in flashinfer_sm12x/formats/{e2m1,e4m3,e8m0,quantize}.py.
//
// ---------------------------------------------------------------------------------------------------------------
// Stable API (namespace flashinfer_sm12x::quantize). Other kernels build on these names; do not change them.
//
//   enum class SfLayout { k128x4 = 0, k8x4 = 1, kLinear = 2 }     same values as the Python SfLayout enum
//   enum class ScaleRecipe { kRceil = 0, kFloor = 1 }              E8M0 scale choice ("rceil" / "floor")
//
//   Scale-factor layouts (host and device). `sf_cols` is the logical number of scale columns (K / block).
//     sf_offset(layout, row, kb, sf_cols)   byte offset of scale (row, kb) inside one [rows, sf_cols] matrix
//     sf_offset_128x4 / sf_offset_8x4 / sf_offset_linear(row, kb, sf_cols)    the same, per layout
//     sf_padded_rows(layout, rows)          rows rounded up to 128 / 8 / 1
//     sf_padded_cols(layout, sf_cols)       columns rounded up to 4 / 4 / 1
//     sf_bytes(layout, rows, sf_cols)       padded_rows * padded_cols
//   Padding bytes (rows past `rows`, columns past `sf_cols`) must hold zero; the caller writes them.
//
//   Element / scale conversions (device):
//     abs_bits(x)                          |x| as uint32 bits. An unsigned max of these propagates NaN (above inf).
//     e8m0_from_amax_bits<Elem>(bits, recipe)   E8M0 code (0..254, or 0xFF for NaN/inf amax, 0 for amax 0)
//     e8m0_inverse(code) / e8m0_value(code)     2^(127-code) / 2^(code-127) as float, exact; NaN for 0xFF
//     e2m1x8(v[8])  -> uint32              8 elements -> 8 nibbles, v[0] in the low nibble (RNE, satfinite)
//     e4m3x4(v[4])  -> uint32              4 elements -> 4 bytes, v[0] in the low byte (RNE, satfinite)
//     e4m3(x) -> uint32                    one E4M3 byte (used for NVFP4 block scales); NaN -> 0x7F
//     e4m3_value(code) -> float            exact decode; 0x7F / 0xFF -> NaN
//     nvfp4_scale(amax, global_scale, &code) -> float   NVFP4 block: E4M3 code and the element multiplier
//
//   Cooperative segment quantizers (device). A block of 32 (MX) or 16 (NVFP4) consecutive elements of one row
//   is spread over G = block / N adjacent lanes, lane l of the group holding elements [l*N, l*N + N) in `v`.
//   Groups are aligned (lane % G == 0 starts a group). ALL 32 lanes of the warp must call convergently (the
//   amax is a __shfl_xor_sync over the full warp); lanes without data pass zeros and ignore the result.
//   Each returns the block's scale code (the same in every lane of the group) and writes the lane's packed
//   elements in `packed` (element 0 lowest), ready for one 4/8/16-byte store:
//     mxfp4_quantize_segment<N>(v, recipe, packed)      N in {8, 16, 32}; packed: N/8 words (e2m1 nibbles)
//     mxfp8_quantize_segment<N>(v, recipe, packed)      N in {8, 16, 32}; packed: N/4 words (e4m3 bytes)
//     nvfp4_quantize_segment<N>(v, global_scale, packed)  N in {8, 16}; packed: N/8 words; returns E4M3 code
//
//   Loads (device): load_as_float<T, N>(const T* src, v) with T in {float, __half, __nv_bfloat16}: 16-byte
//   vector loads (src 16-byte aligned), exact widening to float; or in two steps, load_raw then widen_raw, so that
//   a batch of loads is in flight before any of it is used.
// ---------------------------------------------------------------------------------------------------------------
//
// Rules (shared with the torch reference): round-to-nearest-even; satfinite (|x| past the largest finite value,
// inf included, saturates); NaN encodes as E2M1 0x7 / E4M3 0x7F whatever its sign; -0 and negatives rounding to
// zero keep the sign. A block whose amax is NaN or inf gets scale 0xFF (MX) / 0x7F (NVFP4) and every element of
// it is NaN-encoded. Element scaling is one correctly rounded float multiply (__fmul_rn: no FMA contraction).
//
// Native conversions: `cvt.rn.satfinite.e2m1x2.f32` on SM12x arch/family-specific targets and
// `cvt.rn.satfinite.e4m3x2.f32` on sm_89+. Their NaN and zero-sign results are patched to the rules above: a
// NaN element only ever appears in a block whose scale is NaN (the block multiplier is then NaN), so the NaN
// patch is one select per block; the E2M1 sign is forced from the input's sign bit. Elsewhere (sm_90a for
// E2M1) an exact integer path computes the same codes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

// FLASHINFER_SM12X_QUANTIZE_SOFTWARE_CVT forces the exact software paths (a test build proves them on any GPU).
#if defined(FLASHINFER_SM12X_QUANTIZE_SOFTWARE_CVT)
#define FLASHINFER_SM12X_NATIVE_E2M1 0
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1200 && \
    (defined(__CUDA_ARCH_SPECIFIC__) || defined(__CUDA_ARCH_FAMILY_SPECIFIC__))
#define FLASHINFER_SM12X_NATIVE_E2M1 1
#else
#define FLASHINFER_SM12X_NATIVE_E2M1 0
#endif

#if defined(FLASHINFER_SM12X_QUANTIZE_SOFTWARE_CVT)
#define FLASHINFER_SM12X_NATIVE_E4M3 0
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define FLASHINFER_SM12X_NATIVE_E4M3 1
#else
#define FLASHINFER_SM12X_NATIVE_E4M3 0
#endif

namespace flashinfer_sm12x::quantize {

#define FIS_HD __host__ __device__ __forceinline__
#define FIS_D __device__ __forceinline__

enum class SfLayout : int { k128x4 = 0, k8x4 = 1, kLinear = 2 };
enum class ScaleRecipe : int { kRceil = 0, kFloor = 1 };

inline constexpr uint32_t kE8m0Nan = 0xFF;
inline constexpr uint32_t kE4m3Nan = 0x7F;
inline constexpr uint32_t kE2m1Nan = 0x7;  // E2M1 has no NaN: +6 stands in for it

// ------------------------------------------------------------------------------------------- scale layouts
FIS_HD int64_t sf_offset_128x4(int64_t row, int64_t kb, int64_t sf_cols) {
  const int64_t col_tiles = (sf_cols + 3) / 4;
  return (row / 128) * col_tiles * 512 + (kb / 4) * 512 + (row % 32) * 16 + ((row % 128) / 32) * 4 + kb % 4;
}

FIS_HD int64_t sf_offset_8x4(int64_t row, int64_t kb, int64_t sf_cols) {
  const int64_t col_tiles = (sf_cols + 3) / 4;
  return (row / 8) * col_tiles * 32 + (kb / 4) * 32 + (row % 8) * 4 + kb % 4;
}

FIS_HD int64_t sf_offset_linear(int64_t row, int64_t kb, int64_t sf_cols) { return row * sf_cols + kb; }

FIS_HD int64_t sf_offset(SfLayout layout, int64_t row, int64_t kb, int64_t sf_cols) {
  switch (layout) {
    case SfLayout::k128x4: return sf_offset_128x4(row, kb, sf_cols);
    case SfLayout::k8x4: return sf_offset_8x4(row, kb, sf_cols);
    default: return sf_offset_linear(row, kb, sf_cols);
  }
}

FIS_HD int64_t sf_padded_rows(SfLayout layout, int64_t rows) {
  const int64_t tile = layout == SfLayout::k128x4 ? 128 : (layout == SfLayout::k8x4 ? 8 : 1);
  return (rows + tile - 1) / tile * tile;
}

FIS_HD int64_t sf_padded_cols(SfLayout layout, int64_t sf_cols) {
  return layout == SfLayout::kLinear ? sf_cols : (sf_cols + 3) / 4 * 4;
}

FIS_HD int64_t sf_bytes(SfLayout layout, int64_t rows, int64_t sf_cols) {
  return sf_padded_rows(layout, rows) * sf_padded_cols(layout, sf_cols);
}

// ------------------------------------------------------------------------------------------------- E8M0
// Element formats as the E8M0 recipes see them: largest finite value = (1 + frac / 2^23) * 2^exp.
struct E2m1Format {
  static constexpr int kMaxExp = 2;               // 6 = 1.5 * 2^2
  static constexpr uint32_t kMaxFrac = 0x400000;  // .5 of the significand
};
struct E4m3Format {
  static constexpr int kMaxExp = 8;               // 448 = 1.75 * 2^8
  static constexpr uint32_t kMaxFrac = 0x600000;  // .75
};

FIS_D uint32_t abs_bits(float x) { return __float_as_uint(x) & 0x7FFFFFFFu; }

// E8M0 code of a block whose |amax| has float bits `bits` (sign ignored). Integer-exact: with
// amax = (1 + f/2^23) * 2^e, "floor" picks 2^(e - kMaxExp) and "rceil" one more when f > kMaxFrac
// (amax / elem_max > 2^(e - kMaxExp)), i.e. the smallest power of two >= amax / elem_max.
template <class Elem>
FIS_D uint32_t e8m0_from_amax_bits(uint32_t bits, ScaleRecipe recipe) {
  bits &= 0x7FFFFFFFu;
  if (bits >= 0x7F800000u) return kE8m0Nan;  // NaN or inf
  if (bits == 0) return 0;
  int exp;
  uint32_t frac;
  if (bits >= 0x00800000u) {
    exp = static_cast<int>(bits >> 23) - 127;
    frac = bits & 0x7FFFFFu;
  } else {  // subnormal amax: normalise the mantissa
    const int top = 31 - __clz(static_cast<int>(bits));  // position of the leading one, 0..22
    exp = top - 149;
    frac = (bits << (23 - top)) & 0x7FFFFFu;
  }
  int k = exp - Elem::kMaxExp;
  if (recipe == ScaleRecipe::kRceil && frac > Elem::kMaxFrac) ++k;
  const int code = k + 127;
  return static_cast<uint32_t>(code < 0 ? 0 : (code > 254 ? 254 : code));
}

// 2^n as float for integer n in [-149, 127], from bits (exact, including subnormals).
FIS_D float exact_pow2(int n) {
  return n >= -126 ? __uint_as_float(static_cast<uint32_t>(n + 127) << 23) : __uint_as_float(1u << (n + 149));
}

// 1 / scale: 2^(127 - code), exact; NaN for the NaN code.
FIS_D float e8m0_inverse(uint32_t code) {
  return code == kE8m0Nan ? __uint_as_float(0x7FC00000u) : exact_pow2(127 - static_cast<int>(code));
}

// scale: 2^(code - 127), exact; NaN for the NaN code.
FIS_D float e8m0_value(uint32_t code) {
  return code == kE8m0Nan ? __uint_as_float(0x7FC00000u) : exact_pow2(static_cast<int>(code) - 127);
}

// ------------------------------------------------------------------------------------------------- E2M1
// Exact software E2M1 magnitude of |v| in the low 3 bits of the result (higher bits are not zero: mask them):
// RNE on the code, satfinite, NaN -> 7. Float-pipe only: the code is 2a on [0, 2), a + 2 on [2, 4) and
// a / 2 + 4 on [4, 6]; adding 2^23 (plus that offset) to the exactly scaled a rounds it to an integer, ties to
// even, in one correctly rounded operation, and the integer lands in the mantissa bits 2^23 leaves zero.
FIS_D uint32_t e2m1_magnitude_software(float v) {
  const float a = fminf(fabsf(v), 6.0f);  // satfinite; fminf returns 6 for a NaN
  const float below_two = __fmaf_rn(a, 2.0f, 0x1p23f);
  const float below_four = __fadd_rn(a, 0x1p23f + 2.0f);
  const float up_to_six = __fmaf_rn(a, 0.5f, 0x1p23f + 4.0f);
  return __float_as_uint(a < 2.0f ? below_two : (a < 4.0f ? below_four : up_to_six));
}

// Two elements -> one byte, `lo` in the low nibble. Signs come from the inputs (NaN blocks are patched by the
// caller, see e2m1x8's contract).
FIS_D uint32_t e2m1x2(float lo, float hi) {
#if FLASHINFER_SM12X_NATIVE_E2M1
  uint16_t pair;
  // The first source goes to the upper nibble.
  asm("{\n .reg .b8 byte;\n cvt.rn.satfinite.e2m1x2.f32 byte, %1, %2;\n cvt.u16.u8 %0, byte;\n}"
      : "=h"(pair)
      : "f"(hi), "f"(lo));
  const uint32_t magnitudes = static_cast<uint32_t>(pair) & 0x77u;
#else
  const uint32_t magnitudes = (e2m1_magnitude_software(lo) & 0x7u) | ((e2m1_magnitude_software(hi) & 0x7u) << 4);
#endif
  // Signs forced from the inputs: -0 and negatives rounding to zero keep theirs, whatever the hardware does.
  const uint32_t signs = ((__float_as_uint(lo) >> 31) << 3) | ((__float_as_uint(hi) >> 31) << 7);
  return magnitudes | signs;
}

// Eight elements -> one word, v[0] in the low nibble. Contract: if any v is NaN, the caller replaces the word
// by 0x77777777 (all NaN-encoded); the segment quantizers below do (NaN elements only occur in NaN blocks).
FIS_D uint32_t e2m1x8(const float (&v)[8]) {
  uint32_t word = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) word |= e2m1x2(v[2 * i], v[2 * i + 1]) << (8 * i);
  return word;
}

// ------------------------------------------------------------------------------------------------- E4M3
// Exact software E4M3 byte of v (RNE, satfinite 448, NaN -> 0x7F, sign kept on zero).
FIS_D uint32_t e4m3_software(float v) {
  const uint32_t raw = __float_as_uint(v);
  const uint32_t b = raw & 0x7FFFFFFFu;
  if (b > 0x7F800000u) return kE4m3Nan;
  const uint32_t sign = (raw >> 24) & 0x80u;
  const float a = fminf(__uint_as_float(b), 448.0f);
  const uint32_t ab = __float_as_uint(a);
  // Spacing 2^q around a: q = exponent - 3 in a normal binade, 2^-9 below 2^-5 (subnormals + lowest binade).
  int q = static_cast<int>(ab >> 23) - 127 - 3;
  if (ab < 0x3D000000u) q = -9;  // a < 2^-5 (and a == 0)
  // n = rint(a / 2^q) in [0, 16]; scaling by a power of two is exact here.
  const uint32_t n = __float2uint_rn(__fmul_rn(a, exact_pow2(-q)));
  // value n * 2^q has code (q + 9) * 8 + n (n == 16 carries into the next binade by itself).
  return sign | static_cast<uint32_t>((q + 9) * 8 + static_cast<int>(n));
}

FIS_D uint32_t e4m3(float v) {
#if FLASHINFER_SM12X_NATIVE_E4M3
  uint16_t pair;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(0.0f), "f"(v));
  const uint32_t code = pair & 0xFFu;
  return (code & 0x7Fu) == 0x7Fu ? kE4m3Nan : code;  // NaN of either sign -> 0x7F
#else
  return e4m3_software(v);
#endif
}

// Four elements -> one word, v[0] in the low byte. Contract as e2m1x8: NaN blocks are patched by the caller
// (every byte 0x7F); finite and infinite inputs are exact here.
FIS_D uint32_t e4m3x4(const float (&v)[4]) {
#if FLASHINFER_SM12X_NATIVE_E4M3
  uint16_t lo, hi;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(lo) : "f"(v[1]), "f"(v[0]));
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(hi) : "f"(v[3]), "f"(v[2]));
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
#else
  return e4m3_software(v[0]) | (e4m3_software(v[1]) << 8) | (e4m3_software(v[2]) << 16) |
         (e4m3_software(v[3]) << 24);
#endif
}

// Exact E4M3 decode; 0x7F / 0xFF -> NaN. Every E4M3 value is an fp16 value, so the native path is exact.
FIS_D float e4m3_value(uint32_t code) {
#if FLASHINFER_SM12X_NATIVE_E4M3
  uint32_t halves;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(halves) : "h"(static_cast<uint16_t>(code & 0xFFu)));
  return __half2float(__ushort_as_half(static_cast<unsigned short>(halves & 0xFFFFu)));
#else
  const uint32_t exp = (code >> 3) & 0xFu, man = code & 0x7u;
  float mag;
  if (exp == 0xF && man == 0x7) {
    mag = __uint_as_float(0x7FC00000u);
  } else if (exp == 0) {
    mag = static_cast<float>(man) * 0x1p-9f;
  } else {
    mag = __uint_as_float(((exp + 120u) << 23) | (man << 20));  // (1 + man/8) * 2^(exp - 7)
  }
  return (code & 0x80u) ? -mag : mag;
#endif
}

// NVFP4 block: code = e4m3_rn(gs * (amax * fl32(1/6))) (0x7F when amax is NaN/inf); returns the element
// multiplier min(1 / (e4m3_value(code) * (1 / gs)), FLT_MAX) (NaN stays NaN), or 0 for a zero block.
FIS_D float nvfp4_scale(float amax, float global_scale, uint32_t& code) {
  const float kRcp6 = 0x1.555556p-3f;  // fl32(1/6)
  code = e4m3(__fmul_rn(global_scale, __fmul_rn(amax, kRcp6)));
  if (!(abs_bits(amax) < 0x7F800000u)) code = kE4m3Nan;
  float scale = __frcp_rn(__fmul_rn(e4m3_value(code), __frcp_rn(global_scale)));
  if (scale > 3.402823466e38f) scale = 3.402823466e38f;  // a NaN compares false and stays NaN
  return amax != 0.0f ? scale : 0.0f;
}

// ------------------------------------------------------------------------------------------------- loads
template <class T>
struct LoadTraits;
template <>
struct LoadTraits<float> {
  static constexpr int kPerVector = 4;
};
template <>
struct LoadTraits<__half> {
  static constexpr int kPerVector = 8;
};
template <>
struct LoadTraits<__nv_bfloat16> {
  static constexpr int kPerVector = 8;
};

FIS_D float widen(float x) { return x; }
FIS_D float widen(__half x) { return __half2float(x); }
FIS_D float widen(__nv_bfloat16 x) { return __uint_as_float(static_cast<uint32_t>(__bfloat16_as_ushort(x)) << 16); }

// 16-byte loads of N consecutive elements (src 16-byte aligned), kept raw; widen_raw turns them into floats exactly.
// A kernel that issues every load of a batch before widening any keeps them all in flight at once.
template <class T, int N>
struct RawVec {
  static constexpr int kVectors = N * static_cast<int>(sizeof(T)) / 16;
  uint4 v[kVectors];
};
template <class T, int N>
FIS_D void load_raw(const T* src, RawVec<T, N>& raw) {
#pragma unroll
  for (int i = 0; i < RawVec<T, N>::kVectors; ++i) raw.v[i] = __ldg(reinterpret_cast<const uint4*>(src) + i);
}
template <class T, int N>
FIS_D void widen_raw(const RawVec<T, N>& raw, float* out) {
  constexpr int kPer = 16 / static_cast<int>(sizeof(T));
#pragma unroll
  for (int i = 0; i < RawVec<T, N>::kVectors; ++i) {
    const T* elems = reinterpret_cast<const T*>(&raw.v[i]);
#pragma unroll
    for (int j = 0; j < kPer; ++j) out[i * kPer + j] = widen(elems[j]);
  }
}

// N consecutive elements from a 16-byte aligned `src`, widened exactly to float, in 16-byte loads.
template <class T, int N>
FIS_D void load_as_float(const T* __restrict__ src, float (&v)[N]) {
  static_assert(N % LoadTraits<T>::kPerVector == 0, "N must be a whole number of 16-byte vectors");
  RawVec<T, N> raw;
  load_raw(src, raw);
  widen_raw(raw, v);
}

// ------------------------------------------------------------------------------------ cooperative helpers
// Max over `kLanes` adjacent, aligned lanes (all 32 lanes must call).
template <int kLanes>
FIS_D uint32_t group_max(uint32_t x) {
#pragma unroll
  for (int offset = 1; offset < kLanes; offset <<= 1) x = max(x, __shfl_xor_sync(0xFFFFFFFFu, x, offset));
  return x;
}

template <int N>
FIS_D uint32_t local_amax_bits(const float (&v)[N]) {
  uint32_t m = 0;
#pragma unroll
  for (int i = 0; i < N; ++i) m = max(m, abs_bits(v[i]));
  return m;
}

// How an MX element format packs into 32-bit words: elements per word, the word of a NaN block, the packer.
template <class Elem>
struct MxPacking;
template <>
struct MxPacking<E2m1Format> {
  static constexpr int kPerWord = 8;
  static constexpr uint32_t kNanWord = 0x77777777u;
  FIS_D static uint32_t pack(const float (&v)[8]) { return e2m1x8(v); }
};
template <>
struct MxPacking<E4m3Format> {
  static constexpr int kPerWord = 4;
  static constexpr uint32_t kNanWord = 0x7F7F7F7Fu;
  FIS_D static uint32_t pack(const float (&v)[4]) { return e4m3x4(v); }
};

// The MX segment quantizer of either element format (mxfp4_quantize_segment / mxfp8_quantize_segment).
template <class Elem, int N>
FIS_D uint32_t mx_quantize_segment(const float (&v)[N], ScaleRecipe recipe,
                                   uint32_t (&packed)[N / MxPacking<Elem>::kPerWord]) {
  static_assert(N == 8 || N == 16 || N == 32, "a lane holds 8, 16 or 32 elements of a 32-element block");
  using Packing = MxPacking<Elem>;
  const uint32_t code = e8m0_from_amax_bits<Elem>(group_max<32 / N>(local_amax_bits(v)), recipe);
  const float inverse = e8m0_inverse(code);
#pragma unroll
  for (int w = 0; w < N / Packing::kPerWord; ++w) {
    float scaled[Packing::kPerWord];
#pragma unroll
    for (int i = 0; i < Packing::kPerWord; ++i) scaled[i] = __fmul_rn(v[Packing::kPerWord * w + i], inverse);
    packed[w] = code == kE8m0Nan ? Packing::kNanWord : Packing::pack(scaled);
  }
  return code;
}

template <int N>
FIS_D uint32_t mxfp4_quantize_segment(const float (&v)[N], ScaleRecipe recipe, uint32_t (&packed)[N / 8]) {
  return mx_quantize_segment<E2m1Format, N>(v, recipe, packed);
}

template <int N>
FIS_D uint32_t mxfp8_quantize_segment(const float (&v)[N], ScaleRecipe recipe, uint32_t (&packed)[N / 4]) {
  return mx_quantize_segment<E4m3Format, N>(v, recipe, packed);
}

template <int N>
FIS_D uint32_t nvfp4_quantize_segment(const float (&v)[N], float global_scale, uint32_t (&packed)[N / 8]) {
  static_assert(N == 8 || N == 16, "a lane holds 8 or 16 elements of a 16-element block");
  const float amax = __uint_as_float(group_max<16 / N>(local_amax_bits(v)));
  uint32_t code;
  const float scale = nvfp4_scale(amax, global_scale, code);
  const bool nan_block = !(abs_bits(scale) <= 0x7F800000u);
#pragma unroll
  for (int w = 0; w < N / 8; ++w) {
    float scaled[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) scaled[i] = __fmul_rn(v[8 * w + i], scale);
    packed[w] = nan_block ? 0x77777777u : e2m1x8(scaled);
  }
  return code;
}

#undef FIS_HD
#undef FIS_D

}  // namespace flashinfer_sm12x::quantize
