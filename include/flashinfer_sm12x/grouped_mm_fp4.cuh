// Grouped GEMM over expert-contiguous rows (the MoE layout): D[M_total, N] where rows are sorted by expert and
// every expert's segment is padded to a multiple of TileM, so each M tile belongs to one expert. The B operand
// (and its scales) is batched [E, N, K]; M tile m multiplies batch b_batch_of_m_tile[m], written on the device
// by the routing (no host sync: the host sizes M_total by a bound, see ops/grouped_mm_fp4.py).
//
// The mainloops that load A/B through byte-typed TMA (ByteTmaMainloop, M64PingpongMainloop) carry this in
// their Arguments/Params; a null table means the plain batched GEMM (B batch = the problem's l coordinate).
#pragma once

#include <cstdint>

#include "cutlass/cutlass.h"

namespace flashinfer_sm12x {

struct GroupedB {
  int32_t const* b_batch_of_m_tile = nullptr;
  int batches = 1;  // extent of B's batch mode (E when grouped)

  // One global load by the producer thread per output tile: negligible next to the tile's TMA traffic.
  CUTLASS_DEVICE int batch_of(int m_tile, int l_coord) const {
    return b_batch_of_m_tile ? __ldg(b_batch_of_m_tile + m_tile) : l_coord;
  }
};

template <class BaseArguments>
struct GroupedBArguments : BaseArguments {
  int32_t const* b_batch_of_m_tile = nullptr;
  int num_b_batches = 1;
};

}  // namespace flashinfer_sm12x
