// Content-Encoding (RFC 9110 8.4): undoing the codings of an HTTP body
// (HTTP/1, HTTP/2), streaming and capped, for bodies taken off the wire.
//
// Everything here runs on hostile bytes: a few KiB of gzip can inflate to
// gigabytes, so the decoders stream into a bounded output and stop at the
// cap; a corrupt stream yields what decoded before the damage and an error
// string, never an exception.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace tapwire::proto {

struct DecodeLimits {
  size_t max_output = 1024 * 1024;  // decoded bytes kept; beyond: decoding stops, `truncated`
  // Bytes passed between the decoders of a chain ("gzip, br"), all stages
  // together: an inner stage whose output the outer one swallows without
  // producing anything would otherwise run unbounded. Beyond: stop, `truncated`.
  size_t max_intermediate = 64 * 1024 * 1024;
  size_t max_codings = 4;  // codings in one chain (identity not counted); more: not decoded, error
};

struct DecodedBody {
  // The body with its codings undone: the first max_output bytes of it.
  // When a coding is unknown (or the chain too long), the input as is (its
  // first max_output bytes) and `decoded` false.
  std::string data;
  uint64_t encoded_size = 0;  // bytes given: the body as sent (after de-chunking)
  // The codings as listed in the header, lower-cased, ", "-separated, in the
  // order they were applied ("gzip, br": gzip first, then br; br is undone first).
  std::string encoding;
  bool decoded = false;  // every coding known: `data` is the decoded body (all or its beginning)
  bool truncated = false;  // decoded output reached a cap: `data` is its beginning
  bool incomplete = false;  // the input ended inside a compressed stream (a body cut short)
  std::string error;  // corrupt input or unsupported coding; `data` keeps what decoded before it
};

// Undoes the codings named by a Content-Encoding value (several fields are
// joined with ", "): gzip / x-gzip (also a zlib stream; several gzip members),
// deflate (zlib-wrapped or raw, as browsers accept both), br, zstd, identity.
// An empty value or "identity": the bytes as they are. Bytes after the end of
// a compressed stream are ignored (browsers do the same).
DecodedBody decode_content(std::string_view content_encoding, std::span<const uint8_t> bytes,
                           const DecodeLimits& limits = {});

}  // namespace tapwire::proto
