// What every protocol parser returns: how it went and how many bytes it
// consumed. Parsers run on hostile input at line rate: return values, never
// exceptions; every size taken off the wire is checked against a cap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tapwire::proto {

enum class ParseStatus : uint8_t {
  NeedMoreData,  // incomplete: present the unconsumed bytes again, with more after them
  Invalid,  // not this protocol / corrupt: the caller counts it; the parser resynchronises
  Ignored,  // well-formed but of no interest (e.g. a DNS message of an opcode we skip)
  Done,  // a message (or part of one, for streamed bodies) was consumed
};

struct ParseResult {
  ParseStatus status;
  size_t consumed;  // bytes of the input used, also for Invalid (bytes skipped while resynchronising)
};

const char* to_string(ParseStatus s);

// Memory accounting (the dissector's memory limit): what one heap
// allocation of `n` bytes costs, allocator overhead included: glibc malloc's
// 8-byte header, 16-byte granules and 32-byte minimum chunk. mimalloc (the
// dissector's allocator) has no header and finer classes: this overestimates
// it a little, never underestimates by much.
constexpr size_t heap_bytes(size_t n) { return n == 0 ? 0 : n + 8 <= 32 ? 32 : (n + 8 + 15) & ~size_t{15}; }
// A std::string's own allocation: none while it fits in the object (SSO).
// (Past the SSO capacity the allocation is over 16 bytes: heap_bytes without its minimum.)
inline size_t string_heap_bytes(const std::string& s) {
  return s.capacity() > 15 ? (s.capacity() + 1 + 8 + 15) & ~size_t{15} : 0;
}

// A vector's allocation.
template <class T>
size_t vector_heap_bytes(const std::vector<T>& v) {
  return heap_bytes(v.capacity() * sizeof(T));
}
// Gives a vector's allocation back.
template <class T>
void release(std::vector<T>& v) {
  std::vector<T>().swap(v);
}
// A libstdc++ deque allocates its map and one 512-byte block even when empty.
inline constexpr size_t kDequeFixed = heap_bytes(8 * sizeof(void*)) + heap_bytes(512);

// A header as seen on the wire, the name lower-cased.
struct Header {
  std::string name;
  std::string value;
};

}  // namespace tapwire::proto
