// SPDX-License-Identifier: Apache-2.0
// grouped_mm_fp4, the MoE GEMM: a block-scaled GEMM over expert-contiguous rows, D[M_total, N], where rows are
// sorted by expert and every expert's segment is padded to a multiple of TileM, so each M tile belongs to one expert.
// B (and its scales) is batched [E, N, K]; M tile m multiplies batch gemm::Problem::b_batch_of_m_tile[m]
// (common/grouped_b.cuh), written on the device by the routing: the host sizes M_total by a bound and never reads the
// counts (no sync; see flashinfer_sm12x/ops/grouped_mm_fp4.py). Given the routing plan's per-expert padded_start and
// counts (gemm::Problem::a_row_padded_start / a_row_counts), every grouped mainloop reads A's rows of a tile only up
// to its expert's last counted row (common/a_row_bounds.cuh): at decode, the routed rows instead of whole tiles.
//
// Namespaces: the configuration, the problem, the launch and the mainloops the dense GEMM shares are
// flashinfer_sm12x::gemm (gemm/config.cuh, gemm/launcher.cuh); what only the grouped GEMM has lives in
// flashinfer_sm12x::grouped_mm_fp4: this configuration, GroupedCollectiveMainloop (gemm/mainloops/
// grouped_collective.cuh) and the MoE epilogues (gemm/epilogues/swiglu_quantize.cuh, store_routed.cuh).
//
// The configuration is the shared one with Grouped = true. Its mainloop carries the table: packed e2m1 x e2m1 (W4A4)
// through ByteTmaMainloop (128-row tiles) or M64PingpongMainloop (64-row tiles), which pick the batch in their own
// producer; W4A8 through GroupedCollectiveMainloop around CUTLASS's collective.
#pragma once

#include "flashinfer_sm12x/common/grouped_b.cuh"
#include "flashinfer_sm12x/gemm/config.cuh"
#include "flashinfer_sm12x/gemm/launcher.cuh"

namespace flashinfer_sm12x::grouped_mm_fp4 {

// Epilogue: gemm::StoreD writes D; SwigluQuantize (gemm/epilogues/swiglu_quantize.cuh) is the MoE's GEMM1 with its
// activation fused, StoreRouted (gemm/epilogues/store_routed.cuh) its GEMM2 writing the routed rows only.
template <class Format, class ElementD, int TileM, int TileN, int TileK, class Schedule, bool Emulated,
          class Epilogue = gemm::StoreD>
using GroupedMmFp4Config = gemm::MmFp4Config<Format, ElementD, TileM, TileN, TileK, Schedule, Emulated, false, true,
                                             Epilogue>;

}  // namespace flashinfer_sm12x::grouped_mm_fp4
