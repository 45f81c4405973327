// SPDX-License-Identifier: Apache-2.0
// A small thread-safe LRU map from a launch key to a prepared kernel launch (plain C++17, no CUDA: unit-tested on
// the host). gemm/cached_launch.cuh keys it by everything a GEMM's CUTLASS Params are computed from, so a repeated
// call with the same shape and the same device addresses skips argument building and TMA descriptor encoding.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>

namespace flashinfer_sm12x::mm_fp4 {

// The values a prepared launch depends on, as words (device, shape, every pointer; see key_of in
// gemm/cached_launch.cuh). Equal keys give bit-identical kernel parameters.
struct LaunchKey {
  static constexpr int kWords = 13;
  std::array<uint64_t, kWords> words{};

  bool operator==(LaunchKey const& other) const { return words == other.words; }
};

// Fixed capacity, least-recently-used replacement. One mutex guards lookups and inserts: values are copied out
// under the lock, so callers launch from their own copy and concurrent callers (any streams, any threads) never
// see a half-written entry. Value must be default-constructible and copy-assignable.
template <class Value, int kEntries = 8>
class LaunchCache {
  static_assert(kEntries > 0, "a cache holds at least one entry");

 public:
  // Copies the value stored for `key` into `out` and marks it most recently used; false on a miss.
  bool find(LaunchKey const& key, Value& out) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Slot& slot : slots_) {
      if (slot.used && slot.key == key) {
        slot.last_use = ++clock_;
        out = slot.value;
        ++hits_;
        return true;
      }
    }
    ++misses_;
    return false;
  }

  // Stores `value` for `key`: over the same key if present (two threads missed at once), else into a free slot,
  // else over the least recently used entry.
  void insert(LaunchKey const& key, Value const& value) {
    std::lock_guard<std::mutex> lock(mutex_);
    Slot* target = nullptr;
    for (Slot& slot : slots_) {
      if (slot.used && slot.key == key) target = &slot;
    }
    for (Slot& slot : slots_) {
      if (target == nullptr && !slot.used) target = &slot;
    }
    if (target == nullptr) {
      target = &slots_[0];
      for (Slot& slot : slots_) {
        if (slot.last_use < target->last_use) target = &slot;
      }
    }
    target->key = key;
    target->value = value;
    target->used = true;
    target->last_use = ++clock_;
  }

  int size() {
    std::lock_guard<std::mutex> lock(mutex_);
    int n = 0;
    for (Slot const& slot : slots_) n += slot.used ? 1 : 0;
    return n;
  }

  uint64_t hits() {
    std::lock_guard<std::mutex> lock(mutex_);
    return hits_;
  }

  uint64_t misses() {
    std::lock_guard<std::mutex> lock(mutex_);
    return misses_;
  }

  static constexpr int capacity() { return kEntries; }

 private:
  struct Slot {
    LaunchKey key;
    Value value{};
    uint64_t last_use = 0;
    bool used = false;
  };

  std::mutex mutex_;
  std::array<Slot, kEntries> slots_{};
  uint64_t clock_ = 0;
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
};

}  // namespace flashinfer_sm12x::mm_fp4
