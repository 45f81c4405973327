// SPDX-License-Identifier: Apache-2.0
// grouped_mm_fp4, the MoE GEMM: a block-scaled GEMM over expert-contiguous rows, D[M_total, N], where rows are
// sorted by expert and every expert's segment is padded to a multiple of TileM, so each M tile belongs to one expert.
// B (and its scales) is batched [E, N, K]; M tile m multiplies batch Problem::b_batch_of_m_tile[m]
// (common/grouped_b.cuh), written on the device by the routing: the host sizes M_total by a bound and never reads the
// counts (no sync; see flashinfer_sm12x/ops/grouped_mm_fp4.py).
//
// The configuration is mm_fp4's with Grouped = true. Its mainloop carries the table: packed e2m1 x e2m1 (W4A4)
// through ByteTmaMainloop (128-row tiles) or M64PingpongMainloop (64-row tiles), which pick the batch in their own
// producer; W4A8 through GroupedCollectiveMainloop around CUTLASS's collective.
#pragma once

#include "flashinfer_sm12x/common/grouped_b.cuh"
#include "flashinfer_sm12x/gemm/config.cuh"
#include "flashinfer_sm12x/gemm/launcher.cuh"

namespace flashinfer_sm12x::mm_fp4 {

// Epilogue: StoreD writes D; SwigluQuantize (gemm/epilogues/swiglu_quantize.cuh) is the MoE's GEMM1 with its
// activation fused.
template <class Format, class ElementD, int TileM, int TileN, int TileK, class Schedule, bool Emulated,
          class Epilogue = StoreD>
using GroupedMmFp4Config = MmFp4Config<Format, ElementD, TileM, TileN, TileK, Schedule, Emulated, false, true,
                                       Epilogue>;

}  // namespace flashinfer_sm12x::mm_fp4
