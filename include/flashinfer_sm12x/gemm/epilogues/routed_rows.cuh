// SPDX-License-Identifier: Apache-2.0
// Which rows of a MoE GEMM's M tile hold routed (token, expert) pairs. The rows are expert-contiguous with every
// expert's segment padded to the tile height; a tile's rows past its expert's count are padding, whose GEMM output
// nobody reads (GEMM2 and finalize read routed rows only), so the MoE epilogues do not write them: at decode the
// padded rows are nearly all of the bound the buffers are sized by.
#pragma once

#include <cstdint>
#include <climits>

#include "cutlass/cutlass.h"

namespace flashinfer_sm12x::grouped_mm_fp4 {

// The routing plan's per-expert tables (device memory); null padded_start: every row counts as routed.
struct RoutedRows {
  const int32_t* padded_start = nullptr;  // [E] first row of each expert's segment
  const int32_t* counts = nullptr;        // [E] routed rows of each expert

  // One past the last routed row of `expert`'s segment: the rows of a tile of that expert are routed below it (a
  // tile's rows all lie at or past the segment's start). Read once per tile: the epilogues compare rows with it.
  CUTLASS_DEVICE int64_t end_of(int expert) const {
    if (padded_start == nullptr) return INT64_MAX;
    return static_cast<int64_t>(__ldg(padded_start + expert)) + __ldg(counts + expert);
  }
};

}  // namespace flashinfer_sm12x::grouped_mm_fp4
