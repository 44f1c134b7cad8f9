// Helpers shared by the fuzz targets (tests/fuzz/README.md): reading a
// structured input from the front of the fuzzer's bytes, a deterministic
// split of a byte stream into chunks, and the check that turns a broken
// invariant into a crash libFuzzer reports and keeps.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

namespace tapwire::fuzz {

// A broken invariant is a finding like a sanitizer report: abort() makes
// libFuzzer save the input as crash-*.
[[noreturn]] inline void check_failed(const char* expr, const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "\n%s:%d: invariant broken: %s%s%s\n", file, line, expr, what.empty() ? "" : ": ",
               what.c_str());
  std::abort();
}

#define FUZZ_CHECK(cond, ...)                                                                   \
  do {                                                                                         \
    if (!(cond)) ::tapwire::fuzz::check_failed(#cond, __FILE__, __LINE__, std::string{__VA_ARGS__}); \
  } while (0)

// Reads fixed-width fields and byte runs from the front of the input; past
// the end every read gives zeros / an empty span, so that any input decodes.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  explicit Reader(std::span<const uint8_t> s) : p_(s.data()), n_(s.size()) {}

  bool empty() const { return pos_ >= n_; }
  size_t left() const { return n_ - pos_; }

  template <typename T>
  T get() {
    T v{};
    const size_t k = std::min(sizeof(T), left());
    std::memcpy(&v, p_ + pos_, k);  // little-endian host: the first bytes are the low ones
    pos_ += k;
    return v;
  }
  uint8_t u8() { return get<uint8_t>(); }
  uint16_t u16() { return get<uint16_t>(); }
  uint32_t u32() { return get<uint32_t>(); }
  uint64_t u64() { return get<uint64_t>(); }
  bool flag() { return u8() & 1; }

  std::span<const uint8_t> bytes(size_t k) {
    k = std::min(k, left());
    std::span<const uint8_t> s(p_ + pos_, k);
    pos_ += k;
    return s;
  }
  std::span<const uint8_t> rest() { return bytes(left()); }
  std::string_view text(size_t k) {
    auto s = bytes(k);
    return {reinterpret_cast<const char*>(s.data()), s.size()};
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
};

// splitmix64: the chunk sizes of a split come from a seed taken off the
// input, so that a crash replays exactly and the fuzzer can mutate the split.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // In [0, n); 0 when n is 0.
  size_t below(size_t n) { return n ? static_cast<size_t>(next() % n) : 0; }

 private:
  uint64_t s_;
};

// Chunk sizes for splitting a stream: mostly small (1 to 16 bytes, where
// resumable parsers break), sometimes large. `max_chunk` 0: the whole rest.
inline size_t chunk_size(Rng& rng, size_t left, size_t max_chunk) {
  if (left == 0) return 0;
  if (max_chunk == 0) return left;
  size_t k;
  switch (rng.below(4)) {
    case 0: k = 1; break;
    case 1: k = 1 + rng.below(16); break;
    case 2: k = 1 + rng.below(max_chunk); break;
    default: k = 1 + rng.below(4 * max_chunk); break;
  }
  return std::min(k, left);
}

// Where a target writes its scratch files: tmpfs when there is one (no disk
// I/O per input), else the temporary directory.
inline std::string scratch_root() {
  const char* shm = "/dev/shm";
  if (access(shm, W_OK) == 0) return shm;
  const char* tmp = std::getenv("TMPDIR");
  return tmp && *tmp ? tmp : "/tmp";
}

inline std::string_view as_text(std::span<const uint8_t> s) {
  return {reinterpret_cast<const char*>(s.data()), s.size()};
}

}  // namespace tapwire::fuzz
