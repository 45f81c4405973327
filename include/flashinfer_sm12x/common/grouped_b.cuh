// SPDX-License-Identifier: Apache-2.0
// The per-M-tile expert table of grouped GEMMs over expert-contiguous rows (the MoE layout): M tile m multiplies
// B batch b_batch_of_m_tile[m], written on the device by the routing (no host sync). A null table means the plain
// batched GEMM (B batch = the problem's l coordinate). Every mainloop that serves grouped GEMMs carries a GroupedB
// in its Params and asks it for the batch of the tile it loads.
#pragma once

#include <cstdint>

#include "cutlass/cutlass.h"

#include "flashinfer_sm12x/common/a_row_bounds.cuh"

namespace flashinfer_sm12x {

struct GroupedB {
  int32_t const* b_batch_of_m_tile = nullptr;
  int batches = 1;  // extent of B's batch mode (E when grouped)

  // From a mainloop's GroupedBArguments: the table and E when grouped, else the problem's `problem_batches`.
  template <class Arguments>
  static GroupedB of(Arguments const& args, int problem_batches) {
    return GroupedB{args.b_batch_of_m_tile, args.b_batch_of_m_tile ? args.num_b_batches : problem_batches};
  }

  // One global load by the producer thread per output tile: negligible next to the tile's TMA traffic.
  CUTLASS_DEVICE int batch_of(int m_tile, int l_coord) const {
    return b_batch_of_m_tile ? __ldg(b_batch_of_m_tile + m_tile) : l_coord;
  }
};

template <class BaseArguments>
struct GroupedBArguments : BaseArguments {
  int32_t const* b_batch_of_m_tile = nullptr;
  int num_b_batches = 1;
  ARowBoundsArguments a_row_bounds;  // grouped configs only: per-expert A row bounds (common/a_row_bounds.cuh)
};

}  // namespace flashinfer_sm12x
