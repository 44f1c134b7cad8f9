// Protocol Buffers wire format (https://protobuf.dev/programming-guides/encoding/)
// decoded without a schema, for display: field numbers and wire types, with
// a guess at what each length-delimited field holds. Hostile input: depth
// and field-count caps, no recursion beyond max_depth, time O(size x depth).
//
// Output (nlohmann::json): an array of fields in wire order, each with its
// "wire_type" ("varint", "i64", "len", "i32") and what it reads as:
//   {"field": N, "type": "varint", "value": u64}            (+ "int64": negative reading, when >= 2^63)
//   {"field": N, "type": "i64", "value": u64, "double": d}
//   {"field": N, "type": "i32", "value": u32, "float": f}
//   {"field": N, "type": "message", "value": [fields...]}   a len field that parses fully as a message
//   {"field": N, "type": "string", "value": "..."}          well-formed UTF-8 (no overlong forms,
//                                                            surrogates, or code points past U+10FFFF)
//   {"field": N, "type": "bytes", "base64"|"hex": "..."}     anything else (+ "packed_varint": [..]
//                                                            when it reads as packed varints)
// with "truncated": true on a string or bytes field cut at max_value_bytes.
// Groups (wire types 3, 4) are refused: deprecated, and a len field that
// parses as groups is far more often text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace tapwire::proto {

struct ProtobufLimits {
  size_t max_depth = 16;  // nesting of messages (deeper len fields are shown as strings or bytes)
  size_t max_fields = 4096;  // fields decoded, nested ones included; beyond: the output stops, flagged
  size_t max_value_bytes = 4096;  // bytes of a string or bytes value shown
  bool hex_bytes = false;  // bytes as hex rather than base64
};

struct ProtobufResult {
  bool ok = false;  // the input is a well-formed message (as far as decoded, when truncated)
  bool truncated = false;  // max_fields was reached: the fields shown are a prefix
  nlohmann::json fields = nlohmann::json::array();
};

ProtobufResult decode_protobuf(std::span<const uint8_t> message, const ProtobufLimits& limits = {});

}  // namespace tapwire::proto
