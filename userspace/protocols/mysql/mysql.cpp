#include "mysql/mysql.hpp"

#include <algorithm>
#include <cstring>

namespace tapwire::proto::mysql {
namespace {

constexpr uint32_t kMaxPacket = 0xffffff;
constexpr size_t kInflateChunk = 16 << 10;
// zlib's inflate state and its 32 KiB window, about (counted while compressed).
constexpr size_t kInflaterBytes = 7200 + (32 << 10) + sizeof(z_stream);

uint32_t le24(const uint8_t* p) { return p[0] | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16); }

bool is_text_byte(uint8_t c) { return c >= 0x20 || c == '\t' || c == '\r' || c == '\n'; }

}  // namespace

const char* command_name(uint8_t cmd) {
  static const char* const kNames[] = {
      "COM_SLEEP",         "COM_QUIT",           "COM_INIT_DB",       "COM_QUERY",          "COM_FIELD_LIST",
      "COM_CREATE_DB",     "COM_DROP_DB",        "COM_REFRESH",       "COM_SHUTDOWN",       "COM_STATISTICS",
      "COM_PROCESS_INFO",  "COM_CONNECT",        "COM_PROCESS_KILL",  "COM_DEBUG",          "COM_PING",
      "COM_TIME",          "COM_DELAYED_INSERT", "COM_CHANGE_USER",   "COM_BINLOG_DUMP",    "COM_TABLE_DUMP",
      "COM_CONNECT_OUT",   "COM_REGISTER_SLAVE", "COM_STMT_PREPARE",  "COM_STMT_EXECUTE",   "COM_STMT_SEND_LONG_DATA",
      "COM_STMT_CLOSE",    "COM_STMT_RESET",     "COM_SET_OPTION",    "COM_STMT_FETCH",     "COM_DAEMON",
      "COM_BINLOG_DUMP_GTID", "COM_RESET_CONNECTION"};
  if (cmd < sizeof kNames / sizeof kNames[0]) return kNames[cmd];
  if (cmd == 0xfa) return "COM_STMT_BULK_EXECUTE";  // MariaDB
  return nullptr;
}

// ------------------------------------------------------------- framing --

PacketReader::~PacketReader() {
  if (z_) {
    inflateEnd(z_);
    delete z_;
  }
}

size_t PacketReader::feed_plain(std::span<const uint8_t> in, uint64_t ts, Packet& out, bool& got) {
  size_t used = 0;
  while (used < in.size() || (in_payload_ && remaining_ == 0)) {
    if (!in_payload_) {
      if (hdr_have_ == 0 && !continuing_) {
        cur_ = Packet{};
        cur_.ts_first = ts;
      }
      while (hdr_have_ < 4 && used < in.size()) hdr_[hdr_have_++] = in[used++];
      if (hdr_have_ < 4) return used;
      const uint32_t len = le24(hdr_);
      if (!continuing_) {
        cur_.seq = hdr_[3];
        cur_.first_len = len;
      }
      hdr_have_ = 0;
      remaining_ = len;
      in_payload_ = true;
      continuing_ = len == kMaxPacket;
      cur_.ts_last = ts;
    }
    const size_t take = std::min<size_t>(remaining_, in.size() - used);
    if (take) {
      if (cur_.data.size() < keep_ && !cur_.shed) {
        const size_t k = std::min(take, keep_ - cur_.data.size());
        cur_.data.append(reinterpret_cast<const char*>(in.data() + used), k);
      }
      cur_.length += take;
      remaining_ -= static_cast<uint32_t>(take);
      used += take;
      cur_.ts_last = ts;
    }
    if (remaining_ == 0) {
      in_payload_ = false;
      if (!continuing_) {
        out = std::move(cur_);
        cur_ = Packet{};
        got = true;
        return used;
      }
    }
  }
  return used;
}

void PacketReader::fail() {
  failed_ = true;
  inflate_errors_++;
  std::string().swap(scratch_);
  scratch_off_ = 0;
  cur_ = Packet{};
  if (z_) {
    inflateEnd(z_);
    delete z_;
    z_ = nullptr;
  }
}

void PacketReader::set_compressed() {
  compressed_ = true;
}

void PacketReader::reset() {
  hdr_have_ = 0;
  in_payload_ = continuing_ = false;
  remaining_ = 0;
  cur_ = Packet{};
  chdr_have_ = 0;
  c_in_payload_ = false;
  fail_pending_ = false;
  scratch_.clear();
  scratch_off_ = 0;
  // The compressed framing cannot be found again in the middle of a stream.
  if (compressed_ && !failed_) fail();
}

size_t PacketReader::memory_bytes() const {
  return string_heap_bytes(cur_.data) + string_heap_bytes(scratch_) + (z_ ? heap_bytes(kInflaterBytes) : 0);
}

size_t PacketReader::shed() {
  const size_t before = string_heap_bytes(cur_.data);
  if (!before) return 0;
  std::string keep = cur_.data.substr(0, 16);
  cur_.data.swap(keep);
  cur_.shed = true;
  return before - string_heap_bytes(cur_.data);
}

size_t PacketReader::feed(std::span<const uint8_t> in, uint64_t ts, Packet& out, bool& got) {
  got = false;
  if (failed_) return in.size();
  if (!compressed_) return feed_plain(in, ts, out, got);
  size_t used = 0;
  for (int guard = 0; guard < 1 << 20; guard++) {
    // Inflated bytes first.
    if (scratch_off_ < scratch_.size()) {
      const auto s = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(scratch_.data()), scratch_.size());
      scratch_off_ += feed_plain(s.subspan(scratch_off_), ts, out, got);
      if (scratch_off_ >= scratch_.size()) {
        scratch_.clear();
        scratch_off_ = 0;
      }
      if (got) return used;
    }
    if (fail_pending_) {  // what inflated before the error is read: now stop
      fail();
      return in.size();
    }
    if (c_in_payload_) {
      const size_t take = std::min<size_t>(c_remaining_, in.size() - used);
      if (c_expect_ == 0) {  // stored as it is
        if (take == 0) {
          if (c_remaining_ == 0) c_in_payload_ = false;
          if (c_in_payload_) return used;
          continue;
        }
        const size_t n = feed_plain(in.subspan(used, take), ts, out, got);
        used += n;
        c_remaining_ -= static_cast<uint32_t>(n);
        if (c_remaining_ == 0) c_in_payload_ = false;
        if (got) return used;
        continue;
      }
      if (take == 0 && !c_more_out_) {
        if (c_remaining_ > 0) return used;
        c_in_payload_ = false;
        if (c_produced_ != c_expect_) {
          fail();
          return in.size();
        }
        continue;
      }
      scratch_.resize(kInflateChunk);
      z_->next_in = const_cast<Bytef*>(in.data() + used);
      z_->avail_in = static_cast<uInt>(take);
      z_->next_out = reinterpret_cast<Bytef*>(scratch_.data());
      z_->avail_out = static_cast<uInt>(kInflateChunk);
      const int rc = inflate(z_, Z_NO_FLUSH);
      const size_t consumed = take - z_->avail_in;
      size_t produced = kInflateChunk - z_->avail_out;
      c_more_out_ = z_->avail_out == 0;
      // The bytes within the announced length are read whatever happens
      // next, so that where the input was cut does not change what is read.
      if (produced > c_expect_ - c_produced_) {
        produced = c_expect_ - c_produced_;
        fail_pending_ = true;
      }
      scratch_.resize(produced);
      scratch_off_ = 0;
      used += consumed;
      c_remaining_ -= static_cast<uint32_t>(consumed);
      c_produced_ += static_cast<uint32_t>(produced);
      if (rc == Z_BUF_ERROR) {
        c_more_out_ = false;
        if (take == 0) continue;
      }
      if ((rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) || (rc == Z_STREAM_END && c_remaining_ > 0))
        fail_pending_ = true;
      if (rc == Z_STREAM_END) c_more_out_ = false;
      continue;
    }
    if (used >= in.size()) return used;
    while (chdr_have_ < 7 && used < in.size()) chdr_[chdr_have_++] = in[used++];
    if (chdr_have_ < 7) return used;
    chdr_have_ = 0;
    c_remaining_ = le24(chdr_);
    c_expect_ = le24(chdr_ + 4);
    c_produced_ = 0;
    c_more_out_ = false;
    c_in_payload_ = true;
    if (c_expect_) {
      if (!z_) {
        z_ = new z_stream{};
        if (inflateInit(z_) != Z_OK) {
          delete z_;
          z_ = nullptr;
          fail();
          return in.size();
        }
      } else {
        inflateReset(z_);
      }
    }
  }
  return used;
}

// ------------------------------------------------------------- decoders --

bool Cursor::u8(uint8_t& v) {
  if (left() < 1) return false;
  v = static_cast<uint8_t>(s_[at_++]);
  return true;
}
bool Cursor::u16(uint16_t& v) {
  if (left() < 2) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(s_.data() + at_);
  v = static_cast<uint16_t>(p[0] | (p[1] << 8));
  at_ += 2;
  return true;
}
bool Cursor::u24(uint32_t& v) {
  if (left() < 3) return false;
  v = le24(reinterpret_cast<const uint8_t*>(s_.data() + at_));
  at_ += 3;
  return true;
}
bool Cursor::u32(uint32_t& v) {
  if (left() < 4) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(s_.data() + at_);
  v = p[0] | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
  at_ += 4;
  return true;
}
bool Cursor::lenenc(uint64_t& v) {
  uint8_t b;
  if (!u8(b)) return false;
  if (b < 0xfb) {
    v = b;
    return true;
  }
  if (b == 0xfc) {
    uint16_t x;
    if (!u16(x)) return false;
    v = x;
    return true;
  }
  if (b == 0xfd) {
    uint32_t x;
    if (!u24(x)) return false;
    v = x;
    return true;
  }
  if (b == 0xfe) {
    if (left() < 8) return false;
    v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | static_cast<uint8_t>(s_[at_ + static_cast<size_t>(i)]);
    at_ += 8;
    return true;
  }
  return false;  // 0xfb (NULL) and 0xff are no integers
}
bool Cursor::skip(size_t n) {
  if (left() < n) return false;
  at_ += n;
  return true;
}
bool Cursor::nul_string(std::string_view& v) {
  const size_t nul = s_.find('\0', at_);
  if (nul == std::string_view::npos) return false;
  v = s_.substr(at_, nul - at_);
  at_ = nul + 1;
  return true;
}
bool Cursor::bytes(size_t n, std::string_view& v) {
  if (left() < n) return false;
  v = s_.substr(at_, n);
  at_ += n;
  return true;
}
bool Cursor::lenenc_string(std::string_view& v) {
  uint64_t n;
  if (!lenenc(n) || n > left()) return false;
  return bytes(static_cast<size_t>(n), v);
}

bool parse_greeting(std::string_view payload, Greeting& g) {
  Cursor c(payload);
  uint8_t proto = 0, filler = 0, auth_len = 0, charset = 0;
  uint16_t caps_lo = 0, caps_hi = 0, status = 0;
  std::string_view version;
  if (!c.u8(proto) || proto != 10 || !c.nul_string(version) || !c.u32(g.connection_id) || !c.skip(8) ||
      !c.u8(filler) || !c.u16(caps_lo))
    return false;
  g.server_version.assign(version.substr(0, 128));
  g.capabilities = caps_lo;
  if (!c.u8(charset) || !c.u16(status) || !c.u16(caps_hi)) return true;
  g.capabilities |= uint32_t{caps_hi} << 16;
  if (!c.u8(auth_len) || !c.skip(10)) return true;
  if (g.capabilities & kClientSecureConnection) {
    if (!c.skip(std::max<size_t>(13, auth_len > 8 ? auth_len - 8u : 0))) return true;
  }
  if (g.capabilities & kClientPluginAuth) {
    std::string_view plugin;
    if (!c.nul_string(plugin)) plugin = c.rest();
    g.auth_plugin.assign(plugin.substr(0, 64));
  }
  return true;
}

bool parse_handshake_response(std::string_view payload, HandshakeResponse& r) {
  Cursor c(payload);
  uint32_t max_packet = 0;
  uint8_t charset = 0;
  if (!c.u32(r.capabilities)) return false;
  if (!(r.capabilities & kClientProtocol41)) return false;  // HandshakeResponse320: too old to matter
  if (!c.u32(max_packet) || !c.u8(charset) || !c.skip(19)) return false;
  uint32_t ext = 0;
  if (!c.u32(ext)) return false;
  if (!(r.capabilities & 1u)) r.mariadb_capabilities = ext;  // CLIENT_MYSQL unset: a MariaDB client
  if (c.left() == 0) {
    r.ssl_request = (r.capabilities & kClientSsl) != 0;
    return true;
  }
  std::string_view user;
  if (!c.nul_string(user)) return false;
  r.user.assign(user.substr(0, 256));
  std::string_view auth;
  if (r.capabilities & kClientPluginAuthLenencData) {
    if (!c.lenenc_string(auth)) return true;
  } else if (r.capabilities & kClientSecureConnection) {
    uint8_t n = 0;
    if (!c.u8(n) || !c.bytes(n, auth)) return true;
  } else if (!c.nul_string(auth)) {
    return true;
  }
  // The auth response is never kept.
  if (r.capabilities & kClientConnectWithDb) {
    std::string_view db;
    if (!c.nul_string(db)) return true;
    r.database.assign(db.substr(0, 256));
  }
  if (r.capabilities & kClientPluginAuth) {
    std::string_view plugin;
    if (!c.nul_string(plugin)) return true;
    r.auth_plugin.assign(plugin.substr(0, 64));
  }
  return true;
}

bool parse_ok(std::string_view payload, OkPacket& ok, size_t max_info) {
  Cursor c(payload);
  uint8_t h = 0;
  if (!c.u8(h) || (h != 0x00 && h != 0xfe)) return false;
  if (!c.lenenc(ok.affected_rows) || !c.lenenc(ok.last_insert_id)) return false;
  if (!c.u16(ok.status) || !c.u16(ok.warnings)) return true;
  std::string_view info = c.rest();
  // With CLIENT_SESSION_TRACK the info is a length-encoded string (session
  // state changes after it); plain text to the end otherwise.
  if (!info.empty()) {
    const size_t n = static_cast<uint8_t>(info[0]);
    if (n < 0xfb && n + 1 <= info.size() && (n + 1 == info.size() || (ok.status & 0x4000))) info = info.substr(1, n);
  }
  ok.info.assign(info.substr(0, max_info));
  return true;
}

bool parse_err(std::string_view payload, ErrPacket& e, size_t max_message) {
  Cursor c(payload);
  uint8_t h = 0;
  if (!c.u8(h) || h != 0xff || !c.u16(e.code)) return false;
  std::string_view rest = c.rest();
  if (rest.size() >= 6 && rest[0] == '#') {
    e.sqlstate.assign(rest.substr(1, 5));
    rest.remove_prefix(6);
  }
  e.message.assign(rest.substr(0, max_message));
  return true;
}

bool is_progress_report(std::string_view p) {
  return p.size() >= 3 && static_cast<uint8_t>(p[0]) == 0xff && static_cast<uint8_t>(p[1]) == 0xff &&
         static_cast<uint8_t>(p[2]) == 0xff;
}

std::string sql_verb(std::string_view sql) {
  size_t i = 0;
  for (int guard = 0; guard < 64 && i < sql.size(); guard++) {
    const char c = sql[i];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '(' || c == ';') {
      i++;
    } else if (c == '/' && i + 1 < sql.size() && sql[i + 1] == '*') {
      const size_t end = sql.find("*/", i + 2);
      if (end == std::string_view::npos) return {};
      i = end + 2;
    } else if ((c == '-' && i + 2 < sql.size() && sql[i + 1] == '-' && (sql[i + 2] == ' ' || sql[i + 2] == '\t')) ||
               c == '#') {
      const size_t end = sql.find('\n', i);
      if (end == std::string_view::npos) return {};
      i = end + 1;
    } else {
      break;
    }
  }
  std::string v;
  while (i < sql.size() && v.size() < 32) {
    const char c = sql[i++];
    if (c >= 'a' && c <= 'z') {
      v.push_back(static_cast<char>(c - 32));
    } else if ((c >= 'A' && c <= 'Z') || c == '_') {
      v.push_back(c);
    } else {
      break;
    }
  }
  return v;
}

// ------------------------------------------------------------ detection --

int looks_like_greeting(std::span<const uint8_t> s) {
  if (s.size() >= 3) {
    const uint32_t len = le24(s.data());
    if (len < 19 || len > 2048) return 0;
  }
  if (s.size() >= 4 && s[3] != 0) return 0;
  if (s.size() >= 5 && s[4] != 10) return 0;
  if (s.size() < 5) return -1;
  const size_t end = 4 + le24(s.data());
  const size_t have = std::min(s.size(), end);
  // The version string: printable, a digit first, a '.' in it, NUL-terminated.
  size_t i = 5;
  bool dot = false;
  while (i < have && s[i] != 0) {
    if (s[i] < 0x20 || s[i] > 0x7e || i - 5 > 80) return 0;
    if (i == 5 && (s[i] < '0' || s[i] > '9')) return 0;
    dot |= s[i] == '.';
    i++;
  }
  if (i >= have) return have < end ? -1 : 0;
  if (i == 5 || !dot) return 0;
  // Connection id (4), auth data (8), a zero filler, the low capabilities.
  const size_t filler = i + 1 + 4 + 8;
  if (filler + 2 >= have) return have < end ? -1 : 0;
  if (s[filler] != 0) return 0;
  const uint16_t caps = static_cast<uint16_t>(s[filler + 1] | (s[filler + 2] << 8));
  if (!(caps & kClientProtocol41)) return 0;
  return 1;
}

namespace {

// A command's payload (`len` bytes, of which `p` is the first part) is consistent.
bool command_fits(uint32_t len, std::span<const uint8_t> p) {
  if (len == 0 || p.empty()) return false;
  auto text = [&](size_t from, size_t min_len) {
    if (len < from + min_len) return false;
    const size_t n = std::min<size_t>(p.size(), from + 128);
    if (n <= from) return true;
    const uint8_t c0 = p[from];
    if (!((c0 >= 'A' && c0 <= 'Z') || (c0 >= 'a' && c0 <= 'z') || c0 == '(' || c0 == '/' || c0 == ' ' ||
          c0 == '\t' || c0 == '\r' || c0 == '\n' || c0 == '-' || c0 == '#' || c0 == '{'))
      return false;
    for (size_t i = from; i < n; i++)
      if (!is_text_byte(p[i])) return false;
    return true;
  };
  auto name = [&](size_t min_len, size_t max_len) {
    if (len < 1 + min_len || len > 1 + max_len) return false;
    for (size_t i = 1; i < p.size() && i < len; i++)
      if (p[i] < 0x20 || p[i] == 0x7f) return false;
    return true;
  };
  switch (p[0]) {
    case kComQuit:
    case kComPing:
    case kComStatistics:
    case kComProcessInfo:
    case kComDebug:
    case kComResetConnection:
      return len == 1;
    case kComInitDb:
    case kComCreateDb:
    case kComDropDb:
      return name(1, 256);
    case kComQuery:
      // With query attributes: parameter count 0, one parameter set, then the text.
      if (p.size() >= 3 && p[1] == 0 && p[2] == 1) return text(3, 4);
      return text(1, 4);
    case kComStmtPrepare:
      return text(1, 4);
    case kComStmtExecute:
      if (len < 10) return false;
      if (p.size() >= 6 && p[5] > 0x1f) return false;
      if (p.size() >= 10 && !(p[6] == 1 && p[7] == 0 && p[8] == 0 && p[9] == 0)) return false;
      return true;
    case kComStmtClose:
    case kComStmtReset:
    case kComProcessKill:
      return len == 5;
    case kComStmtFetch:
      return len == 9;
    case kComSetOption:
      return len == 3 && (p.size() < 2 || p[1] <= 1) && (p.size() < 3 || p[2] == 0);
    case kComFieldList: {
      if (len < 2 || len > 1024) return false;
      for (size_t i = 1; i < p.size() && i < len; i++) {
        if (p[i] == 0) return i > 1;
        if (p[i] < 0x20) return false;
      }
      return p.size() < len;
    }
    default:
      return false;
  }
}

}  // namespace

bool looks_like_commands(std::span<const uint8_t> s) {
  size_t off = 0;
  int n = 0;
  while (off < s.size() && n < 16) {
    if (s.size() - off < 5) return false;
    const uint32_t len = le24(s.data() + off);
    if (s[off + 3] != 0 || len == 0 || len == kMaxPacket || s.size() - off - 4 < len) return false;
    if (!command_fits(len, s.subspan(off + 4, len))) return false;
    off += 4 + len;
    n++;
  }
  return n > 0 && off == s.size();
}

bool looks_like_command_start(std::span<const uint8_t> s) {
  if (s.size() < 5) return false;
  const uint32_t len = le24(s.data());
  if (s[3] != 0 || len == 0) return false;
  return command_fits(len, s.subspan(4, std::min<size_t>(len, s.size() - 4)));
}

}  // namespace tapwire::proto::mysql
