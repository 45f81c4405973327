// SPDX-License-Identifier: Apache-2.0
// Per-expert bounds on A's rows for the grouped GEMMs (the MoE layout, gemm/grouped_mm_fp4.cuh).
//
// Every expert e's segment starts at padded_start[e] (a multiple of TileM) and holds counts[e] real rows, padded to
// TileM. Without bounds each M tile fetches all TileM rows of A; at decode most of them are padding. With bounds, an
// M tile whose expert's rows end inside it (row_end = padded_start[e] + counts[e] < the tile's end) loads A through
// a copy of A's descriptor whose row extent is row_end: TMA zero-fills the rows past it without fetching them and
// still counts the whole box's bytes, so the pipeline's transaction bytes are unchanged. A tile wholly past its
// expert's rows (the trailing tiles) fetches nothing. Full tiles use the Params' descriptor: no cost at prefill. The
// scales keep their whole 128-row atoms (the 128x4 layout interleaves rows; the glue zeroes padding-row scales).
//
// The copies live in global memory (TMA reads descriptors from global, param or const space), in a buffer of the
// call (the op allocates it with the workspace, so concurrent launches never share one): kSlotsPerOwner slots per
// owner, where an owner is a CTA slot of the launch:
//   - SM12x (CLC scheduler: the grid covers every tile, so blockIdx is unbounded): the SM, %smid (the launcher sizes
//     the buffer for twice the SM count: SM ids need not be contiguous). A grouped CTA needs more than half an SM's
//     shared memory (static_assert in gemm/config.cuh), so one CTA of any launch runs on an SM at a time, and a CTA
//     that starts there finds every earlier CTA's loads complete.
//   - SM90 (the emulated test build, persistent scheduler: the grid is at most the SM count): the linear blockIdx.
// An owner past the buffer's owners reads the whole tile (the old behaviour: correct, unbounded).
// Slot reuse: the producer rewrites the slots of its owner in a ring. Every tile issues at least one k-tile load, each
// after acquiring a pipeline stage; a stage is acquired again only once the consumers released it, i.e. once its
// loads landed. With Stages + 1 slots, at least Stages loads (so every stage once) are issued between a slot's use
// and its rewrite: the loads that read it have completed.
//
// The rewrite (one thread: the producer's elected lane) is in the generic proxy: 128-byte copy of the Params'
// descriptor, tensormap.replace of the row dimension in global memory, then a release fence from the generic to the
// tensormap proxy and the acquire fence that orders the TMA's descriptor read after it.
#pragma once

#include <cstdint>

#include "cutlass/cutlass.h"
#include "cute/tensor.hpp"
#include "cute/atom/copy_traits_sm90_tma.hpp"  // with cute/arch/copy_sm90_desc.hpp: the descriptor fences

namespace flashinfer_sm12x {

// What the grouped GEMM's launcher hands the mainloop (host memory): the routing plan's tables (device, int32 [E])
// and the descriptor slots (device, 128-byte aligned, `slot_owners * slots_per_owner` descriptors); all null: off.
struct ARowBoundsArguments {
  int32_t const* padded_start = nullptr;
  int32_t const* counts = nullptr;
  void* descriptor_slots = nullptr;
  int slot_owners = 0;
};

template <int SlotsPerOwner, int TileM>
struct ARowBounds {
  static constexpr int kSlotsPerOwner = SlotsPerOwner;
  static constexpr int kTileM = TileM;
  int32_t const* padded_start = nullptr;  // null: unbounded
  int32_t const* counts = nullptr;
  cute::TmaDescriptor* slots = nullptr;
  int slot_owners = 0;
  int row_dim = -1;  // the TMA dimension of A's rows (-1: A's rows are merged with another mode: unbounded)

  // Host: from the launcher's arguments and A's atom; `make_a_tensor(rows)` is A's gmem tensor as the atom encoded it
  // (element type included), with `rows` rows.
  template <class Tma, class MakeATensor>
  static ARowBounds of(ARowBoundsArguments const& args, Tma const& tma_a, MakeATensor const& make_a_tensor, int rows) {
    ARowBounds b{};
    if (!args.padded_start || !args.counts || !args.descriptor_slots || args.slot_owners <= 0) return b;
    b.row_dim = row_dimension(tma_a, make_a_tensor(rows), make_a_tensor(rows + 1));
    if (b.row_dim < 0) return b;
    b.padded_start = args.padded_start;
    b.counts = args.counts;
    b.slots = static_cast<cute::TmaDescriptor*>(args.descriptor_slots);
    b.slot_owners = args.slot_owners;
    return b;
  }

  // The descriptor dimension whose extent is the row count: the one that grows by one with one more row.
  template <class Tma, class Tensor>
  static int row_dimension(Tma const& tma_a, Tensor const& a, Tensor const& a_plus_one_row) {
    cute::array<uint32_t, 5> extent{1, 1, 1, 1, 1}, extent_plus{1, 1, 1, 1, 1};
    cute::array<uint64_t, 5> stride{0, 0, 0, 0, 0}, stride_plus{0, 0, 0, 0, 0};
    cute::detail::fill_tma_gmem_shape_stride(tma_a, a, extent, stride);
    cute::detail::fill_tma_gmem_shape_stride(tma_a, a_plus_one_row, extent_plus, stride_plus);
    int dim = -1;
    for (int i = 0; i < 5; ++i) {
      if (extent_plus[i] == extent[i]) continue;
      if (dim >= 0 || extent_plus[i] != extent[i] + 1) return -1;
      dim = i;
    }
    return dim;
  }

  CUTLASS_DEVICE static int owner() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1200
    uint32_t sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    return static_cast<int>(sm);
#else
    return static_cast<int>(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z));
#endif
  }

  // The descriptor M tile `m_tile` (of TileM rows, expert `expert`) loads A through: `full` when the expert's rows
  // fill the tile, else a slot holding `full` with the row extent cut at the expert's last row. `ring` is the
  // producer's position in its owner's slots (starts at 0, advanced here).
  CUTLASS_DEVICE cute::TmaDescriptor const* descriptor(cute::TmaDescriptor const* full, int m_tile, int expert,
                                                       int& ring) const {
    if (padded_start == nullptr) return full;
    const int row_end = __ldg(padded_start + expert) + __ldg(counts + expert);
    if (row_end >= (m_tile + 1) * TileM) return full;
    const int own = owner();
    if (own >= slot_owners) return full;
    cute::TmaDescriptor* slot = slots + own * kSlotsPerOwner + ring;
    ring = ring + 1 == kSlotsPerOwner ? 0 : ring + 1;
    auto const* src = reinterpret_cast<uint4 const*>(full);
    auto* dst = reinterpret_cast<uint4*>(slot);
    // Rolled: the producer warp runs under a small register budget (40 in the Pingpong kernel).
    CUTLASS_PRAGMA_NO_UNROLL
    for (int i = 0; i < int(sizeof(cute::TmaDescriptor) / sizeof(uint4)); ++i) dst[i] = src[i];
    // An extent is at least 1: an empty first expert keeps row 0 (a padding row, never routed).
    replace_row_extent(slot, static_cast<uint32_t>(row_end > 1 ? row_end : 1));
    cute::tma_descriptor_fence_release();
    cute::tma_descriptor_fence_acquire(slot);
    return slot;
  }

 private:
  // tensormap.replace takes the dimension as an immediate.
  CUTLASS_DEVICE void replace_row_extent(cute::TmaDescriptor* slot, uint32_t rows) const {
#if defined(CUTE_ARCH_DEVICE_MODIFIABLE_TMA_SM90_ENABLED)
    const uint64_t addr = reinterpret_cast<uint64_t>(slot);
    switch (row_dim) {
      case 0: asm volatile("tensormap.replace.tile.global_dim.global.b1024.b32 [%0], 0, %1;" ::"l"(addr), "r"(rows) : "memory"); break;
      case 1: asm volatile("tensormap.replace.tile.global_dim.global.b1024.b32 [%0], 1, %1;" ::"l"(addr), "r"(rows) : "memory"); break;
      case 2: asm volatile("tensormap.replace.tile.global_dim.global.b1024.b32 [%0], 2, %1;" ::"l"(addr), "r"(rows) : "memory"); break;
      case 3: asm volatile("tensormap.replace.tile.global_dim.global.b1024.b32 [%0], 3, %1;" ::"l"(addr), "r"(rows) : "memory"); break;
      default: asm volatile("tensormap.replace.tile.global_dim.global.b1024.b32 [%0], 4, %1;" ::"l"(addr), "r"(rows) : "memory"); break;
    }
#else
    CUTE_INVALID_CONTROL_PATH("A row bounds need device-modifiable TMA descriptors (sm_90a, sm_120a, sm_121a)");
#endif
  }
};

// Slots per owner of a mainloop with `stages` pipeline stages (see the header comment), and their bytes.
constexpr int a_row_bound_slots_per_owner(int stages) { return stages + 1; }
constexpr size_t a_row_bounds_slot_bytes(int slot_owners, int stages) {
  return static_cast<size_t>(slot_owners) * a_row_bound_slots_per_owner(stages) * sizeof(cute::TmaDescriptor);
}

// A's gmem tensor with `rows` rows as a TMA atom encodes it (recast to its TMA element type), for ARowBounds::of.
template <class TmaInternal, class Element, class StrideA>
auto a_rows_tensor(Element const* ptr, int rows, int k, int l, StrideA const& stride_a) {
  auto a = cute::make_tensor(cute::recast_ptr<Element>(ptr), cute::make_layout(cute::make_shape(rows, k, l), stride_a));
  return cute::recast<TmaInternal>(a);
}

// The producer's position in its owner's slots, kept by a grouped mainloop across its tiles (a base of the mainloop:
// empty for dense configs).
template <bool Grouped>
struct ARowBoundsRing {};
template <>
struct ARowBoundsRing<true> {
  int a_slot_ring = 0;

  // The callable collective_tma_operands (common/tma_producer.cuh) asks for A's descriptor of a tile.
  template <class Bounds, class Tma>
  CUTLASS_DEVICE auto a_descriptor(Bounds const& bounds, Tma const& tma_a) {
    return [this, &bounds, &tma_a](int m_tile, int expert) {
      return bounds.descriptor(tma_a.get_tma_descriptor(), m_tile, expert, a_slot_ring);
    };
  }
};

// A's operand through a descriptor chosen per tile (common/tma_producer.cuh's TmaOperand otherwise).
template <class Tma, class SrcTiles, class DstStages>
struct BoundedTmaOperand {
  Tma const* tma;
  cute::TmaDescriptor const* desc;
  SrcTiles src;
  DstStages dst;

  template <class Barrier, class KTile>
  CUTLASS_DEVICE void load(Barrier& full_barrier, KTile const& k_tile, int stage) const {
    using cute::_;
    cute::copy(tma->with(desc, full_barrier), src(_, _, _, k_tile), dst(_, _, _, stage));
  }
};

template <class Tma, class CtaTiles, class SmemStages>
CUTLASS_DEVICE auto bounded_tma_operand(Tma const& tma, cute::TmaDescriptor const* desc, CtaTiles const& cta_tiles,
                                        SmemStages const& smem_stages) {
  auto cta_tma = tma.get_slice(0);
  auto src = cta_tma.partition_S(cta_tiles);
  auto dst = cta_tma.partition_D(smem_stages);
  return BoundedTmaOperand<Tma, decltype(src), decltype(dst)>{&tma, desc, src, dst};
}

}  // namespace flashinfer_sm12x
