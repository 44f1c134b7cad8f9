// HTTP/1.x message framing (RFC 9112) for one direction of a connection.
//
// The start line and header block are scanned in place, in the caller's
// buffer: each line is looked at once, when its LF arrives, and the scan
// position is remembered, so a header block that arrives a byte at a time
// costs O(n), not O(n^2). The block is consumed only when its blank line is
// there. Body bytes (Content-Length, chunked, close-delimited) are consumed
// as they come and only the first max_body_kept of them are copied.
#include "http1.hpp"

#include <algorithm>
#include <array>
#include <cstring>

#include "body/body_text.hpp"
#include "body/content_coding.hpp"

namespace tapwire::proto {

namespace {

constexpr uint64_t kMaxChunkSize = (uint64_t{1} << 63) - 1;  // 2^63 and above: Invalid
constexpr unsigned kMaxChunkDigits = 16;
constexpr size_t kMaxChunkExt = 4096;  // chunk extensions on one chunk-size line

// Byte classes, one table lookup per byte.
enum : uint8_t {
  kTchar = 1,  // token (RFC 9110 5.6.2)
  kValue = 2,  // field-value / reason-phrase: VCHAR, SP, HTAB, obs-text
  kTarget = 4,  // request-target: VCHAR, obs-text (lenient: real clients send raw UTF-8)
};

constexpr std::array<uint8_t, 256> make_classes() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; c++) {
    uint8_t v = 0;
    bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (alnum) v |= kTchar;
    for (char s : std::string_view("!#$%&'*+-.^_`|~"))
      if (c == static_cast<unsigned char>(s)) v |= kTchar;
    if ((c > 0x20 && c < 0x7f) || c >= 0x80) v |= kValue | kTarget;
    if (c == ' ' || c == '\t') v |= kValue;
    t[static_cast<size_t>(c)] = v;
  }
  return t;
}
constexpr std::array<uint8_t, 256> kClass = make_classes();

constexpr std::array<char, 256> make_lower() {
  std::array<char, 256> t{};
  for (int c = 0; c < 256; c++) t[static_cast<size_t>(c)] = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
  return t;
}
constexpr std::array<char, 256> kLower = make_lower();

inline uint8_t cls(char c) { return kClass[static_cast<uint8_t>(c)]; }

bool all_of(std::string_view s, uint8_t mask) {
  for (char c : s)
    if (!(cls(c) & mask)) return false;
  return true;
}

// Eight bytes at a time (SWAR) for the long runs: field values, targets,
// reason phrases. A word with a byte that might be out of its class is
// checked byte by byte with the table, so the answer is all_of's exactly.
constexpr uint64_t kOnes = 0x0101010101010101ull, kHighs = 0x8080808080808080ull;
// Some byte of x is below n (n <= 128).
constexpr uint64_t has_below(uint64_t x, uint8_t n) { return (x - kOnes * n) & ~x & kHighs; }
// Some byte of x is 0x7f (DEL).
constexpr uint64_t has_del(uint64_t x) { return has_below(x ^ (kOnes * 0x7f), 1); }
inline uint64_t load8(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// A new string holding s, with the capacity an assign to an empty string
// gives (libstdc++ grows a string to at least twice its capacity: 30 from the
// 15 in place), so that the heap counted for a message is what it always was;
// constructing it is much cheaper than an assign.
inline std::string fresh_string(std::string_view s) {
  constexpr size_t kInPlace = 15, kFirstGrowth = 2 * kInPlace;
  if (s.size() <= kInPlace || s.size() >= kFirstGrowth) return std::string(s.data(), s.size());
  std::string r;
  r.reserve(kFirstGrowth);
  r.append(s.data(), s.size());
  return r;
}

// The eight tchars of x lower-cased (bytes below 0x80: no carry crosses a byte).
inline uint64_t lower8(uint64_t x) {
  const uint64_t upper = (x + kOnes * (0x80 - 'A')) & ~(x + kOnes * (0x80 - 'Z' - 1)) & kHighs;
  return x | (upper >> 2);  // 0x80 >> 2 == 0x20
}

// Writes the n tchars of src to dst lower-cased. Words are read from src
// only: re-reading a word just stored would stall on the store.
void copy_lower(char* dst, const char* src, size_t n) {
  if (n < 8) {
    for (size_t i = 0; i < n; i++) dst[i] = kLower[static_cast<uint8_t>(src[i])];
    return;
  }
  const uint64_t last = lower8(load8(src + n - 8));
  for (size_t i = 0; i + 8 <= n; i += 8) {
    const uint64_t y = lower8(load8(src + i));
    std::memcpy(dst + i, &y, 8);
  }
  std::memcpy(dst + n - 8, &last, 8);  // the last word, overlapping the one before: same bytes there
}

// all_of(s, kValue): VCHAR, SP, HTAB, obs-text. A word with no byte below SP
// and no DEL is all valid; one with a control byte may still be all valid (HTAB).
bool all_value(std::string_view s) {
  const char* p = s.data();
  size_t n = s.size();
  for (; n >= 8; p += 8, n -= 8) {
    const uint64_t x = load8(p);
    if ((has_below(x, 0x20) | has_del(x)) && !all_of(std::string_view(p, 8), kValue)) return false;
  }
  return all_of(std::string_view(p, n), kValue);
}

// all_of(s, kTarget): VCHAR, obs-text.
bool all_target(std::string_view s) {
  const char* p = s.data();
  size_t n = s.size();
  for (; n >= 8; p += 8, n -= 8) {
    const uint64_t x = load8(p);
    if (has_below(x, 0x21) | has_del(x)) return false;
  }
  return all_of(std::string_view(p, n), kTarget);
}

bool iequals(std::string_view a, std::string_view lower_b) {
  if (a.size() != lower_b.size()) return false;
  for (size_t i = 0; i < a.size(); i++)
    if (kLower[static_cast<uint8_t>(a[i])] != lower_b[i]) return false;
  return true;
}

inline std::string_view trim_ows(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) b++;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t')) e--;
  return std::string_view(s.data() + b, e - b);
}

// Calls f(token) for each element of a comma-separated list, OWS trimmed, empty elements skipped.
template <class F>
void for_each_element(std::string_view v, F&& f) {
  while (!v.empty()) {
    size_t comma = v.find(',');
    std::string_view e = trim_ows(v.substr(0, comma));
    if (!e.empty()) f(e);
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
}

// Known request methods (RFC 9110, WebDAV and friends: the set tshark knows),
// most frequent first. Resynchronisation only trusts these.
constexpr std::string_view kMethods[] = {
    "GET",        "POST",         "PUT",           "HEAD",        "DELETE",        "OPTIONS",     "PATCH",
    "CONNECT",    "TRACE",        "PROPFIND",      "PROPPATCH",   "MKCOL",         "COPY",        "MOVE",
    "LOCK",       "UNLOCK",       "SEARCH",        "REPORT",      "MKACTIVITY",    "CHECKOUT",    "CHECKIN",
    "UNCHECKOUT", "MERGE",        "M-SEARCH",      "NOTIFY",      "SUBSCRIBE",     "UNSUBSCRIBE", "PURGE",
    "LINK",       "UNLINK",       "ACL",           "MKCALENDAR",  "BIND",          "REBIND",      "UNBIND",
    "UPDATE",     "LABEL",        "MKWORKSPACE",   "ORDERPATCH",  "VERSION-CONTROL", "BASELINE-CONTROL",
    "MKREDIRECTREF", "UPDATEREDIRECTREF", "QUERY",
};

constexpr std::array<bool, 256> make_method_first() {
  std::array<bool, 256> t{};
  for (std::string_view m : kMethods) t[static_cast<uint8_t>(m[0])] = true;
  return t;
}
constexpr std::array<bool, 256> kMethodFirst = make_method_first();

bool is_known_method(std::string_view m) {
  if (m.empty() || !kMethodFirst[static_cast<uint8_t>(m[0])]) return false;
  for (std::string_view k : kMethods)
    if (k == m) return true;
  return false;
}

enum class Match : uint8_t { No, Maybe, Yes };

// Do these bytes begin "METHOD SP x" with a known method and x a possible
// first byte of a request-target (Yes)? Could they, given more bytes (Maybe)?
Match match_request_start(const uint8_t* p, size_t n, size_t* method_len = nullptr) {
  if (n == 0) return Match::Maybe;
  if (!kMethodFirst[p[0]]) return Match::No;
  bool maybe = false;
  for (std::string_view m : kMethods) {
    const size_t k = m.size();
    if (n > k) {
      if (p[k] != ' ' || std::memcmp(p, m.data(), k) != 0) continue;
      if (n == k + 1) return Match::Maybe;
      if (!(kClass[p[k + 1]] & kTarget)) return Match::No;
      if (method_len) *method_len = k;
      return Match::Yes;
    }
    if (std::memcmp(p, m.data(), n) == 0) maybe = true;
  }
  return maybe ? Match::Maybe : Match::No;
}

// "HTTP/1.<digit> SP" begins a status line.
Match match_response_start(const uint8_t* p, size_t n) {
  static constexpr char kPrefix[] = "HTTP/1.";
  const size_t m = std::min<size_t>(n, 7);
  if (std::memcmp(p, kPrefix, m) != 0) return Match::No;
  if (n > 7 && !(p[7] >= '0' && p[7] <= '9')) return Match::No;
  if (n > 8 && p[8] != ' ') return Match::No;
  return n > 8 ? Match::Yes : Match::Maybe;
}

// "HTTP/1.<digit>": the minor version, or -1.
int parse_version(std::string_view v) {
  if (v.size() != 8 || v.substr(0, 7) != "HTTP/1." || v[7] < '0' || v[7] > '9') return -1;
  return v[7] - '0';
}

// Content-Length: 1*DIGIT, or a list of identical values ("5, 5", RFC 9110 8.6).
bool parse_content_length(std::string_view v, uint64_t& out) {
  bool any = false, ok = true;
  uint64_t first = 0;
  for_each_element(v, [&](std::string_view e) {
    uint64_t n = 0;
    for (char c : e) {
      if (c < '0' || c > '9') {
        ok = false;
        return;
      }
      const uint64_t d = static_cast<uint64_t>(c - '0');
      if (n > (UINT64_MAX - d) / 10) {
        ok = false;
        return;
      }
      n = n * 10 + d;
    }
    if (any && n != first) ok = false;
    first = n;
    any = true;
  });
  if (!ok || !any) return false;
  out = first;
  return true;
}

// The protocol name of an Upgrade element ("websocket", "h2c", "TLS/1.2" → "TLS").
bool upgrade_names_websocket(std::string_view v) {
  bool ws = false;
  for_each_element(v, [&](std::string_view e) {
    if (iequals(e.substr(0, e.find('/')), "websocket")) ws = true;
  });
  return ws;
}

int hex_value(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

size_t message_heap_bytes(const HttpMessage& m) {
  size_t n = string_heap_bytes(m.method) + string_heap_bytes(m.target) + string_heap_bytes(m.reason) +
             string_heap_bytes(m.body) + string_heap_bytes(m.content_encoding) +
             heap_bytes(m.headers.capacity() * sizeof(Header)) +
             heap_bytes(m.trailers.capacity() * sizeof(Header));
  for (const auto* list : {&m.headers, &m.trailers})
    for (const Header& h : *list) n += string_heap_bytes(h.name) + string_heap_bytes(h.value);
  return n;
}

namespace {

// A Content-Encoding value names a coding other than identity.
bool names_a_coding(std::string_view v) {
  bool any = false;
  for_each_element(v, [&](std::string_view e) {
    if (!e.empty() && !iequals(e, "identity")) any = true;
  });
  return any;
}

}  // namespace

void finish_body(HttpMessage& m, size_t max_body) {
  if (!m.content_encoding.empty() || m.body_decode_error) return;  // done already
  const auto bytes = [&m] {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(m.body.data()), m.body.size());
  };
  if (m.body.empty()) return;  // nothing kept: nothing to decode or show
  // Several Content-Encoding fields are one list (RFC 9110 5.3).
  std::string ce;
  for (const Header& h : m.headers)
    if (std::string_view(h.name) == "content-encoding") ce += (ce.empty() ? "" : ", ") + h.value;
  if (names_a_coding(ce)) {
    DecodeLimits lim;
    lim.max_output = max_body;
    DecodedBody d = decode_content(ce, bytes(), lim);
    // A compressed stream that ends before the body does is corrupt; one
    // that ends where the kept bytes end is a body cut short.
    if (!d.error.empty() || !d.decoded || (d.incomplete && !m.body_truncated)) {
      m.body_decode_error = true;
      m.body_binary = true;  // the bytes as sent: base64
      return;
    }
    const size_t before = string_heap_bytes(m.body);
    d.data.shrink_to_fit();
    m.body = std::move(d.data);
    m.content_encoding = std::move(d.encoding);
    m.body_decoded_size = m.body.size();
    if (d.truncated) m.body_truncated = true;
    m.heap = m.heap + string_heap_bytes(m.body) + string_heap_bytes(m.content_encoding) - before;
    if (m.body.empty()) return;
  }
  const std::string* ct = m.header("content-type");
  m.body_binary = !(is_text(ct ? std::string_view(*ct) : std::string_view(), bytes()) && is_utf8(bytes(), true));
}

const std::string* HttpMessage::header(std::string_view lower_name) const {
  for (const Header& h : headers)
    if (h.name == lower_name) return &h.value;
  return nullptr;
}

Http1Parser::Http1Parser(Side side, HttpLimits limits) : side_(side), lim_(limits) { reset_message(); }

void Http1Parser::reset_message() {
  // A fresh message in place: cheaper than assigning a temporary (moving
  // every member twice), with the same result.
  msg_.~HttpMessage();
  new (&msg_) HttpMessage;  // (every member has its initialiser: no zeroing first)
  msg_.is_request = side_ == Side::Requests;
  scan_pos_ = line_start_ = lines_ = 0;
  last_kept_ = last_framing_ = false;
  content_length_ = 0;
  has_cl_ = bad_cl_ = has_te_ = te_chunked_ = false;
  conn_upgrade_ = has_upgrade_ = upgrade_ws_ = false;
  body_keep_ = true;
  remaining_ = chunk_size_ = 0;
  chunk_digits_ = 0;
  ext_len_ = 0;
}

void Http1Parser::enter_resync(bool at_line_start) {
  reset_message();
  st_ = State::Resync;
  resync_line_start_ = at_line_start;
}

// Scans b[scan_pos_, n) for the end of a header (or trailer) block, handling
// each complete line once. Complete: the block is b[0, scan_pos_). Bad: the
// line at line_start_ is malformed. TooBig: no end within max_header_bytes.
Http1Parser::Block Http1Parser::scan_block(const uint8_t* b, size_t n, bool trailers) {
  const size_t limit = std::min(n, lim_.max_header_bytes);
  while (scan_pos_ < limit) {
    const void* hit = std::memchr(b + scan_pos_, '\n', limit - scan_pos_);
    if (!hit) {
      scan_pos_ = limit;
      break;
    }
    const size_t lf = static_cast<size_t>(static_cast<const uint8_t*>(hit) - b);
    size_t end = lf;
    if (end > line_start_ && b[end - 1] == '\r') end--;  // CRLF, or a bare LF (RFC 9112 2.2)
    const std::string_view line(reinterpret_cast<const char*>(b + line_start_), end - line_start_);
    scan_pos_ = lf + 1;
    if (line.empty()) return Block::Complete;
    const bool ok = (!trailers && lines_ == 0) ? start_line(line) : field_line(line, trailers);
    if (!ok) return Block::Bad;
    lines_++;
    line_start_ = scan_pos_;
  }
  return scan_pos_ >= lim_.max_header_bytes ? Block::TooBig : Block::NeedMore;
}

bool Http1Parser::start_line(std::string_view line) {
  if (side_ == Side::Requests) {
    // method SP request-target SP HTTP-version
    const size_t sp1 = line.find(' ');
    const size_t sp2 = line.rfind(' ');
    if (sp1 == std::string_view::npos || sp2 == sp1) return false;
    const std::string_view method = line.substr(0, sp1);
    const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    const int minor = parse_version(line.substr(sp2 + 1));
    if (minor < 0 || !is_known_method(method) || target.empty() || !all_target(target)) return false;
    msg_.method.assign(method);
    msg_.target.assign(target);
    msg_.version_minor = minor;
    msg_.heap += string_heap_bytes(msg_.method) + string_heap_bytes(msg_.target);
    return true;
  }
  // HTTP-version SP 3DIGIT SP [reason-phrase]; the SP before an empty reason is often left out.
  if (line.size() < 12 || line[8] != ' ') return false;
  const int minor = parse_version(line.substr(0, 8));
  if (minor < 0) return false;
  int status = 0;
  for (size_t i = 9; i < 12; i++) {
    if (line[i] < '0' || line[i] > '9') return false;
    status = status * 10 + (line[i] - '0');
  }
  if (status < 100) return false;
  std::string_view reason;
  if (line.size() > 12) {
    if (line[12] != ' ') return false;
    reason = line.substr(13);
    if (!all_value(reason)) return false;
  }
  msg_.status = status;
  msg_.reason.assign(reason);
  msg_.version_minor = minor;
  msg_.heap += string_heap_bytes(msg_.reason);
  return true;
}

bool Http1Parser::field_line(std::string_view line, bool trailers) {
  std::vector<Header>& list = trailers ? msg_.trailers : msg_.headers;
  if (line[0] == ' ' || line[0] == '\t') {
    // obs-fold: tolerated (RFC 9112 5.2 lets a recipient replace it with SP),
    // except on a framing field, where it would make the length ambiguous.
    const size_t first_field = trailers ? 0 : 1;
    if (lines_ == first_field || last_framing_) return false;
    const std::string_view v = trim_ows(line);
    if (!all_value(v)) return false;
    if (last_kept_ && !v.empty()) {
      std::string& value = list.back().value;
      const size_t before = string_heap_bytes(value);
      if (!value.empty()) value.push_back(' ');
      value.append(v);
      msg_.heap += string_heap_bytes(value) - before;
    }
    return true;
  }
  // The name: tchars up to the first ':', no whitespace before it (RFC 9112
  // 5.1). The first byte that is not a tchar must be that ':'.
  size_t colon = 0;
  while (colon < line.size() && (cls(line[colon]) & kTchar)) colon++;
  if (colon == 0 || colon == line.size() || line[colon] != ':') return false;
  const std::string_view name = line.substr(0, colon);
  const std::string_view value = trim_ows(line.substr(colon + 1));
  if (!all_value(value)) return false;

  last_framing_ = false;
  if (!trailers) {
    // Framing fields count even when the field itself is not kept (max_headers).
    switch (kLower[static_cast<uint8_t>(name[0])]) {
      case 'c':
        if (iequals(name, "content-length")) {
          uint64_t v = 0;
          if (!parse_content_length(value, v) || (has_cl_ && v != content_length_)) bad_cl_ = true;
          has_cl_ = true;
          content_length_ = v;
          last_framing_ = true;
        } else if (iequals(name, "connection")) {
          for_each_element(value, [&](std::string_view e) {
            if (iequals(e, "upgrade")) conn_upgrade_ = true;
          });
        }
        break;
      case 't':
        if (iequals(name, "transfer-encoding")) {
          // The last coding decides (RFC 9112 6.3): chunked must be it.
          std::string_view last;
          for_each_element(value, [&](std::string_view e) { last = e; });
          has_te_ = true;
          te_chunked_ = iequals(last, "chunked");
          last_framing_ = true;
        }
        break;
      case 'u':
        if (iequals(name, "upgrade")) {
          has_upgrade_ = true;
          if (upgrade_names_websocket(value)) upgrade_ws_ = true;
        }
        break;
      default:
        break;
    }
  }
  if (list.size() >= lim_.max_headers) {
    msg_.headers_truncated = true;
    last_kept_ = false;
    return true;
  }
  const size_t cap0 = list.capacity();
  if (list.empty()) list.reserve(std::min<size_t>(lim_.max_headers, 16));  // one allocation for most messages
  Header& h = list.emplace_back(Header{fresh_string(name), fresh_string(value)});  // (clang: no parenthesised aggregate init)
  copy_lower(h.name.data(), name.data(), name.size());
  if (list.capacity() != cap0)
    msg_.heap += heap_bytes(list.capacity() * sizeof(Header)) - heap_bytes(cap0 * sizeof(Header));
  msg_.heap += string_heap_bytes(h.name) + string_heap_bytes(h.value);
  last_kept_ = true;
  return true;
}

void Http1Parser::keep_body(const uint8_t* p, size_t n) {
  msg_.body_size += n;
  msg_.wire_size += n;
  if (!body_keep_ || msg_.body.size() >= lim_.max_body_kept) return;
  const size_t take = std::min(n, lim_.max_body_kept - msg_.body.size());
  const size_t before = string_heap_bytes(msg_.body);
  msg_.body.append(reinterpret_cast<const char*>(p), take);
  msg_.heap += string_heap_bytes(msg_.body) - before;
}

void Http1Parser::finish(uint64_t ts, std::vector<HttpMessage>& out) {
  msg_.ts_last_ns = ts;
  if (msg_.body_size > msg_.body.size()) msg_.body_truncated = true;
  out.push_back(std::move(msg_));
  reset_message();
  st_ = State::Start;
}

// The header block is complete (scan_pos_ bytes): decide how the body is
// framed (RFC 9112 6.3) and emit the message at once if it has none.
bool Http1Parser::begin_body(uint64_t ts, std::vector<HttpMessage>& out) {
  msg_.header_bytes = msg_.wire_size = scan_pos_;
  auto start_chunked = [&] {
    msg_.chunked = true;
    st_ = State::ChunkSize;
    chunk_size_ = 0;
    chunk_digits_ = 0;
  };
  if (side_ == Side::Requests) {
    msg_.upgrade = has_upgrade_ && conn_upgrade_;
    msg_.websocket = msg_.upgrade && upgrade_ws_;
    after_upgrade_request_ = msg_.upgrade || msg_.method == "CONNECT";
    if (has_te_) {
      if (!te_chunked_) return false;  // a request body must be chunked last (RFC 9112 6.3 item 4)
      start_chunked();
    } else if (bad_cl_) {
      return false;
    } else if (has_cl_ && content_length_ > 0) {
      st_ = State::Body;
      remaining_ = content_length_;
    } else {
      finish(ts, out);
    }
    return true;
  }

  const int s = msg_.status;
  if (s < 200) {  // 1xx: no body; they do not answer the request (except 101, which ends HTTP)
    if (s == 101) {
      msg_.upgrade = true;
      msg_.websocket = upgrade_ws_;
      finish(ts, out);
      switched_ = true;
      st_ = State::Tunnel;
      pop_expect();
    } else {
      msg_.interim = true;
      finish(ts, out);
    }
    return true;
  }
  const Expect e = pop_expect();
  if (e == Expect::Connect && s < 300) {  // a tunnel from here on
    finish(ts, out);
    switched_ = true;
    st_ = State::Tunnel;
    return true;
  }
  if (e == Expect::Head || s == 204 || s == 304) {
    finish(ts, out);
  } else if (has_te_) {
    if (te_chunked_)
      start_chunked();
    else
      st_ = State::UntilClose;  // RFC 9112 6.3 item 4: read until close
  } else if (bad_cl_) {
    return false;
  } else if (has_cl_) {
    if (content_length_ == 0) {
      finish(ts, out);
    } else {
      st_ = State::Body;
      remaining_ = content_length_;
    }
  } else {
    st_ = State::UntilClose;
  }
  return true;
}

ParseResult Http1Parser::feed(std::span<const uint8_t> data, uint64_t ts, std::vector<HttpMessage>& out) {
  last_ts_ = ts;
  for (HttpMessage& m : ready_) out.push_back(std::move(m));
  ready_.clear();

  const uint8_t* const d = data.data();
  const size_t n = data.size();
  size_t pos = 0;
  size_t skipped = 0;  // consumed without being HTTP: tunnel bytes, resync after a gap
  bool error = false;
  auto fail = [&](bool at_line_start) {
    invalid_++;
    error = true;
    enter_resync(at_line_start);
  };
  // The caller must present an unconsumed block again; if it presents less, start that block over.
  if ((st_ == State::Start || st_ == State::Trailers) && scan_pos_ > n) {
    scan_pos_ = line_start_ = lines_ = 0;
    if (st_ == State::Start) reset_message();
    for (const Header& h : msg_.trailers) msg_.heap -= string_heap_bytes(h.name) + string_heap_bytes(h.value);
    msg_.trailers.clear();
  }

  for (;;) {
    switch (st_) {
      case State::Start: {
        if (scan_pos_ == 0) {
          // Empty lines before a start line are ignored (RFC 9112 2.2).
          while (pos < n) {
            if (d[pos] == '\n') {
              pos++;
            } else if (d[pos] == '\r' && pos + 1 < n && d[pos + 1] == '\n') {
              pos += 2;
            } else {
              break;
            }
          }
          if (pos == n || (d[pos] == '\r' && pos + 1 == n)) goto out;
          msg_.ts_first_ns = ts;
        }
        const uint8_t* b = d + pos;
        const size_t avail = n - pos;
        if (lines_ == 0) {
          // Until the start line is complete, check its first bytes each time
          // (a few bytes): junk is rejected without waiting for a blank line.
          const Match m =
              side_ == Side::Requests ? match_request_start(b, avail) : match_response_start(b, avail);
          if (m == Match::No) {
            if (after_upgrade_request_) {  // the server took the Upgrade/CONNECT: no more HTTP
              switched_ = true;
              st_ = State::Tunnel;
              continue;
            }
            fail(false);
            continue;
          }
        }
        const Block r = scan_block(b, avail, false);
        if (r == Block::Complete) {
          pos += scan_pos_;
          if (!begin_body(ts, out)) fail(true);
          continue;
        }
        if (r == Block::NeedMore) goto out;
        // Bad or TooBig: drop the lines before the offending one; resynchronise from it.
        pos += line_start_;
        fail(line_start_ > 0);
        continue;
      }

      case State::Body: {
        if (remaining_ == 0) {  // a gap took the rest
          finish(ts, out);
          continue;
        }
        if (pos == n) goto out;
        const size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, n - pos));
        keep_body(d + pos, take);
        pos += take;
        remaining_ -= take;
        if (remaining_ == 0) finish(ts, out);
        continue;
      }

      case State::ChunkSize: {
        const size_t start = pos;
        bool bad = false, line_done = false;
        while (pos < n) {
          const uint8_t c = d[pos];
          const int v = hex_value(c);
          if (v >= 0) {
            if (++chunk_digits_ > kMaxChunkDigits ||
                chunk_size_ > (kMaxChunkSize - static_cast<uint64_t>(v)) / 16) {
              bad = true;
              break;
            }
            chunk_size_ = chunk_size_ * 16 + static_cast<uint64_t>(v);
            pos++;
            continue;
          }
          if (chunk_digits_ == 0) {
            bad = true;
            break;
          }
          pos++;
          if (c == ';' || c == ' ' || c == '\t') {
            st_ = State::ChunkExt;
            ext_len_ = 0;
          } else if (c == '\r') {
            st_ = State::ChunkSizeLF;
          } else if (c == '\n') {
            line_done = true;
          } else {
            bad = true;
          }
          break;
        }
        msg_.wire_size += pos - start;
        if (bad) {
          msg_.body_truncated = true;
          finish(ts, out);
          fail(false);
          continue;
        }
        if (line_done) goto chunk_line_done;
        if (st_ == State::ChunkSize) goto out;  // pos == n
        continue;
      }

      case State::ChunkExt: {
        if (pos == n) goto out;
        const void* hit = std::memchr(d + pos, '\n', n - pos);
        const size_t upto = hit ? static_cast<size_t>(static_cast<const uint8_t*>(hit) - d) + 1 : n;
        ext_len_ += upto - pos;
        msg_.wire_size += upto - pos;
        pos = upto;
        if (ext_len_ > kMaxChunkExt) {
          msg_.body_truncated = true;
          finish(ts, out);
          fail(!!hit);
          continue;
        }
        if (!hit) goto out;
        goto chunk_line_done;
      }

      case State::ChunkSizeLF: {
        if (pos == n) goto out;
        if (d[pos] != '\n') {
          msg_.body_truncated = true;
          finish(ts, out);
          fail(false);
          continue;
        }
        pos++;
        msg_.wire_size++;
        goto chunk_line_done;
      }

      case State::ChunkData: {
        if (remaining_ == 0) {
          st_ = State::ChunkDataCR;
          continue;
        }
        if (pos == n) goto out;
        const size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, n - pos));
        keep_body(d + pos, take);
        pos += take;
        remaining_ -= take;
        continue;
      }

      case State::ChunkDataCR:
      case State::ChunkDataLF: {
        if (pos == n) goto out;
        const uint8_t c = d[pos];
        if (c == '\n') {  // CRLF, or a bare LF
          st_ = State::ChunkSize;
        } else if (c == '\r' && st_ == State::ChunkDataCR) {
          st_ = State::ChunkDataLF;
        } else {
          msg_.body_truncated = true;
          finish(ts, out);
          fail(false);
          continue;
        }
        pos++;
        msg_.wire_size++;
        continue;
      }

      case State::Trailers: {
        if (pos == n) goto out;
        const Block r = scan_block(d + pos, n - pos, true);
        if (r == Block::Complete) {
          msg_.wire_size += scan_pos_;
          pos += scan_pos_;
          finish(ts, out);
          continue;
        }
        if (r == Block::NeedMore) goto out;
        // The body is complete; the trailer section is not usable.
        pos += line_start_;
        msg_.headers_truncated = true;
        finish(ts, out);
        fail(true);
        continue;
      }

      case State::UntilClose: {
        keep_body(d + pos, n - pos);
        pos = n;
        goto out;
      }

      case State::Resync: {
        while (pos < n) {
          if (resync_line_start_) {
            const Match m = side_ == Side::Requests ? match_request_start(d + pos, n - pos)
                                                    : match_response_start(d + pos, n - pos);
            if (m == Match::Yes) {
              st_ = State::Start;
              break;
            }
            if (m == Match::Maybe) goto out;  // a short tail that may begin a message: keep it
            resync_line_start_ = false;
          }
          const void* hit = std::memchr(d + pos, '\n', n - pos);
          const size_t upto = hit ? static_cast<size_t>(static_cast<const uint8_t*>(hit) - d) + 1 : n;
          skipped += upto - pos;
          pos = upto;
          resync_line_start_ = hit != nullptr;
        }
        if (st_ != State::Start) goto out;
        if (error && pos > 0) goto out;  // report the skip; the message that follows is the next call's
        continue;
      }

      case State::Tunnel: {
        // The protocol switched inside these bytes: hand back what follows
        // the last HTTP message unconsumed (the caller may give it to the
        // protocol the connection switched to); from the next call on, all
        // of it is tunnel.
        if (pos > 0) goto out;
        skipped += n - pos;
        pos = n;
        goto out;
      }
    }
    continue;

  chunk_line_done:
    if (chunk_size_ == 0) {  // last-chunk: the trailer section follows
      st_ = State::Trailers;
      scan_pos_ = line_start_ = lines_ = 0;
      last_kept_ = last_framing_ = false;
    } else {
      st_ = State::ChunkData;
      remaining_ = chunk_size_;
    }
    chunk_size_ = 0;
    chunk_digits_ = 0;
  }

out:
  ParseStatus status;
  if (error)
    status = ParseStatus::Invalid;
  else if (pos == 0)
    status = ParseStatus::NeedMoreData;
  else
    status = pos > skipped ? ParseStatus::Done : ParseStatus::Ignored;
  return ParseResult{status, pos};
}

void Http1Parser::expect_response_to(std::string_view method) {
  if (side_ != Side::Responses || lim_.max_pending == 0) return;
  if (expect_.size() - expect_head_ >= lim_.max_pending) expect_head_++;  // the owner drops the oldest request too
  if (expect_head_ > 0 && expect_head_ >= expect_.size() / 2) {  // compact: amortised O(1)
    expect_.erase(expect_.begin(), expect_.begin() + static_cast<std::ptrdiff_t>(expect_head_));
    expect_head_ = 0;
  }
  expect_.push_back(method == "HEAD" ? Expect::Head : method == "CONNECT" ? Expect::Connect : Expect::Other);
}

// The method of the oldest request without a response; GET-like when unknown
// (the capture began after the request, or the request was lost).
Http1Parser::Expect Http1Parser::pop_expect() {
  if (expect_head_ >= expect_.size()) return Expect::Other;
  const Expect e = expect_[expect_head_++];
  if (expect_head_ == expect_.size()) {
    expect_.clear();
    expect_head_ = 0;
  }
  return e;
}

void Http1Parser::on_gap(uint64_t len) {
  if (len == 0) return;
  switch (st_) {
    case State::Tunnel:
      return;
    case State::Body:
    case State::ChunkData:
      msg_.gap = true;
      if (remaining_ >= len) {  // the lost bytes were body: still in step
        remaining_ -= len;
        msg_.body_size += len;
        msg_.wire_size += len;
        body_keep_ = false;  // what is kept stays a prefix of the body
        return;
      }
      break;
    case State::UntilClose:
      msg_.gap = true;
      msg_.body_size += len;
      msg_.wire_size += len;
      body_keep_ = false;
      return;
    case State::Start:  // a partial header block is lost with the gap
      enter_resync(true);
      return;
    case State::Resync:
      resync_line_start_ = true;  // what follows a gap may begin a message
      return;
    default:
      break;
  }
  // Lost inside chunk framing, trailers, or past the end of the body: the
  // message goes out with what it has; the stream is out of step.
  msg_.gap = true;
  if (st_ == State::Trailers)
    msg_.headers_truncated = true;  // the body was complete
  else
    msg_.body_truncated = true;
  msg_.ts_last_ns = last_ts_;
  ready_.push_back(std::move(msg_));
  enter_resync(true);
}

// A header block cut short (state Start, its bytes in `u`) as a message,
// flagged incomplete, when there is enough of it to say what it is.
bool Http1Parser::take_partial(std::span<const uint8_t> u, uint64_t ts, std::vector<HttpMessage>& out) {
  if (st_ != State::Start || u.empty()) return false;
  if (lines_ == 0) {
    // Not even the start line is complete: what there is of it must begin
    // like one (and no line of it has been checked yet).
    const uint8_t* b = u.data();
    const size_t n = std::min(u.size(), lim_.max_header_bytes);
    std::string_view line(reinterpret_cast<const char*>(b), n);
    if (const size_t lf = line.find('\n'); lf != std::string_view::npos) line = line.substr(0, lf);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (side_ == Side::Requests) {
      size_t mlen = 0;
      if (match_request_start(b, line.size(), &mlen) != Match::Yes) return false;
      const std::string_view rest = line.substr(mlen + 1);
      const size_t sp = rest.find(' ');
      const std::string_view target = rest.substr(0, sp);
      if (target.empty() || !all_target(target)) return false;
      msg_.method.assign(line.substr(0, mlen));
      msg_.target.assign(target);
      msg_.heap += string_heap_bytes(msg_.method) + string_heap_bytes(msg_.target);
      if (sp != std::string_view::npos && parse_version(rest.substr(sp + 1)) >= 0)
        msg_.version_minor = parse_version(rest.substr(sp + 1));
    } else {
      if (line.size() < 12 || match_response_start(b, line.size()) != Match::Yes) return false;
      int status = 0;
      for (size_t i = 9; i < 12; i++) {
        if (line[i] < '0' || line[i] > '9') return false;
        status = status * 10 + (line[i] - '0');
      }
      if (status < 100 || (line.size() > 12 && line[12] != ' ')) return false;
      const std::string_view reason = line.size() > 13 ? line.substr(13) : std::string_view();
      if (!all_value(reason)) return false;
      msg_.status = status;
      msg_.reason.assign(reason);
      msg_.heap += string_heap_bytes(msg_.reason);
      msg_.version_minor = parse_version(line.substr(0, 8));
    }
  }
  // A response that got as far as its status line answers a request: keep the
  // queue of what responses answer in step.
  if (side_ == Side::Responses && (msg_.status >= 200 || msg_.status == 101)) pop_expect();
  msg_.incomplete = true;
  msg_.header_bytes = msg_.wire_size = u.size();
  msg_.ts_last_ns = last_ts_ ? last_ts_ : ts;
  if (!msg_.ts_first_ns) msg_.ts_first_ns = msg_.ts_last_ns;
  out.push_back(std::move(msg_));
  reset_message();
  return true;
}

size_t Http1Parser::shed_body() {
  const size_t freed = string_heap_bytes(msg_.body);
  if (!freed) return 0;
  std::string().swap(msg_.body);
  msg_.heap -= freed;
  body_keep_ = false;  // what is kept stays a prefix: nothing more of this body
  msg_.memory_shed = true;
  return freed;
}

bool Http1Parser::shed_partial(std::span<const uint8_t> u, uint64_t ts, std::vector<HttpMessage>& out) {
  if (st_ == State::Tunnel || u.empty()) return false;
  const bool at_line_start = u.back() == '\n';
  bool emitted = false;
  if (st_ == State::Start) {
    emitted = take_partial(u, ts, out);
    if (emitted) out.back().memory_shed = true;
  } else if (st_ == State::Trailers) {  // the body is complete; its trailers are not kept
    msg_.headers_truncated = true;
    msg_.memory_shed = true;
    msg_.incomplete = true;
    finish(last_ts_ ? last_ts_ : ts, out);
    emitted = true;
  }
  // What follows continues the bytes dropped: look for the next message.
  enter_resync(at_line_start);
  return emitted;
}

size_t Http1Parser::memory_bytes() const {
  size_t n = msg_.heap + heap_bytes(expect_.capacity() * sizeof(Expect)) +
             heap_bytes(ready_.capacity() * sizeof(HttpMessage));
  for (const HttpMessage& m : ready_) n += m.heap;
  return n;
}

void Http1Parser::on_close(uint64_t ts, std::vector<HttpMessage>& out, std::span<const uint8_t> unconsumed) {
  for (HttpMessage& m : ready_) out.push_back(std::move(m));
  ready_.clear();
  const uint64_t last = last_ts_ ? last_ts_ : ts;
  switch (st_) {
    case State::UntilClose:
      msg_.close_delimited = true;
      finish(last, out);
      break;
    case State::Body:
    case State::ChunkSize:
    case State::ChunkExt:
    case State::ChunkSizeLF:
    case State::ChunkData:
    case State::ChunkDataCR:
    case State::ChunkDataLF:
      msg_.body_truncated = true;  // the body never ended
      msg_.incomplete = true;
      finish(last, out);
      break;
    case State::Trailers:  // the body ended; the trailers did not
      msg_.headers_truncated = true;
      msg_.incomplete = true;
      finish(last, out);
      break;
    case State::Start:  // a header block cut short, if there is enough of it
      take_partial(unconsumed, last, out);
      break;
    case State::Resync:
    case State::Tunnel:
      break;
  }
  if (st_ != State::Tunnel) {
    reset_message();
    st_ = State::Start;
  }
  expect_.clear();
  expect_head_ = 0;
  after_upgrade_request_ = false;
}

bool Http1Parser::switched_protocols() const { return switched_; }

uint64_t Http1Parser::invalid_count() const { return invalid_; }

bool looks_like_http1_request(std::span<const uint8_t> first_bytes) {
  const uint8_t* p = first_bytes.data();
  const size_t n = first_bytes.size();
  size_t mlen = 0;
  if (match_request_start(p, n, &mlen) != Match::Yes) return false;
  const size_t t = mlen + 1;  // first byte of the request-target
  const uint8_t c = p[t];
  const std::string_view method(reinterpret_cast<const char*>(p), mlen);
  const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  // origin-form "/…", asterisk-form "*", absolute-form "http://…", authority-form (CONNECT) "host:port"
  if (!(c == '/' || c == '*' || alpha || (method == "CONNECT" && c >= '0' && c <= '9'))) return false;
  const size_t limit = std::min<size_t>(n, 8192);
  const void* hit = std::memchr(p + t, '\n', limit - t);
  if (!hit) {
    // The line goes on past what we have: trust only origin/asterisk forms, all target bytes.
    if (c != '/' && c != '*') return false;
    for (size_t i = t; i < limit; i++)
      if (!(kClass[p[i]] & kTarget) && p[i] != ' ') return false;
    return true;
  }
  size_t end = static_cast<size_t>(static_cast<const uint8_t*>(hit) - p);
  if (end > 0 && p[end - 1] == '\r') end--;
  const std::string_view line(reinterpret_cast<const char*>(p), end);
  const size_t sp2 = line.rfind(' ');
  if (sp2 <= mlen) return false;
  const std::string_view target = line.substr(t, sp2 - t);
  return parse_version(line.substr(sp2 + 1)) >= 0 && !target.empty() && all_target(target);
}

bool looks_like_http1_response(std::span<const uint8_t> first_bytes) {
  const uint8_t* p = first_bytes.data();
  const size_t n = first_bytes.size();
  if (n < 12 || match_response_start(p, n) != Match::Yes) return false;
  for (size_t i = 9; i < 12; i++)
    if (p[i] < '0' || p[i] > '9') return false;
  if (p[9] == '0') return false;
  return n == 12 || p[12] == ' ' || p[12] == '\r' || p[12] == '\n';
}

}  // namespace tapwire::proto
