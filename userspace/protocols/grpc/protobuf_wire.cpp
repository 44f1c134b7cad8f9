// Schema-less protobuf decoding. See protobuf_wire.hpp.
#include "grpc/protobuf_wire.hpp"

#include <cstring>
#include <optional>

namespace tapwire::proto {

namespace {

using nlohmann::json;

constexpr uint64_t kMaxFieldNumber = (uint64_t{1} << 29) - 1;

bool is_valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t c = p[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; k++) {
      if ((p[i + k] & 0xc0) != 0x80) return false;
      cp = cp << 6 | (p[i + k] & 0x3f);
    }
    static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

// RFC 4648, with padding.
std::string base64_encode(std::span<const uint8_t> b) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((b.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= b.size(); i += 3) {
    const uint32_t v = uint32_t{b[i]} << 16 | uint32_t{b[i + 1]} << 8 | b[i + 2];
    for (int k = 18; k >= 0; k -= 6) out.push_back(kAlphabet[(v >> k) & 63]);
  }
  if (const size_t rest = b.size() - i) {
    const uint32_t v = uint32_t{b[i]} << 16 | (rest == 2 ? uint32_t{b[i + 1]} << 8 : 0);
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(rest == 2 ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

bool read_varint(std::span<const uint8_t> b, size_t& i, uint64_t& v) {
  v = 0;
  for (unsigned k = 0; k < 10; k++) {
    if (i >= b.size()) return false;
    const uint8_t c = b[i++];
    if (k == 9 && c > 1) return false;  // beyond 64 bits
    v |= uint64_t{c & 0x7fu} << (7 * k);
    if (!(c & 0x80)) return true;
  }
  return false;
}

// Text a person would call a string: UTF-8 without control characters other than tab and line breaks.
bool is_text(std::string_view s) {
  for (unsigned char c : s)
    if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f) return false;
  return is_valid_utf8(s);
}

std::string hex_encode(std::span<const uint8_t> b) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(b.size() * 2, '\0');
  for (size_t i = 0; i < b.size(); i++) {
    s[2 * i] = kHex[b[i] >> 4];
    s[2 * i + 1] = kHex[b[i] & 0xf];
  }
  return s;
}

class Decoder {
 public:
  explicit Decoder(const ProtobufLimits& lim) : lim_(lim) {}

  // The fields of `b`, or nullopt when it is not a well-formed message. Each
  // nesting level looks at disjoint byte ranges, so every byte is visited at
  // most once per level: O(size x max_depth).
  std::optional<json> message(std::span<const uint8_t> b, size_t depth) {
    json out = json::array();
    size_t i = 0;
    while (i < b.size()) {
      if (fields_ >= lim_.max_fields) {
        truncated_ = true;
        return out;
      }
      uint64_t tag = 0;
      if (!read_varint(b, i, tag)) return std::nullopt;
      const uint64_t field = tag >> 3;
      const unsigned wire = tag & 7;
      if (field == 0 || field > kMaxFieldNumber) return std::nullopt;
      static const char* kWireTypes[] = {"varint", "i64", "len", "", "", "i32"};
      json f = {{"field", field}};
      if (wire < 6 && *kWireTypes[wire]) f["wire_type"] = kWireTypes[wire];
      switch (wire) {
        case 0: {
          uint64_t v = 0;
          if (!read_varint(b, i, v)) return std::nullopt;
          f["type"] = "varint";
          f["value"] = v;
          if (v >> 63) f["int64"] = static_cast<int64_t>(v);
          break;
        }
        case 1: {
          if (b.size() - i < 8) return std::nullopt;
          uint64_t v = 0;
          for (int k = 7; k >= 0; k--) v = v << 8 | b[i + static_cast<size_t>(k)];
          double d;
          std::memcpy(&d, &v, sizeof d);
          i += 8;
          f["type"] = "i64";
          f["value"] = v;
          f["double"] = d;  // NaN and infinities come out as null
          break;
        }
        case 5: {
          if (b.size() - i < 4) return std::nullopt;
          uint32_t v = 0;
          for (int k = 3; k >= 0; k--) v = v << 8 | b[i + static_cast<size_t>(k)];
          float fl;
          std::memcpy(&fl, &v, sizeof fl);
          i += 4;
          f["type"] = "i32";
          f["value"] = v;
          f["float"] = fl;
          break;
        }
        case 2: {
          uint64_t len = 0;
          if (!read_varint(b, i, len) || len > b.size() - i) return std::nullopt;
          len_field(b.subspan(i, static_cast<size_t>(len)), depth, f);
          i += static_cast<size_t>(len);
          break;
        }
        default:  // 3, 4: groups (refused); 6, 7: not wire types
          return std::nullopt;
      }
      fields_++;
      out.push_back(std::move(f));
    }
    return out;
  }

  bool truncated() const { return truncated_; }

 private:
  // What a length-delimited field holds: text first (a printable string
  // also parses as a message surprisingly often: "(a" is field 5 = 97),
  // then a message, then any UTF-8, then bytes.
  void len_field(std::span<const uint8_t> v, size_t depth, json& f) {
    const std::string_view s(reinterpret_cast<const char*>(v.data()), v.size());
    if (v.empty() || is_text(s)) return string_value(s, f);
    if (depth + 1 < lim_.max_depth) {
      const size_t before = fields_;
      const bool was_truncated = truncated_;
      if (auto m = message(v, depth + 1)) {
        f["type"] = "message";
        f["value"] = std::move(*m);
        return;
      }
      fields_ = before;  // a failed attempt costs no budget
      truncated_ = was_truncated;
    }
    if (is_valid_utf8(s)) return string_value(s, f);
    f["type"] = "bytes";
    const auto shown = v.first(std::min(v.size(), lim_.max_value_bytes));
    f[lim_.hex_bytes ? "hex" : "base64"] = lim_.hex_bytes ? hex_encode(shown) : base64_encode(shown);
    if (shown.size() < v.size()) f["truncated"] = true;
    // A packed repeated scalar (varints) is bytes to a schema-less reader.
    json packed = json::array();
    size_t i = 0;
    while (i < v.size() && packed.size() < lim_.max_fields) {
      uint64_t x = 0;
      if (!read_varint(v, i, x)) return;
      packed.push_back(x);
    }
    if (i == v.size()) f["packed_varint"] = std::move(packed);
  }

  void string_value(std::string_view s, json& f) {
    f["type"] = "string";
    if (s.size() <= lim_.max_value_bytes) {
      f["value"] = std::string(s);
      return;
    }
    // Cut on a character boundary: the value must stay valid UTF-8.
    size_t n = lim_.max_value_bytes;
    while (n > 0 && (static_cast<uint8_t>(s[n]) & 0xc0) == 0x80) n--;
    f["value"] = std::string(s.substr(0, n));
    f["truncated"] = true;
  }

  const ProtobufLimits& lim_;
  size_t fields_ = 0;
  bool truncated_ = false;
};

}  // namespace

ProtobufResult decode_protobuf(std::span<const uint8_t> message, const ProtobufLimits& limits) {
  ProtobufResult r;
  Decoder dec(limits);
  if (auto m = dec.message(message, 0)) {
    r.ok = true;
    r.fields = std::move(*m);
  }
  r.truncated = dec.truncated();
  return r;
}

}  // namespace tapwire::proto
