// Text or binary, and base64: see body_text.hpp.
#include "body_text.hpp"

#include <array>

namespace tapwire::proto {

namespace {

// Bytes a UTF-8 sequence starting with this byte has (0: not a lead byte).
// C0, C1 (overlong 2-byte forms) and F5..FF never begin a sequence.
constexpr std::array<uint8_t, 256> make_seq_len() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; c++) {
    uint8_t v = 0;
    if (c < 0x80) v = 1;
    else if (c >= 0xc2 && c <= 0xdf) v = 2;
    else if (c >= 0xe0 && c <= 0xef) v = 3;
    else if (c >= 0xf0 && c <= 0xf4) v = 4;
    t[static_cast<size_t>(c)] = v;
  }
  return t;
}
constexpr std::array<uint8_t, 256> kSeqLen = make_seq_len();

// The range of the second byte after a lead byte (RFC 3629 4): the lead
// bytes E0, ED, F0, F4 narrow it, which rules out overlong forms, the
// surrogates (U+D800..DFFF) and code points above U+10FFFF.
inline bool second_ok(uint8_t lead, uint8_t b) {
  switch (lead) {
    case 0xe0: return b >= 0xa0 && b <= 0xbf;
    case 0xed: return b >= 0x80 && b <= 0x9f;
    case 0xf0: return b >= 0x90 && b <= 0xbf;
    case 0xf4: return b >= 0x80 && b <= 0x8f;
    default: return b >= 0x80 && b <= 0xbf;
  }
}

// Bytes [p, n) begin a sequence that more bytes could complete.
bool is_cut_sequence(const uint8_t* p, size_t n) {
  if (n == 0) return true;
  const uint8_t len = kSeqLen[p[0]];
  if (len < 2 || n >= len) return false;
  for (size_t i = 1; i < n; i++) {
    const bool ok = i == 1 ? second_ok(p[0], p[1]) : (p[i] & 0xc0) == 0x80;
    if (!ok) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) b++;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t')) e--;
  return s.substr(b, e - b);
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

enum class Kind : uint8_t { Text, Binary, Unknown };

// application/ subtypes, exact.
constexpr std::string_view kTextApp[] = {
    "xml",       "javascript", "ecmascript", "x-javascript", "x-www-form-urlencoded", "graphql", "yaml",
    "x-yaml",    "toml",       "sql",        "x-sh",         "grpc-web-text",         "jwt",     "x-httpd-php",
    "csv",       "x-csv",      "rtf",        "x-tex",        "xhtml",
};
constexpr std::string_view kBinaryApp[] = {
    "octet-stream", "grpc",       "grpc+proto", "grpc-web",          "grpc-web+proto", "protobuf",
    "x-protobuf",   "x-google-protobuf", "vnd.google.protobuf", "zip", "gzip",   "x-gzip",
    "zstd",         "x-tar",      "x-bzip2",    "x-xz",              "x-7z-compressed", "x-rar-compressed",
    "pdf",          "wasm",       "msgpack",    "x-msgpack",         "vnd.msgpack",    "cbor",
    "bson",         "x-bson",     "avro",       "vnd.apache.avro.binary", "vnd.apache.thrift.binary",
    "x-thrift",     "java-archive", "x-java-serialized-object", "x-sqlite3", "vnd.android.package-archive",
    "msword",       "x-shockwave-flash", "x-iso9660-image", "x-msdownload",   "x-executable",
    "dns-message",  "ogg",        "vnd.rar",
};

Kind kind_of(std::string_view content_type) {
  std::string mt(trim(content_type.substr(0, content_type.find(';'))));
  for (char& c : mt)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  const size_t slash = mt.find('/');
  if (slash == std::string::npos) return Kind::Unknown;
  const std::string_view type = std::string_view(mt).substr(0, slash);
  const std::string_view sub = std::string_view(mt).substr(slash + 1);
  if (type == "text") return Kind::Text;
  // Structured syntax suffixes (RFC 6839): image/svg+xml, application/problem+json, …
  if (ends_with(sub, "+json") || ends_with(sub, "+xml") || ends_with(sub, "+yaml")) return Kind::Text;
  if (type == "image" || type == "audio" || type == "video" || type == "font" || type == "model")
    return Kind::Binary;
  if (type != "application") return Kind::Unknown;
  // JSON in all its spellings: json, x-ndjson, jsonl, json-seq, x-amz-json-1.1, …
  if (sub.find("json") != std::string_view::npos) return Kind::Text;
  if (sub.substr(0, 4) == "xml-") return Kind::Text;  // xml-dtd, xml-external-parsed-entity
  for (std::string_view t : kTextApp)
    if (sub == t) return Kind::Text;
  for (std::string_view b : kBinaryApp)
    if (sub == b) return Kind::Binary;
  // Office documents are zip archives.
  if (sub.substr(0, 18) == "vnd.openxmlformats" || sub.substr(0, 7) == "vnd.ms-" ||
      sub.substr(0, 22) == "vnd.oasis.opendocument")
    return Kind::Binary;
  return Kind::Unknown;
}

// C0 controls text has: TAB, LF, FF, CR, ESC (terminal colours in logs).
constexpr bool text_control(uint8_t c) { return c == '\t' || c == '\n' || c == '\f' || c == '\r' || c == 0x1b; }

}  // namespace

size_t utf8_valid_prefix(std::span<const uint8_t> bytes) {
  const uint8_t* p = bytes.data();
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    // ASCII runs, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w = 0;
      for (size_t k = 0; k < 8; k++) w |= uint64_t{p[i + k]} << (8 * k);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i == n) break;
    const uint8_t c = p[i];
    const uint8_t len = kSeqLen[c];
    if (len == 1) {
      i++;
      continue;
    }
    if (len == 0 || n - i < len || !second_ok(c, p[i + 1])) return i;
    for (size_t k = 2; k < len; k++)
      if ((p[i + k] & 0xc0) != 0x80) return i;
    i += len;
  }
  return i;
}

bool is_utf8(std::span<const uint8_t> bytes, bool allow_cut_tail) {
  const size_t v = utf8_valid_prefix(bytes);
  if (v == bytes.size()) return true;
  return allow_cut_tail && is_cut_sequence(bytes.data() + v, bytes.size() - v);
}

bool is_text(std::string_view content_type, std::span<const uint8_t> bytes) {
  switch (kind_of(content_type)) {
    case Kind::Text: return true;
    case Kind::Binary: return false;
    case Kind::Unknown: break;
  }
  for (uint8_t c : bytes)
    if ((c < 0x20 && !text_control(c))) return false;
  return is_utf8(bytes, true);
}

std::string base64_encode(std::span<const uint8_t> bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const uint8_t* p = bytes.data();
  const size_t n = bytes.size();
  std::string out;
  out.resize((n + 2) / 3 * 4);
  char* o = out.data();
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    const uint32_t v = uint32_t{p[i]} << 16 | uint32_t{p[i + 1]} << 8 | p[i + 2];
    *o++ = kAlphabet[v >> 18];
    *o++ = kAlphabet[(v >> 12) & 63];
    *o++ = kAlphabet[(v >> 6) & 63];
    *o++ = kAlphabet[v & 63];
  }
  if (n - i == 1) {
    const uint32_t v = uint32_t{p[i]} << 16;
    *o++ = kAlphabet[v >> 18];
    *o++ = kAlphabet[(v >> 12) & 63];
    *o++ = '=';
    *o++ = '=';
  } else if (n - i == 2) {
    const uint32_t v = uint32_t{p[i]} << 16 | uint32_t{p[i + 1]} << 8;
    *o++ = kAlphabet[v >> 18];
    *o++ = kAlphabet[(v >> 12) & 63];
    *o++ = kAlphabet[(v >> 6) & 63];
    *o++ = '=';
  }
  return out;
}

BodyText body_text(std::span<const uint8_t> bytes, bool text) {
  BodyText r;
  if (text) {
    const size_t v = utf8_valid_prefix(bytes);
    if (v == bytes.size() || is_cut_sequence(bytes.data() + v, bytes.size() - v)) {
      r.value.assign(reinterpret_cast<const char*>(bytes.data()), v);
      return r;
    }
  }
  r.value = base64_encode(bytes);
  r.base64 = true;
  return r;
}

}  // namespace tapwire::proto
