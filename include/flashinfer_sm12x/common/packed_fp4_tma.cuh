// SPDX-License-Identifier: Apache-2.0
// TMA for packed e2m1 operands as plain bytes.
//
// CUTLASS's SM120 collective encodes packed fp4 A/B with the sub-byte TMA type 16U4_ALIGN8B. For packed
// data (two e2m1 per byte, no smem gaps) that transfer is byte-identical to a UINT8 transfer of half the K
// extent: both move the same 16-byte rows into the same swizzled smem bytes. The byte form exists on every
// TMA-capable GPU (SM90 included; CUTLASS's SM90 mixed-input GEMM loads int4 this way), so the 64-row
// mainloop and the grouped packed-e2m1 mainloop use it natively and the emulated SM90 build uses it for every tile.
//
// The atom is built from an element-typed (4-bit) tensor and a 4-bit smem layout; make_tma_copy<uint8_t>
// recasts both, so gmem coordinates handed to it stay in elements.
#pragma once

#include "cute/atom/copy_traits_sm90_tma.hpp"
#include "cute/tensor.hpp"

namespace flashinfer_sm12x {

template <class Element, class GmemCopy, class SmemStageLayout, class Coords, class Stride, class BoxShape>
auto make_packed_fp4_tma(Element const* ptr, Coords coords, Stride stride, SmemStageLayout smem_stage,
                         BoxShape box) {
  using namespace cute;
  static_assert(sizeof_bits_v<Element> == 4, "packed e2m1 operands only");
  Tensor gmem = make_tensor(recast_ptr<Element>(ptr), make_layout(coords, stride));
  return make_tma_copy<uint8_t>(GmemCopy{}, gmem, smem_stage, box, _1{});  // no multicast on SM12x
}

// The atom's type for a given stride type (Params must name it before a pointer exists).
template <class Element, class GmemCopy, class SmemStageLayout, class Stride, class BoxShape>
using PackedFp4Tma = decltype(make_packed_fp4_tma<Element, GmemCopy>(
    static_cast<Element const*>(nullptr), cute::repeat_like(Stride{}, int32_t(0)), Stride{}, SmemStageLayout{},
    BoxShape{}));

}  // namespace flashinfer_sm12x
