#include "postgres/postgres.hpp"

#include <algorithm>
#include <cstring>

namespace tapwire::proto {
namespace {

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// Bounds-checked reading of a message body.
struct Cursor {
  std::span<const uint8_t> b;
  size_t p = 0;
  bool ok = true;

  bool at_end() const { return p >= b.size(); }
  size_t left() const { return p < b.size() ? b.size() - p : 0; }
  uint8_t u8() {
    if (left() < 1) return fail(), 0;
    return b[p++];
  }
  int32_t i16() {
    if (left() < 2) return fail(), 0;
    int16_t v = static_cast<int16_t>((b[p] << 8) | b[p + 1]);
    p += 2;
    return v;
  }
  int64_t i32() {
    if (left() < 4) return fail(), 0;
    int32_t v = static_cast<int32_t>(be32(b.data() + p));
    p += 4;
    return v;
  }
  // A NUL-terminated string; without its NUL (a cut body) the rest, `ok` false.
  std::string_view cstr() {
    if (at_end()) return fail(), std::string_view();
    const uint8_t* s = b.data() + p;
    const void* z = std::memchr(s, 0, left());
    if (!z) {
      std::string_view v(reinterpret_cast<const char*>(s), left());
      p = b.size();
      fail();
      return v;
    }
    size_t n = static_cast<const uint8_t*>(z) - s;
    p += n + 1;
    return {reinterpret_cast<const char*>(s), n};
  }
  void skip(uint64_t n) {
    if (n > left()) {
      p = b.size();
      fail();
    } else {
      p += n;
    }
  }
  void fail() { ok = false; }
};

bool texty(std::string_view s) {
  for (unsigned char c : s)
    if (c < 0x20 && c != '\t' && c != '\n' && c != '\r' && c != '\f') return false;
    else if (c == 0x7f) return false;
  return true;
}

bool identifier_like(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (!(std::isalnum(c) || c == '_' || c == '-' || c == '.')) return false;
  return true;
}

std::string capped(std::string_view s, size_t cap) { return std::string(s.substr(0, cap)); }

bool is_error_field(uint8_t c) { return c && std::strchr("SVCMDHPpqWstcdnFLR", c) != nullptr; }

// The body's strings: the byte after a cstr's NUL etc. `cut` bodies may end anywhere.
bool format_codes_ok(Cursor& c, bool cut) {
  const int32_t n = c.i16();
  if (n < 0) return false;
  for (int32_t i = 0; i < n && c.ok; i++) {
    const int32_t f = c.i16();
    if (c.ok && f != 0 && f != 1) return false;
  }
  return c.ok || cut;
}

}  // namespace

bool pg_frontend_type(uint8_t t) { return t && std::strchr("BCdcfDEHFPpQSX", t) != nullptr; }
bool pg_backend_type(uint8_t t) { return t && std::strchr("RK23CdcGHWDIEVvnNAtS1sZT", t) != nullptr; }

bool pg_length_plausible(bool client, char t, uint64_t len, uint32_t max) {
  if (len < 4 || len > max) return false;
  if (client) {
    switch (t) {
      case 'S': case 'H': case 'X': case 'c': return len == 4;
      case 'E': return len >= 9;
      case 'C': case 'D': return len >= 6;
      case 'Q': case 'p': case 'f': return len >= 5;
      case 'P': return len >= 8;
      case 'B': return len >= 12;
      case 'F': return len >= 14;
      default: return true;
    }
  }
  switch (t) {
    case 'Z': return len == 5;
    case '1': case '2': case '3': case 'n': case 'I': case 'c': case 's': return len == 4;
    case 'K': return len >= 12 && len <= 4 + 4 + 256;
    case 'R': return len >= 8;
    case 'S': return len >= 6;
    case 'C': case 'E': case 'N': return len >= 5;
    case 'T': case 'D': case 't': return len >= 6;
    case 'G': case 'H': case 'W': return len >= 7;
    case 'A': return len >= 10;
    case 'V': return len >= 8;
    case 'v': return len >= 12;
    default: return true;
  }
}

bool pg_body_plausible(bool client, char t, std::span<const uint8_t> body, bool cut) {
  Cursor c{body};
  auto str_ok = [&](bool need_ident) {
    std::string_view s = c.cstr();
    if (!texty(s)) return false;
    if (need_ident && !s.empty() && !identifier_like(s)) return false;
    return c.ok || cut;
  };
  // Whole: every byte used; cut: what there is reads right.
  auto end_ok = [&] { return cut || (c.ok && c.at_end()); };
  if (client) {
    switch (t) {
      case 'Q': {
        std::string_view q = c.cstr();
        return texty(q) && end_ok();
      }
      case 'P': {
        if (!str_ok(true)) return false;
        if (c.at_end()) return cut;
        std::string_view q = c.cstr();
        if (!texty(q) || (!c.ok && !cut)) return false;
        if (c.at_end()) return cut;
        const int32_t n = c.i16();
        if (n < 0) return false;
        c.skip(uint64_t(n) * 4);
        return end_ok();
      }
      case 'B': {
        if (!str_ok(true) || c.at_end()) return cut;
        if (!str_ok(true) || c.at_end()) return cut;
        if (!format_codes_ok(c, cut)) return false;
        if (c.at_end()) return cut;
        const int32_t n = c.i16();
        if (n < 0) return false;
        for (int32_t i = 0; i < n && c.ok; i++) {
          const int64_t len = c.i32();
          if (!c.ok) break;
          if (len < -1) return false;
          if (len > 0) c.skip(uint64_t(len));
        }
        if (!c.ok) return cut;
        if (!format_codes_ok(c, cut)) return false;
        return end_ok();
      }
      case 'E': {
        if (!str_ok(true)) return false;
        const int64_t rows = c.i32();
        if (c.ok && rows < 0) return false;
        return end_ok();
      }
      case 'C': case 'D': {
        const uint8_t k = c.u8();
        if (k != 'S' && k != 'P') return false;
        if (!str_ok(true)) return false;
        return end_ok();
      }
      case 'S': case 'H': case 'X': case 'c': return body.empty();
      case 'f': return str_ok(false) && end_ok();
      default: return true;  // 'd', 'p', 'F': no structure worth checking
    }
  }
  switch (t) {
    case 'Z': return body.size() == 1 && (body[0] == 'I' || body[0] == 'T' || body[0] == 'E');
    case '1': case '2': case '3': case 'n': case 'I': case 'c': case 's': return body.empty();
    case 'C': {
      std::string_view tag = c.cstr();
      if (!texty(tag)) return false;
      if (!tag.empty() && !(tag[0] >= 'A' && tag[0] <= 'Z')) return false;
      return end_ok();
    }
    case 'E': case 'N': {
      for (int i = 0; i < 64; i++) {
        if (c.at_end()) return cut;
        const uint8_t f = c.u8();
        if (f == 0) return c.at_end() || cut;
        if (!is_error_field(f)) return false;
        std::string_view v = c.cstr();
        if (!texty(v)) return false;
        if (!c.ok) return cut;
      }
      return cut;
    }
    case 'T': {
      const int32_t n = c.i16();
      if (n < 0) return false;
      for (int32_t i = 0; i < n; i++) {
        if (c.at_end()) return cut;
        std::string_view name = c.cstr();
        if (!texty(name)) return false;
        c.skip(18);
        if (!c.ok) return cut;
      }
      return end_ok();
    }
    case 'D': {
      const int32_t n = c.i16();
      if (n < 0) return false;
      for (int32_t i = 0; i < n && c.ok; i++) {
        const int64_t len = c.i32();
        if (!c.ok) break;
        if (len < -1) return false;
        if (len > 0) c.skip(uint64_t(len));
      }
      return end_ok();
    }
    case 'S': {
      std::string_view k = c.cstr();
      if (!texty(k) || (!c.ok && !cut)) return false;
      std::string_view v = c.cstr();
      return texty(v) && end_ok();
    }
    case 'R': {
      if (body.size() < 4) return cut;
      const int64_t code = c.i32();
      switch (code) {
        case 0: case 3: return body.size() == 4;
        case 5: return cut ? body.size() <= 8 : body.size() == 8;
        case 2: case 7: case 8: case 9: case 10: case 11: case 12: return true;
        default: return false;
      }
    }
    case 't': {
      const int32_t n = c.i16();
      if (n < 0) return false;
      c.skip(uint64_t(n) * 4);
      return end_ok();
    }
    case 'G': case 'H': case 'W': {
      const uint8_t f = c.u8();
      if (f > 1) return false;
      if (!format_codes_ok(c, cut)) return false;
      return end_ok();
    }
    case 'A': {
      c.i32();
      if (!str_ok(false)) return false;
      return str_ok(false) && end_ok();
    }
    case 'V': {
      const int64_t len = c.i32();
      if (c.ok && len < -1) return false;
      if (len > 0) c.skip(uint64_t(len));
      return end_ok();
    }
    default: return true;  // 'd', 'K', 'v'
  }
}

int pg_startup_plausible(std::span<const uint8_t> b) {
  if (b.empty()) return 0;
  if (b[0] != 0) return -1;
  if (b.size() < 8) {
    if (b.size() >= 4) {
      const uint32_t len = be32(b.data());
      if (len < 8 || len > kPgMaxStartup) return -1;
    }
    return 0;
  }
  const uint32_t len = be32(b.data()), code = be32(b.data() + 4);
  if (code == kPgSslRequest || code == kPgGssEncRequest) return len == 8 ? 1 : -1;
  if (code == kPgCancelRequest) return len == 16 ? 1 : -1;
  if ((code >> 16) != 3 || (code & 0xffff) > 2 || len < 9 || len > kPgMaxStartup) return -1;
  // name\0value\0 ... \0: printable names, the first ones checked as far as they came
  Cursor c{b.subspan(8, std::min<size_t>(b.size(), len) - 8)};
  const bool whole = b.size() >= len;
  bool user = false;
  for (int i = 0; i < 64; i++) {
    if (c.at_end()) return whole ? -1 : 0;
    std::string_view name = c.cstr();
    if (!c.ok) return !whole && identifier_like(name) ? 0 : -1;
    if (name.empty()) return whole && c.at_end() && user ? 1 : -1;
    if (!identifier_like(name)) return -1;
    user |= name == "user";
    std::string_view v = c.cstr();
    if (!texty(v)) return -1;
    if (!c.ok) return whole ? -1 : 0;
  }
  return -1;
}

namespace {

// One message at the start of `b` as a boundary candidate: 1 believed, 0
// need more bytes, -1 not a boundary. `max` bounds its length.
int candidate(std::span<const uint8_t> b, bool client, uint32_t max, size_t* end) {
  if (b.empty()) return 0;
  const uint8_t t = b[0];
  if (!(client ? pg_frontend_type(t) : pg_backend_type(t))) return -1;
  if (b.size() < 5) return 0;
  const uint32_t len = be32(b.data() + 1);
  if (!pg_length_plausible(client, static_cast<char>(t), len, max)) return -1;
  const size_t total = size_t{len} + 1;
  if (b.size() < total) {
    if (b.size() == 5) return 0;
    // What came so far must read right.
    return pg_body_plausible(client, static_cast<char>(t), b.subspan(5), true) ? 0 : -1;
  }
  if (!pg_body_plausible(client, static_cast<char>(t), b.subspan(5, len - 4), false)) return -1;
  if (end) *end = total;
  return 1;
}

}  // namespace

int pg_typed_plausible(std::span<const uint8_t> b, bool client, bool detection) {
  size_t off = 0;
  int complete = 0;
  bool first_q = false;
  (void)detection;
  while (off < b.size() && complete < 4) {
    size_t end = 0;
    const int r = candidate(b.subspan(off), client, kPgMaxResyncMessage, &end);
    if (r < 0) return -1;
    if (r == 0) {
      // The first message cut by the detection buffer's end: a long query.
      if (complete == 0 && client && b[0] == 'Q' && b.size() >= 1024) return 1;
      if (complete >= 1 && b.size() >= 1024) return 1;
      return 0;
    }
    if (complete == 0) first_q = client && b[0] == 'Q';
    complete++;
    off += end;
  }
  if (complete >= 2) return 1;
  // One whole simple query: its text was checked.
  if (complete == 1 && first_q && b.size() >= 5 + 4) return 1;
  return 0;
}

// --------------------------------------------------------------- reader --

size_t PgReader::want(char type, uint64_t length) const {
  const uint64_t body = length - 4;
  // Data rows and COPY data are counted, not kept; passwords are never read.
  if ((!client_ && type == 'D') || type == 'd' || (client_ && type == 'p')) return 0;
  return static_cast<size_t>(std::min<uint64_t>(body, prefix_cap_));
}

ParseResult PgReader::next(std::span<const uint8_t> in, PgFrame& out) {
  if (skip_) {
    if (in.empty()) return {ParseStatus::NeedMoreData, 0};
    const size_t n = static_cast<size_t>(std::min<uint64_t>(skip_, in.size()));
    skip_ -= n;
    return {ParseStatus::Ignored, n};
  }
  if (in.empty()) return {ParseStatus::NeedMoreData, 0};
  if (first_) {
    first_ = false;
    if (client_ && in[0] == 0)
      startup_form_ = true;
    else
      synced_ = false;  // not known to start at a boundary: believe one only after checking it
  }
  if (startup_form_) {
    const int r = pg_startup_plausible(in);
    if (r == 0 && in.size() < 8) return {ParseStatus::NeedMoreData, 0};
    if (r < 0) {
      startup_form_ = false;
      synced_ = false;
      return {ParseStatus::Invalid, 1};
    }
    const uint32_t len = be32(in.data());
    if (in.size() < len) return {ParseStatus::NeedMoreData, 0};
    out = PgFrame{};
    out.type = 0;
    out.length = len;
    out.code = be32(in.data() + 4);
    out.body = in.subspan(8, len - 8);
    if (out.code != kPgSslRequest && out.code != kPgGssEncRequest && out.code != kPgCancelRequest)
      startup_form_ = false;  // typed messages from now on
    return {ParseStatus::Done, len};
  }
  if (!synced_) {
    for (size_t i = 0; i < in.size(); i++) {
      size_t end = 0;
      const int r = candidate(in.subspan(i), client_, kPgMaxResyncMessage, &end);
      if (r < 0) continue;
      if (i > 0) return {ParseStatus::Invalid, i};
      if (r == 0) return {ParseStatus::NeedMoreData, 0};
      synced_ = true;
      break;
    }
    if (!synced_) return {ParseStatus::Invalid, in.size()};
  }
  if (in.size() < 5) return {ParseStatus::NeedMoreData, 0};
  const char t = static_cast<char>(in[0]);
  const uint32_t len = be32(in.data() + 1);
  if (!(client_ ? pg_frontend_type(in[0]) : pg_backend_type(in[0])) ||
      !pg_length_plausible(client_, t, len, kPgMaxMessage)) {
    synced_ = false;
    return {ParseStatus::Invalid, 1};
  }
  const size_t w = want(t, len);
  if (in.size() < 5 + w) return {ParseStatus::NeedMoreData, 0};
  out = PgFrame{};
  out.type = t;
  out.length = len;
  out.body = in.subspan(5, w);
  out.cut = w < len - 4;
  skip_ = len - 4 - w;
  return {ParseStatus::Done, 5 + w};
}

// -------------------------------------------------------------- records --

PgError pg_parse_error(std::span<const uint8_t> body, size_t cap) {
  PgError e;
  Cursor c{body};
  std::string_view sev, sev_v;
  for (int i = 0; i < 64 && !c.at_end(); i++) {
    const uint8_t f = c.u8();
    if (f == 0) break;
    std::string_view v = c.cstr();
    switch (f) {
      case 'S': sev = v; break;
      case 'V': sev_v = v; break;
      case 'C': e.sqlstate = capped(v, 16); break;
      case 'M': e.message = capped(v, cap); break;
      default: break;
    }
    if (!c.ok) break;
  }
  e.severity = capped(sev_v.empty() ? sev : sev_v, 16);
  e.present = true;
  return e;
}

const char* pg_kind_name(PgKind k) {
  switch (k) {
    case PgKind::Simple: return "simple";
    case PgKind::Extended: return "extended";
    case PgKind::Prepare: return "prepare";
    case PgKind::Function: return "function_call";
    case PgKind::Startup: return "startup";
    case PgKind::Ssl: return "ssl_request";
    case PgKind::GssEnc: return "gssenc_request";
    case PgKind::Cancel: return "cancel";
  }
  return "";
}

namespace {

size_t pairs_heap(const std::vector<std::pair<std::string, std::string>>& v) {
  size_t n = vector_heap_bytes(v);
  for (const auto& [a, b] : v) n += string_heap_bytes(a) + string_heap_bytes(b);
  return n;
}

void write_pairs(JsonOut& out, const std::vector<std::pair<std::string, std::string>>& v) {
  out.begin_object();
  for (const auto& [k, val] : v) out.field(k, val);
  out.end_object();
}

std::string_view find_pair(const std::vector<std::pair<std::string, std::string>>& v, std::string_view k) {
  for (const auto& [a, b] : v)
    if (a == k) return b;
  return {};
}

}  // namespace

size_t PgRequest::heap_bytes() const {
  size_t n = proto::heap_bytes(sizeof(PgRequest)) + string_heap_bytes(query) + string_heap_bytes(statement) +
             string_heap_bytes(portal) + vector_heap_bytes(params) + pairs_heap(startup) + string_heap_bytes(copy_fail);
  for (const PgParam& p : params) n += string_heap_bytes(p.value);
  return n;
}

void PgRequest::write_json(JsonOut& out) const {
  out.begin_object();
  out.field("kind", pg_kind_name(kind));
  switch (kind) {
    case PgKind::Simple:
      out.field("query", query);
      break;
    case PgKind::Extended:
    case PgKind::Prepare:
      if (query_known)
        out.field("query", query);
      else
        out.key("query"), out.null();
      out.field("statement", statement);
      if (kind == PgKind::Extended) {
        out.field("portal", portal);
        out.key("params");
        out.begin_array();
        for (const PgParam& p : params) {
          if (p.kind == PgParam::Null) {
            out.null();
          } else if (p.kind == PgParam::Text) {
            out.string(p.value);
          } else {
            out.begin_object();
            out.field("size", uint64_t{p.size});
            out.field("hex", p.value);
            out.end_object();
          }
        }
        out.end_array();
        if (param_count > params.size()) out.field("param_count", uint64_t{param_count});
      }
      break;
    case PgKind::Startup:
      out.field("protocol_version", std::to_string(version >> 16) + "." + std::to_string(version & 0xffff));
      out.field("user", find_pair(startup, "user"));
      out.field("database", find_pair(startup, "database"));
      out.key("parameters");
      write_pairs(out, startup);
      break;
    case PgKind::Cancel:
      out.field("backend_pid", uint64_t{backend_pid});
      break;
    default:
      break;
  }
  if (copy_messages || copy_done || copy_failed) {
    out.key("copy");
    out.begin_object();
    out.field("messages", copy_messages);
    out.field("bytes", copy_bytes);
    out.field("done", copy_done);
    if (copy_failed) out.field("fail", copy_fail);
    out.end_object();
  }
  out.end_object();
}

size_t PgResponse::heap_bytes() const {
  size_t n = proto::heap_bytes(sizeof(PgResponse)) + vector_heap_bytes(statements) + vector_heap_bytes(columns) +
             string_heap_bytes(error.severity) + string_heap_bytes(error.sqlstate) +
             string_heap_bytes(error.message) + vector_heap_bytes(authentication) + pairs_heap(parameters);
  for (const auto& s : statements) n += string_heap_bytes(s.tag);
  for (const auto& s : columns) n += string_heap_bytes(s);
  for (const auto& s : authentication) n += string_heap_bytes(s);
  return n;
}

void PgResponse::write_json(JsonOut& out) const {
  out.begin_object();
  if (ssl_answer) {
    out.field("ssl", ssl_answer == 'N' ? "refused" : "accepted");
    if (ssl_answer != 'N') out.field("tls", ssl_answer == 'S');
  }
  if (!authentication.empty() || !parameters.empty() || has_backend_pid) {
    out.key("authentication");
    out.begin_array();
    for (const auto& a : authentication) out.string(a);
    out.end_array();
    out.key("parameters");
    write_pairs(out, parameters);
    if (has_backend_pid) out.field("backend_pid", uint64_t{backend_pid});
  }
  if (!statements.empty()) out.field("command_tag", statements.back().tag);
  const bool startup = !authentication.empty() || !parameters.empty() || has_backend_pid;
  if (!ssl_answer && !startup) out.field("rows", rows);
  if (statement_count > 1) {
    out.key("statements");
    out.begin_array();
    for (const auto& s : statements) {
      out.begin_object();
      out.field("command_tag", s.tag);
      out.field("rows", s.rows);
      out.end_object();
    }
    out.end_array();
    if (statement_count > statements.size()) out.field("statement_count", statement_count);
  }
  if (!columns.empty()) {
    out.key("columns");
    out.begin_array();
    for (const auto& c : columns) out.string(c);
    out.end_array();
  }
  if (error.present) {
    out.key("error");
    out.begin_object();
    out.field("severity", error.severity);
    out.field("sqlstate", error.sqlstate);
    out.field("message", error.message);
    out.end_object();
  }
  if (notices) out.field("notices", uint64_t{notices});
  if (empty_query) out.field("empty_query", true);
  if (suspended) out.field("suspended", true);
  if (copy) {
    out.key("copy");
    out.begin_object();
    out.field("direction", copy == 'i' ? "in" : copy == 'o' ? "out" : "both");
    if (copy != 'i') {
      out.field("messages", copy_messages);
      out.field("bytes", copy_bytes);
    }
    out.end_object();
  }
  if (transaction_status) out.field("transaction_status", std::string(1, transaction_status));
  out.end_object();
}

// ------------------------------------------------------------------ SQL --

namespace {

// Skips spaces, comments and opening parentheses.
size_t skip_blank(std::string_view q, size_t i) {
  for (int guard = 0; guard < 4096 && i < q.size(); guard++) {
    const char c = q[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '(' || c == ';') {
      i++;
    } else if (c == '-' && i + 1 < q.size() && q[i + 1] == '-') {
      size_t e = q.find('\n', i);
      i = e == std::string_view::npos ? q.size() : e + 1;
    } else if (c == '/' && i + 1 < q.size() && q[i + 1] == '*') {
      size_t e = q.find("*/", i + 2);
      i = e == std::string_view::npos ? q.size() : e + 2;
    } else {
      break;
    }
  }
  return i;
}

// Whether the next thing after spaces is an opening parenthesis (a subquery).
bool opens_paren(std::string_view q, size_t i) {
  while (i < q.size() && (q[i] == ' ' || q[i] == '\t' || q[i] == '\n' || q[i] == '\r')) i++;
  return i < q.size() && q[i] == '(';
}

bool word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

std::string upper_word(std::string_view q, size_t& i) {
  std::string w;
  while (i < q.size() && word_char(q[i])) {
    if (w.size() < 32) w.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(q[i]))));
    i++;
  }
  return w;
}

std::string ident(std::string_view q, size_t i) {
  i = skip_blank(q, i);
  std::string w;
  while (i < q.size() && (word_char(q[i]) || q[i] == '.' || q[i] == '"' || q[i] == '$')) {
    if (q[i] != '"' && w.size() < 128) w.push_back(q[i]);
    i++;
  }
  if (!w.empty() && std::isdigit(static_cast<unsigned char>(w[0]))) return {};
  return w;
}

}  // namespace

std::string pg_sql_verb(std::string_view q) {
  size_t i = skip_blank(q, 0);
  std::string w = upper_word(q, i);
  if (!w.empty() && !std::isalpha(static_cast<unsigned char>(w[0]))) return {};
  return w;
}

std::string pg_sql_table(std::string_view q) {
  q = q.substr(0, 4096);
  size_t i = skip_blank(q, 0);
  const std::string verb = upper_word(q, i);
  auto next_word = [&](size_t& j) {
    j = skip_blank(q, j);
    return upper_word(q, j);
  };
  size_t j = i;
  if (verb == "INSERT") {
    if (next_word(j) != "INTO") return {};
    return ident(q, j);
  }
  if (verb == "UPDATE" || verb == "DELETE" || verb == "TRUNCATE" || verb == "COPY") {
    size_t k = j;
    std::string w = next_word(k);
    if (verb == "DELETE") {
      if (w != "FROM") return {};
      j = k;
      k = j;
      w = next_word(k);
    }
    if (w == "ONLY" || (verb == "TRUNCATE" && w == "TABLE")) j = k;
    if (verb == "COPY" && opens_paren(q, j)) return {};
    return ident(q, j);
  }
  if (verb == "SELECT") {
    // The first FROM outside parentheses and quotes.
    int depth = 0;
    char quote = 0;
    for (size_t k = j; k < q.size(); k++) {
      const char c = q[k];
      if (quote) {
        if (c == quote) quote = 0;
        continue;
      }
      if (c == '\'' || c == '"') quote = c;
      else if (c == '(') depth++;
      else if (c == ')') depth--;
      else if (depth == 0 && (c == 'f' || c == 'F') && (k == 0 || !word_char(q[k - 1])) && k + 4 <= q.size()) {
        size_t m = k;
        if (upper_word(q, m) == "FROM") {
          if (opens_paren(q, m)) return {};
          return ident(q, m);
        }
      }
    }
  }
  return {};
}

}  // namespace tapwire::proto
