// HPACK (RFC 7541) decoding for a passive observer: libnghttp2's inflater,
// one per direction of a connection, behind a pre-pass that copes with
// what an observer that joined late cannot know.
//
// An inflater that did not see a connection from its start lacks the
// dynamic-table entries inserted before; nghttp2 fails a block that refers
// to one, and then fails every later block. So each block is first walked
// (representation boundaries only, strings are not decoded): a reference to
// a dynamic entry the inflater does not hold is dropped (an indexed field)
// or given a placeholder name (a literal whose name is such a reference; its
// value is kept, and its table insertion too, so that later indices stay
// right). Such blocks are counted `unknown`. When the walk changes nothing
// (the usual case) nghttp2 decodes the block as it came.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "parse.hpp"

struct nghttp2_hd_inflater;

namespace tapwire::proto {

// The name a field gets when its name was a dynamic-table entry never seen
// (not a token: it cannot collide with a real field name).
inline constexpr std::string_view kHpackUnknownName = "(unknown)";

struct HpackResult {
  std::vector<Header> fields;  // decoded fields kept, in order, names lower-cased
  uint64_t list_bytes = 0;  // decoded size of every field, kept or not: name + value + 32 (RFC 9113 6.5.2)
  uint32_t dropped = 0;  // fields decoded but not kept (beyond the list cap)
  uint32_t unknown = 0;  // fields lost or renamed: references to dynamic entries never seen
  bool error = false;  // the block failed to decode from some point on (fields before it are kept)
};

class HpackDecoder {
 public:
  // `max_table_size`: the largest dynamic table kept, whatever SETTINGS say
  // (a peer may allow 4 GiB); an encoder using more loses entries here: their
  // later references come out `unknown`, not as an error.
  explicit HpackDecoder(size_t max_table_size);
  ~HpackDecoder();
  HpackDecoder(const HpackDecoder&) = delete;
  HpackDecoder& operator=(const HpackDecoder&) = delete;

  // Decodes one complete header block into `out` (reset first). Fields are kept while the kept ones
  // total at most `max_list_bytes` (name + value + 32 each); the rest are
  // still decoded, since the dynamic table must stay in step, but dropped:
  // an HPACK bomb (a big entry referenced by many one-byte fields) costs
  // time per field, never memory. After an error the table is unknown: the
  // decoder starts over (reset()).
  void decode(std::span<const uint8_t> block, size_t max_list_bytes, HpackResult& out);
  // SETTINGS_HEADER_TABLE_SIZE sent by the decoding side was acknowledged:
  // the smallest and the last value of that SETTINGS frame (the encoder
  // must signal the smallest first, RFC 7541 4.2).
  void settings_acked(uint32_t min_size, uint32_t last_size);
  // The table is no longer known (a block was lost, or the connection was
  // joined late): start over with an empty table, as large as allowed, and
  // take later references to older entries as unknown.
  void reset();
  // True while the table has been followed from the connection's start.
  bool synced() const { return synced_; }
  size_t memory_bytes() const;

 private:
  void fresh();

  nghttp2_hd_inflater* inf_ = nullptr;
  size_t max_table_;
  // The largest table the encoder may use as far as we follow it: the
  // SETTINGS_HEADER_TABLE_SIZE in force (or, joined late, max_table_),
  // never above max_table_. Size updates above it are clamped to it.
  size_t limit_ = 4096;
  bool synced_ = true;
};

}  // namespace tapwire::proto
