// SPDX-License-Identifier: Apache-2.0
// A bounded thread-safe LRU map from a launch key to a prepared kernel launch (plain C++17, no CUDA: unit-tested on
// the host). gemm/cached_launch.cuh keys it by everything a GEMM's CUTLASS Params are computed from, so a repeated
// call with the same shape and the same device addresses skips argument building and TMA descriptor encoding.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace flashinfer_sm12x::mm_fp4 {

// The values a prepared launch depends on, as words (device, shape, every pointer; see key_of in
// gemm/cached_launch.cuh). Equal keys give bit-identical kernel parameters.
struct LaunchKey {
  static constexpr int kWords = 16;
  std::array<uint64_t, kWords> words{};

  bool operator==(LaunchKey const& other) const { return words == other.words; }
};

struct LaunchKeyHash {
  size_t operator()(LaunchKey const& key) const {
    uint64_t h = 0;
    for (uint64_t word : key.words) {  // splitmix64's finaliser per word: pointers' zero low bits get mixed in
      h ^= word + 0x9E3779B97F4A7C15ull;
      h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
      h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
      h ^= h >> 31;
    }
    return static_cast<size_t>(h);
  }
};

// Bounded capacity, least-recently-used replacement. The default holds every layer of a deep model: layers of one
// shape share a module (and so this cache) but each has its own weight addresses, and one forward pass touches them
// all. One mutex guards lookups and inserts: values are copied out under the lock, so callers launch from their own
// copy and concurrent callers (any threads, any streams) never see a half-written entry. Value must be
// default-constructible and copy-assignable.
template <class Value, int kEntries = 256>
class LaunchCache {
  static_assert(kEntries > 0, "a cache holds at least one entry");

 public:
  LaunchCache() { entries_.reserve(kEntries); }

  // Copies the value stored for `key` into `out` and marks it most recently used; false on a miss.
  bool find(LaunchKey const& key, Value& out) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = entries_.find(key);
    if (found == entries_.end()) {
      ++misses_;
      return false;
    }
    found->second.last_use = ++clock_;
    out = found->second.value;
    ++hits_;
    return true;
  }

  // Stores `value` for `key`: over the same key if present (two threads missed at once), else as a new entry,
  // evicting the least recently used one when full (a linear scan: only on a miss, which rebuilds far more).
  void insert(LaunchKey const& key, Value const& value) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = entries_.find(key);
    if (found == entries_.end()) {
      if (entries_.size() >= static_cast<size_t>(kEntries)) {
        auto oldest = entries_.begin();
        for (auto it = entries_.begin(); it != entries_.end(); ++it) {
          if (it->second.last_use < oldest->second.last_use) oldest = it;
        }
        entries_.erase(oldest);
      }
      found = entries_.emplace(key, Entry{}).first;
    }
    found->second.value = value;
    found->second.last_use = ++clock_;
  }

  int size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int>(entries_.size());
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
  struct Entry {
    Value value{};
    uint64_t last_use = 0;
  };

  std::mutex mutex_;
  std::unordered_map<LaunchKey, Entry, LaunchKeyHash> entries_;
  uint64_t clock_ = 0;
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
};

}  // namespace flashinfer_sm12x::mm_fp4
