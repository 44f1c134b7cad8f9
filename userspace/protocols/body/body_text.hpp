// Is a body text, and how it goes into a JSON record: as a string when it is
// text (UTF-8), else base64. Shared by HTTP/1, HTTP/2 and WebSocket records.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace tapwire::proto {

// Length of the longest prefix of `bytes` that is well-formed UTF-8
// (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF).
size_t utf8_valid_prefix(std::span<const uint8_t> bytes);

// Well-formed UTF-8. With `allow_cut_tail`, the last 1 to 3 bytes may be the
// beginning of a sequence the end cut off: a body kept up to a cap is often
// cut inside a character.
bool is_utf8(std::span<const uint8_t> bytes, bool allow_cut_tail = false);

// Does a body of this Content-Type hold text? Text: text/*, JSON, XML (and
// their +json / +xml suffixes), JavaScript, x-www-form-urlencoded, YAML,
// GraphQL, NDJSON and the like. Binary: image/audio/video/font, octet-stream,
// protobuf, gRPC, archives, PDF and the like. Anything else (no type,
// multipart, an unknown type): the bytes decide: text when they are UTF-8
// (possibly cut at the end) without NUL or other C0 controls but TAB, LF,
// CR, FF and ESC (binary formats such as protobuf are full of low bytes that
// are valid UTF-8). An empty body is text.
bool is_text(std::string_view content_type, std::span<const uint8_t> bytes);

// RFC 4648 base64, with padding.
std::string base64_encode(std::span<const uint8_t> bytes);

// A body as one JSON string field. Text (`is_text`, and the bytes UTF-8,
// possibly cut at the end: the cut bytes are dropped) is the text itself;
// anything else is base64 with base64 true, so that no byte is lost (a
// text/plain body in Latin-1 is not UTF-8, and a JSON string must be).
struct BodyText {
  std::string value;
  bool base64 = false;
};
BodyText body_text(std::span<const uint8_t> bytes, bool is_text);

}  // namespace tapwire::proto
