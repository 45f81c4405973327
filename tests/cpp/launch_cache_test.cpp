// SPDX-License-Identifier: Apache-2.0
// Host unit test of gemm/launch_cache.h (plain C++17; built and run by tests/mm_fp4/test_host_path.py with the host
// compiler). Prints "ok" and exits 0, or names the first failed check and exits 1.
#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

#include "flashinfer_sm12x/gemm/launch_cache.h"

namespace {

using flashinfer_sm12x::mm_fp4::LaunchCache;
using flashinfer_sm12x::mm_fp4::LaunchKey;

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAILED: %s\n", what);
    ++failures;
  }
}

LaunchKey key_with(uint64_t seed) {
  LaunchKey key;
  for (int i = 0; i < LaunchKey::kWords; ++i) key.words[i] = seed * 1000 + static_cast<uint64_t>(i);
  return key;
}

struct alignas(64) Value {  // like CUTLASS Params: large, over-aligned (TMA descriptors are 64-byte aligned)
  int payload = 0;
  char padding[500] = {};
};

void test_hit_after_insert_and_miss_on_any_word() {
  LaunchCache<Value, 8> cache;
  const LaunchKey key = key_with(1);
  Value got;
  expect(!cache.find(key, got), "an empty cache misses");
  cache.insert(key, Value{42, {}});
  expect(cache.find(key, got) && got.payload == 42, "the inserted key hits with its value");
  for (int i = 0; i < LaunchKey::kWords; ++i) {
    LaunchKey changed = key;
    changed.words[i] += 256;  // one pointer moved, one dimension changed, another device
    expect(!cache.find(changed, got), "a key differing in any one word misses");
  }
  expect(cache.hits() == 1 && cache.misses() == 1 + LaunchKey::kWords, "hits and misses are counted");
}

void test_reinsert_replaces_in_place() {
  LaunchCache<Value, 4> cache;
  cache.insert(key_with(1), Value{1, {}});
  cache.insert(key_with(1), Value{2, {}});
  Value got;
  expect(cache.size() == 1, "inserting a present key does not take a second slot");
  expect(cache.find(key_with(1), got) && got.payload == 2, "the later value wins");
}

void test_least_recently_used_is_evicted() {
  LaunchCache<Value, 4> cache;
  for (int i = 0; i < 4; ++i) cache.insert(key_with(i), Value{i, {}});
  expect(cache.size() == 4, "the cache fills to its capacity");
  Value got;
  expect(cache.find(key_with(0), got), "key 0 present");  // key 0 now most recently used; key 1 the oldest
  cache.insert(key_with(9), Value{9, {}});
  expect(cache.size() == 4, "the size stays at the capacity");
  expect(!cache.find(key_with(1), got), "the least recently used key (1) was evicted");
  expect(cache.find(key_with(0), got) && got.payload == 0, "the recently used key (0) stayed");
  expect(cache.find(key_with(2), got) && cache.find(key_with(3), got), "the others stayed");
  expect(cache.find(key_with(9), got) && got.payload == 9, "the new key is present");
}

void test_rotation_beyond_capacity_always_misses() {
  // Twice as many keys as entries, used round-robin: LRU evicts each key before its next use.
  LaunchCache<Value, 8> cache;
  Value got;
  int hits = 0;
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 16; ++i) {
      if (cache.find(key_with(i), got)) {
        ++hits;
      } else {
        cache.insert(key_with(i), Value{i, {}});
      }
    }
  }
  expect(hits == 0, "16 keys round-robin through 8 entries never hit");
}

void test_concurrent_use_keeps_values_consistent() {
  // Each key's value is derived from the key; readers must never see another key's value or a torn copy.
  LaunchCache<Value, 8> cache;
  std::atomic<int> wrong{0};
  auto worker = [&](int offset) {
    Value got;
    for (int iter = 0; iter < 20000; ++iter) {
      const int id = (iter * 7 + offset) % 12;
      if (cache.find(key_with(id), got)) {
        if (got.payload != id || got.padding[499] != static_cast<char>(id)) wrong.fetch_add(1);
      } else {
        Value value{id, {}};
        value.padding[499] = static_cast<char>(id);
        cache.insert(key_with(id), value);
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back(worker, t);
  for (std::thread& thread : threads) thread.join();
  expect(wrong.load() == 0, "concurrent finds and inserts return only the key's own value");
  expect(cache.size() == 8, "the cache stays at its capacity");
}

void test_default_capacity_holds_a_deep_model() {
  // 200 layers of one shape: each its own weight addresses, all used once per forward pass.
  LaunchCache<Value> cache;
  expect(LaunchCache<Value>::capacity() >= 200, "the default capacity holds every layer of a deep model");
  Value got;
  int hits = 0;
  for (int pass = 0; pass < 3; ++pass) {
    for (int layer = 0; layer < 200; ++layer) {
      if (cache.find(key_with(layer), got)) {
        hits += got.payload == layer ? 1 : 0;
      } else {
        cache.insert(key_with(layer), Value{layer, {}});
      }
    }
  }
  expect(hits == 400, "after the first pass every layer hits");
  expect(reinterpret_cast<uintptr_t>(&got) % alignof(Value) == 0, "values keep their alignment");
}

}  // namespace

int main() {
  test_hit_after_insert_and_miss_on_any_word();
  test_reinsert_replaces_in_place();
  test_least_recently_used_is_evicted();
  test_rotation_beyond_capacity_always_misses();
  test_concurrent_use_keeps_values_consistent();
  test_default_capacity_holds_a_deep_model();
  if (failures == 0) std::printf("ok\n");
  return failures == 0 ? 0 : 1;
}
