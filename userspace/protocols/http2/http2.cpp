// HTTP/2 framing (RFC 9113 4, 6) and stream assembly for a passive
// observer. Each direction is a byte-at-a-time state machine: a 9-byte frame
// header, then the payload in stages (fixed fields, body, padding) consumed
// as it arrives. Only three things are buffered: the frame header and fixed
// fields (at most 9 bytes each), a header block until END_HEADERS (capped),
// and, while looking for a frame boundary, the bytes after the candidate.
#include "http2/http2.hpp"

#include <algorithm>
#include <cstring>
#include <map>

namespace tapwire::proto {

namespace {

constexpr uint32_t kDefaultMaxFrame = 16384;  // SETTINGS_MAX_FRAME_SIZE initial value
constexpr uint32_t kMaxFrameSetting = (1u << 24) - 1;
constexpr size_t kMaxUnackedSettings = 16;  // SETTINGS waiting for an ACK (more: a flood, the oldest forgotten)

uint32_t be32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
}

struct FrameHeader {
  uint32_t len;
  uint8_t type, flags;
  uint32_t sid;
  bool reserved;  // the bit before the stream id
};

FrameHeader decode_header(const uint8_t* p) {
  return FrameHeader{uint32_t{p[0]} << 16 | uint32_t{p[1]} << 8 | uint32_t{p[2]}, p[3], p[4], be32(p + 5) & 0x7fffffffu,
                     (p[5] & 0x80) != 0};
}

// Flags each known type defines (RFC 9113 6); others are legal but unseen in practice.
constexpr uint8_t kFlagsOf[10] = {
    h2flag::kEndStream | h2flag::kPadded,  // DATA
    h2flag::kEndStream | h2flag::kEndHeaders | h2flag::kPadded | h2flag::kPriority,  // HEADERS
    0,  // PRIORITY
    0,  // RST_STREAM
    h2flag::kAck,  // SETTINGS
    h2flag::kEndHeaders | h2flag::kPadded,  // PUSH_PROMISE
    h2flag::kAck,  // PING
    0,  // GOAWAY
    0,  // WINDOW_UPDATE
    h2flag::kEndHeaders,  // CONTINUATION
};

// Is this frame header one a peer could have sent? Strict (the header of a
// frame nobody has announced): known type, defined flags only, reserved bit
// clear, length within `max_len` and right for the type, stream id 0 exactly
// for connection frames, odd for what a client sends on its streams.
// `first`: a frame to restart on, so not a CONTINUATION (its HEADERS is gone).
bool plausible(const FrameHeader& h, std::optional<Http2Dir> dir, uint32_t max_len, bool first) {
  if (h.type > 9 || (h.flags & ~kFlagsOf[h.type]) || h.reserved || h.len > max_len) return false;
  const bool client = dir == Http2Dir::ClientToServer;
  const uint32_t pad = (h.flags & h2flag::kPadded) ? 1 : 0;
  switch (static_cast<Http2FrameType>(h.type)) {
    case Http2FrameType::Data:
      return h.sid != 0 && (!client || (h.sid & 1)) && h.len >= pad;
    case Http2FrameType::Headers:
      return h.sid != 0 && (!client || (h.sid & 1)) && h.len >= pad + ((h.flags & h2flag::kPriority) ? 5 : 0);
    case Http2FrameType::Continuation:
      return !first && h.sid != 0 && (!client || (h.sid & 1));
    case Http2FrameType::PushPromise:  // from the server, on a stream the client opened
      return dir != Http2Dir::ClientToServer && h.sid != 0 && (h.sid & 1) && h.len >= pad + 4;
    case Http2FrameType::Priority:
      return h.sid != 0 && h.len == 5;
    case Http2FrameType::RstStream:
      return h.sid != 0 && h.len == 4;
    case Http2FrameType::Settings:
      return h.sid == 0 && ((h.flags & h2flag::kAck) ? h.len == 0 : h.len % 6 == 0);
    case Http2FrameType::Ping:
      return h.sid == 0 && h.len == 8;
    case Http2FrameType::Goaway:
      return h.sid == 0 && h.len >= 8;
    case Http2FrameType::WindowUpdate:
      return h.len == 4;
  }
  return false;
}

bool is_server_start(const FrameHeader& h, uint32_t cap) {
  return h.type == static_cast<uint8_t>(Http2FrameType::Settings) && h.flags == 0 && h.sid == 0 && !h.reserved &&
         h.len % 6 == 0 && h.len <= cap;
}

constexpr int kClient = 0, kServer = 1;

}  // namespace

const std::string* Http2Message::header(std::string_view lower_name) const {
  for (const Header& h : headers)
    if (h.name == lower_name) return &h.value;
  return nullptr;
}

const std::string* Http2Message::trailer(std::string_view lower_name) const {
  for (const Header& h : trailers)
    if (h.name == lower_name) return &h.value;
  return nullptr;
}

Http2Parser::Http2Parser(Http2Limits limits, Http2TapFactory taps) : lim_(limits), taps_(std::move(taps)) {
  side_[kClient].phase = Phase::Preface;
  side_[kServer].phase = Phase::Start;
  for (Side& s : side_) s.hpack = std::make_unique<HpackDecoder>(lim_.max_header_table_size);
}

Http2Parser::~Http2Parser() = default;

uint32_t Http2Parser::frame_cap(int d) const {
  const Http2Settings& rx = info_.settings[1 - d];  // what the receiver of direction d announced
  if (!rx.seen) return lim_.max_frame_size;
  return std::min(lim_.max_frame_size, std::max(kDefaultMaxFrame, rx.largest_max_frame_size));
}

ParseResult Http2Parser::feed(Http2Dir dir, std::span<const uint8_t> data, uint64_t ts,
                              std::vector<Http2Exchange>& out) {
  const int d = static_cast<int>(dir);
  Side& s = side_[d];
  cur_ts_ = ts;
  const bool was_stopped = info_.stopped[d];
  size_t parsed = 0;
  if (s.phase == Phase::Preface || s.phase == Phase::Start || s.phase == Phase::Resync) {
    look_for_start(d, data, out, parsed);
  } else {
    run(d, data.data(), data.size(), out, parsed);
  }
  ParseStatus st = parsed ? ParseStatus::Done : ParseStatus::Ignored;
  if (!was_stopped && info_.stopped[d]) st = ParseStatus::Invalid;
  return ParseResult{st, data.size()};
}

// Before the first frame of a direction, or after losing the frame
// boundary: decide where frames begin. Decisions depend on the bytes only,
// never on how they were split: a candidate we cannot judge yet is kept,
// with what follows it, for the next call.
void Http2Parser::look_for_start(int d, std::span<const uint8_t> data, std::vector<Http2Exchange>& out,
                                 size_t& parsed) {
  Side& s = side_[d];
  // The view: held bytes with data appended in place (a candidate waiting
  // for its successor is not copied again on every call), or data itself.
  const bool in_pending = !s.pending.empty();
  if (in_pending) s.pending.insert(s.pending.end(), data.begin(), data.end());
  const std::span<const uint8_t> v = in_pending ? std::span<const uint8_t>(s.pending) : data;
  auto keep_from = [&](size_t p) {
    info_.skipped_bytes[d] += p;
    if (in_pending)
      s.pending.erase(s.pending.begin(), s.pending.begin() + static_cast<std::ptrdiff_t>(p));
    else
      s.pending.assign(v.begin() + static_cast<std::ptrdiff_t>(p), v.end());
    // A big chunk appended while looking leaves a big buffer: give it back.
    const size_t window = std::max<size_t>(kHttp2Preface.size(), lim_.resync_max_frame + 2 * kHttp2FrameHeader);
    if (s.pending.capacity() > 2 * window) s.pending.shrink_to_fit();
  };
  auto start_at = [&](size_t p, bool skipped) {  // frames begin at v[p]
    if (skipped) info_.skipped_bytes[d] += p;
    std::vector<uint8_t> held;
    held.swap(s.pending);  // v keeps pointing at its bytes; frames may touch s.pending (stop())
    s.phase = Phase::Header;
    s.fh_have = 0;
    run(d, v.data() + p, v.size() - p, out, parsed);
  };
  auto resync = [&] {
    s.phase = Phase::Resync;
    if (!info_.resynced[d]) {
      info_.resynced[d] = true;
      s.hpack->reset();  // the table's earlier entries were never seen
    }
  };

  if (s.phase == Phase::Preface) {
    const size_t k = std::min(v.size(), kHttp2Preface.size());
    if (std::memcmp(v.data(), kHttp2Preface.data(), k) == 0) {
      if (k < kHttp2Preface.size()) return keep_from(0);
      info_.preface = true;
      parsed += kHttp2Preface.size();
      return start_at(k, false);
    }
    resync();  // not the start of the connection
  } else if (s.phase == Phase::Start) {
    if (v.size() < kHttp2FrameHeader) return keep_from(0);
    if (is_server_start(decode_header(v.data()), frame_cap(d))) return start_at(0, true);
    resync();
  }

  // A boundary: a plausible frame of at most resync_max_frame bytes whose
  // successor's header is plausible too.
  const std::optional<Http2Dir> dir = static_cast<Http2Dir>(d);
  const uint32_t first_max = std::min(lim_.resync_max_frame, frame_cap(d));
  size_t p = 0;
  while (v.size() - p >= kHttp2FrameHeader) {
    const FrameHeader h = decode_header(v.data() + p);
    if (!plausible(h, dir, first_max, true)) {
      p++;
      continue;
    }
    const size_t next = p + kHttp2FrameHeader + h.len;
    if (v.size() < next + kHttp2FrameHeader) return keep_from(p);  // cannot judge yet
    if (plausible(decode_header(v.data() + next), dir, frame_cap(d), false)) return start_at(p, true);
    p++;
  }
  keep_from(p);
}

void Http2Parser::run(int d, const uint8_t* p, size_t n, std::vector<Http2Exchange>& out, size_t& parsed) {
  Side& s = side_[d];
  size_t i = 0;
  for (;;) {
    if (s.phase == Phase::Stopped) {
      info_.skipped_bytes[d] += n - i;
      break;
    }
    if (s.phase == Phase::Header) {
      if (i == n) break;
      const size_t take = std::min(kHttp2FrameHeader - s.fh_have, n - i);
      std::memcpy(s.fh + s.fh_have, p + i, take);
      s.fh_have += take;
      i += take;
      if (s.fh_have < kHttp2FrameHeader) break;
      s.fh_have = 0;
      frame_begin(d, out);
      continue;
    }
    // Payload: each stage ends when its bytes are in, even with none left in this chunk.
    const size_t take = std::min<size_t>(s.left, n - i);
    if (s.stage == Stage::Prefix) {
      std::memcpy(s.fix + s.fix_have, p + i, take);
      s.fix_have += static_cast<uint32_t>(take);
    } else if (s.stage == Stage::Body && !s.skip) {
      body_bytes(d, p + i, take);
    }
    s.left -= static_cast<uint32_t>(take);
    i += take;
    if (s.left) break;  // i == n
    if (s.stage == Stage::Prefix) {
      prefix_done(d, out);
    } else if (s.stage == Stage::Body) {
      s.stage = Stage::Padding;
      s.left = s.pad;
    } else {
      frame_end(d, out);
      if (s.phase == Phase::Payload) s.phase = Phase::Header;
    }
  }
  parsed += s.phase == Phase::Stopped ? 0 : i;
}

void Http2Parser::stop(int d) {
  Side& s = side_[d];
  if (s.in_block) block_lost(d);
  s.phase = Phase::Stopped;
  info_.stopped[d] = true;
  s.pending = {};
}

// A frame header is in: check it, and set up its payload's stages.
void Http2Parser::frame_begin(int d, std::vector<Http2Exchange>& out) {
  Side& s = side_[d];
  const FrameHeader h = decode_header(s.fh);
  info_.frames[d]++;
  // A frame over the size limit is a connection error (RFC 9113 4.2): the
  // peer tears the connection down; nothing of its payload is kept.
  if (h.len > frame_cap(d)) return stop(d);
  s.len = h.len;
  s.type = h.type;
  s.flags = h.flags;
  s.sid = h.sid;
  s.frame_ts = cur_ts_;
  s.skip = false;
  s.pad = 0;
  s.fix_have = 0;
  s.entry_have = 0;
  s.phase = Phase::Payload;
  s.stage = Stage::Prefix;

  const auto type = static_cast<Http2FrameType>(h.type);
  const uint32_t padded = (h.flags & h2flag::kPadded) ? 1 : 0;
  uint32_t need = 0;  // fixed fields before the body
  bool ok = true;
  switch (type) {
    case Http2FrameType::Data:
      need = padded;
      ok = h.sid != 0;
      break;
    case Http2FrameType::Headers:
      need = padded + ((h.flags & h2flag::kPriority) ? 5 : 0);
      ok = h.sid != 0;
      break;
    case Http2FrameType::PushPromise:
      need = padded + 4;
      ok = h.sid != 0;
      break;
    case Http2FrameType::Priority:
      need = 5;
      ok = h.sid != 0 && h.len == 5;
      break;
    case Http2FrameType::RstStream:
      need = 4;
      ok = h.sid != 0 && h.len == 4;
      break;
    case Http2FrameType::Settings:
      ok = h.sid == 0 && ((h.flags & h2flag::kAck) ? h.len == 0 : h.len % 6 == 0);
      s.set_min = s.set_last = -1;
      break;
    case Http2FrameType::Ping:
      need = 8;
      ok = h.sid == 0 && h.len == 8;
      break;
    case Http2FrameType::Goaway:
      need = 8;
      ok = h.sid == 0 && h.len >= 8;
      break;
    case Http2FrameType::WindowUpdate:
      need = 4;
      ok = h.len == 4;
      break;
    case Http2FrameType::Continuation:
      ok = h.sid != 0 && s.in_block && h.sid == s.block_sid;
      break;
    default:  // unknown types are skipped (RFC 9113 4.1)
      info_.unknown_frames[d]++;
      s.skip = true;
      break;
  }
  if (need > h.len) ok = false;

  // A header block must be followed by its CONTINUATIONs and nothing else
  // (RFC 9113 6.10): anything else means the block is lost.
  if (s.in_block && type != Http2FrameType::Continuation) block_lost(d);
  if (!ok) {
    info_.malformed_frames[d]++;
    s.skip = true;
    if (type == Http2FrameType::Headers || type == Http2FrameType::PushPromise ||
        type == Http2FrameType::Continuation) {
      // Whatever the encoder put in that block changed its table.
      if (s.in_block) block_lost(d);
      else s.hpack->reset();
    }
  }
  if (s.skip) {
    s.stage = Stage::Body;
    s.left = h.len;
    return;
  }
  s.fix_need = need;
  s.left = need;

  switch (type) {
    case Http2FrameType::Data: {
      Stream* st = find(h.sid);
      if (!st && late_join() && !recently_closed(h.sid) && (d == kServer || (h.sid & 1)))
        st = open(h.sid, true, out);  // a stream that began before we looked
      if (st && st->ex.message(static_cast<Http2Dir>(d)).end_stream) {
        st = nullptr;  // after END_STREAM (RFC 9113 5.1: STREAM_CLOSED): not part of the message
        s.skip = true;
      }
      if (st) {
        touch(*st, d, kHttp2FrameHeader + h.len, 1, s.frame_ts);
        s.data_seq = st->seq;
      } else {
        info_.orphan_frames++;
        s.skip = true;
      }
      break;
    }
    case Http2FrameType::Continuation:
      s.block_wire += kHttp2FrameHeader + h.len;
      s.block_frames++;
      if (++s.block_conts > lim_.max_continuations && !s.block_overflow) {
        s.block_overflow = true;  // a CONTINUATION flood: stop keeping the block
        std::vector<uint8_t>().swap(s.block);
      }
      break;
    case Http2FrameType::Priority:
    case Http2FrameType::RstStream:
    case Http2FrameType::WindowUpdate:
      if (h.sid) {
        if (Stream* st = find(h.sid)) touch(*st, d, kHttp2FrameHeader + h.len, 1, s.frame_ts);
      }
      break;
    default:
      break;
  }
}

// The fixed fields are in: padding known, the body's length follows.
void Http2Parser::prefix_done(int d, std::vector<Http2Exchange>& out) {
  Side& s = side_[d];
  const auto type = static_cast<Http2FrameType>(s.type);
  // PADDED exists on DATA, HEADERS and PUSH_PROMISE only (elsewhere the bit means nothing).
  const bool padded = (s.flags & h2flag::kPadded) && (type == Http2FrameType::Data || type == Http2FrameType::Headers ||
                                                      type == Http2FrameType::PushPromise);
  const uint32_t pad = padded ? s.fix[0] : 0;
  const uint32_t rest = s.len - s.fix_need;
  s.stage = Stage::Body;
  if (pad > rest) {  // padding as long as the payload or longer (RFC 9113 6.1): skip the frame
    info_.malformed_frames[d]++;
    s.skip = true;
    s.left = rest;
    if (type == Http2FrameType::Headers || type == Http2FrameType::PushPromise) s.hpack->reset();
    return;
  }
  s.pad = pad;
  s.left = rest - pad;
  const uint8_t* f = s.fix + (padded ? 1 : 0);
  switch (type) {
    case Http2FrameType::Headers:
    case Http2FrameType::PushPromise:
      s.in_block = true;
      s.block_push = type == Http2FrameType::PushPromise;
      s.block_sid = s.sid;
      s.block_promised = s.block_push ? be32(f) & 0x7fffffffu : 0;
      s.block_end_stream = !s.block_push && (s.flags & h2flag::kEndStream);
      s.block_overflow = false;
      s.block_conts = 0;
      s.block_frames = 1;
      s.block_wire = kHttp2FrameHeader + s.len;
      s.block_ts = s.frame_ts;
      s.block.clear();
      break;
    case Http2FrameType::RstStream:
      if (Stream* st = find(s.sid)) {
        st->ex.reset = true;
        st->ex.reset_by = static_cast<Http2Dir>(d);
        st->ex.rst_error = be32(s.fix);
        emit(s.sid, out);
      } else {
        info_.orphan_frames++;
      }
      break;
    case Http2FrameType::Ping:
      info_.pings[d]++;
      break;
    case Http2FrameType::Goaway:
      info_.goaway[d] = true;
      info_.goaway_last_stream[d] = be32(s.fix) & 0x7fffffffu;
      info_.goaway_error[d] = be32(s.fix + 4);
      info_.goaway_debug[d].clear();
      break;
    default:
      break;
  }
}

void Http2Parser::body_bytes(int d, const uint8_t* p, size_t n) {
  Side& s = side_[d];
  switch (static_cast<Http2FrameType>(s.type)) {
    case Http2FrameType::Data: {
      Stream* st = data_stream(d);
      if (!st) return;
      Http2Message& m = st->ex.message(static_cast<Http2Dir>(d));
      m.body_size += n;
      // Keep what fits (so that where the chunks were cut does not matter),
      // and nothing once a byte was not kept: the kept body stays a prefix.
      if (!m.body_truncated) {
        const size_t want = std::min(n, lim_.max_body_kept - std::min(lim_.max_body_kept, m.body.size()));
        const size_t take = std::min(want, lim_.max_held_bytes - std::min(lim_.max_held_bytes, held_));
        if (take < want) st->ex.memory_capped = true;
        if (take) {
          keep(*st, take);
          m.body.append(reinterpret_cast<const char*>(p), take);
        }
      }
      m.body_truncated = m.body_size > m.body.size();
      m.ts_last_ns = cur_ts_;
      if (st->ex.tap) {
        const size_t kept = st->ex.tap->data(static_cast<Http2Dir>(d), {p, n}, lim_.max_held_bytes - std::min(lim_.max_held_bytes, held_));
        held_ += kept;
        st->held += kept;
      }
      return;
    }
    case Http2FrameType::Headers:
    case Http2FrameType::PushPromise:
    case Http2FrameType::Continuation:
      if (s.block_overflow) return;
      if (s.block.size() + n > lim_.max_header_block_bytes) {
        s.block_overflow = true;  // too big to keep: the block is lost
        std::vector<uint8_t>().swap(s.block);
        return;
      }
      s.block.insert(s.block.end(), p, p + n);
      return;
    case Http2FrameType::Settings:
      for (size_t i = 0; i < n; i++) {
        s.entry[s.entry_have++] = p[i];
        if (s.entry_have == 6) {
          settings_entry(d, s.entry);
          s.entry_have = 0;
        }
      }
      return;
    case Http2FrameType::Goaway: {
      std::string& dbg = info_.goaway_debug[d];
      const size_t take = std::min(n, lim_.max_goaway_debug - std::min(lim_.max_goaway_debug, dbg.size()));
      dbg.append(reinterpret_cast<const char*>(p), take);
      return;
    }
    default:
      return;
  }
}

void Http2Parser::frame_end(int d, std::vector<Http2Exchange>& out) {
  Side& s = side_[d];
  if (s.skip) return;
  switch (static_cast<Http2FrameType>(s.type)) {
    case Http2FrameType::Data:
      if (s.flags & h2flag::kEndStream) {
        if (Stream* st = data_stream(d)) end_stream(*st, d, out);
      }
      break;
    case Http2FrameType::Headers:
    case Http2FrameType::PushPromise:
    case Http2FrameType::Continuation:
      if (s.flags & h2flag::kEndHeaders) block_done(d, out);
      break;
    case Http2FrameType::Settings:
      if (s.flags & h2flag::kAck) {
        settings_ack(d);
      } else {
        info_.settings[d].seen = true;
        auto& q = s.unacked;
        if (q.size() >= kMaxUnackedSettings) q.erase(q.begin());
        q.emplace_back(s.set_min, s.set_last);
      }
      break;
    case Http2FrameType::Goaway:
      goaway(d, out);
      break;
    default:
      break;
  }
}

void Http2Parser::settings_entry(int d, const uint8_t* e) {
  Http2Settings& st = info_.settings[d];
  st.seen = true;
  const uint16_t id = static_cast<uint16_t>(e[0] << 8 | e[1]);
  const uint32_t v = be32(e + 2);
  switch (id) {
    case 0x1:  // HEADER_TABLE_SIZE
      st.header_table_size = v;
      side_[d].set_min = side_[d].set_min < 0 ? v : std::min<int64_t>(side_[d].set_min, v);
      side_[d].set_last = v;
      break;
    case 0x2:
      st.enable_push = v;
      break;
    case 0x3:
      st.max_concurrent_streams = v;
      break;
    case 0x4:
      st.initial_window_size = v;
      break;
    case 0x5:  // MAX_FRAME_SIZE: 2^14 to 2^24-1 (RFC 9113 6.5.2); outside, a connection error we ignore
      if (v < kDefaultMaxFrame || v > kMaxFrameSetting) {
        info_.malformed_frames[d]++;
      } else {
        st.max_frame_size = v;
        st.largest_max_frame_size = std::max(st.largest_max_frame_size, v);
      }
      break;
    case 0x6:
      st.max_header_list_size = v;
      break;
    default:
      break;
  }
}

// An ACK sent in direction d acknowledges the oldest SETTINGS the other side
// sent; a HEADER_TABLE_SIZE there bounds the encoder of direction d.
void Http2Parser::settings_ack(int d) {
  auto& q = side_[1 - d].unacked;
  if (q.empty()) return;
  const auto [lo, last] = q.front();
  q.erase(q.begin());
  if (last >= 0) side_[d].hpack->settings_acked(static_cast<uint32_t>(lo), static_cast<uint32_t>(last));
}

void Http2Parser::goaway(int d, std::vector<Http2Exchange>& out) {
  // Streams the receiver of the GOAWAY opened above its last stream id were
  // not (and will not be) processed (RFC 9113 6.8).
  const uint32_t last = info_.goaway_last_stream[d];
  const uint32_t parity = d == kServer ? 1 : 0;  // client streams are odd
  std::vector<std::pair<uint64_t, uint32_t>> cut;
  for (const auto& [sid, st] : streams_)
    if ((sid & 1) == parity && sid > last) cut.emplace_back(st.seq, sid);
  std::sort(cut.begin(), cut.end());
  for (const auto& [seq, sid] : cut) {
    Stream* st = find(sid);
    st->ex.goaway = true;
    st->ex.goaway_error = info_.goaway_error[d];
    emit(sid, out);
  }
}

// The header block in progress is lost (interrupted, cut by a gap or a
// stop): its fields are gone and the encoder's table is no longer known.
void Http2Parser::block_lost(int d) {
  Side& s = side_[d];
  s.in_block = false;
  std::vector<uint8_t>().swap(s.block);
  s.hpack->reset();
  info_.header_overflows[d]++;
  if (Stream* st = find(s.block_sid)) st->ex.header_overflow = true;
}

void Http2Parser::block_done(int d, std::vector<Http2Exchange>& out) {
  Side& s = side_[d];
  s.in_block = false;
  HpackResult& r = s.decoded;
  const bool overflow = s.block_overflow;
  if (overflow) {
    r = HpackResult{};
    s.hpack->reset();  // what the block did to the table is unknown
    info_.header_overflows[d]++;
  } else {
    s.hpack->decode(s.block, lim_.max_header_list_bytes, r);
    if (r.error) info_.hpack_errors[d]++;
  }
  if (s.block.capacity() > 16 * 1024) std::vector<uint8_t>().swap(s.block);  // a big block's buffer is not kept
  s.block.clear();

  Stream* st = nullptr;
  int target = d;
  if (s.block_push) {
    // PUSH_PROMISE: the block is the promised request; the pushed stream is
    // even (server-initiated), its client half closed from the start.
    const uint32_t promised = s.block_promised;
    if (Stream* assoc = find(s.block_sid)) touch(*assoc, d, s.block_wire, s.block_frames, s.block_ts);
    // (Decoded all the same: the block changed the encoder's table.)
    if (d != kServer || !(s.block_sid & 1) || promised == 0 || (promised & 1) || find(promised)) {
      info_.malformed_frames[d]++;
      r.fields.clear();
      return;
    }
    st = open(promised, false, out);
    if (!st) return r.fields.clear();
    st->ex.pushed = true;
    st->ex.promised_on = s.block_sid;
    touch(*st, kClient, 0, 0, s.block_ts);
    target = kClient;
  } else {
    st = find(s.block_sid);
    if (!st && !recently_closed(s.block_sid)) {
      // A client opens a stream with HEADERS; from the server, it can only be
      // a stream we did not see open (joined late).
      if (d == kClient && (s.block_sid & 1))
        st = open(s.block_sid, false, out);
      else if (d == kServer && late_join())
        st = open(s.block_sid, true, out);
    }
    // A header block after END_STREAM in that direction belongs to no message.
    if (!st || st->ex.message(static_cast<Http2Dir>(d)).end_stream) {
      info_.orphan_frames++;
      r.fields.clear();
      return;
    }
    touch(*st, d, s.block_wire, s.block_frames, s.block_ts);
  }
  if (overflow) st->ex.header_overflow = true;
  apply_block(*st, target, r, s.block_push ? true : s.block_end_stream, out);
}

// A decoded header block on stream `st` in direction d: request headers,
// response headers (or an interim 1xx), or trailers.
void Http2Parser::apply_block(Stream& st, int d, HpackResult& r, bool end, std::vector<Http2Exchange>& out) {
  Http2Exchange& ex = st.ex;
  Http2Message& m = ex.message(static_cast<Http2Dir>(d));
  if (r.unknown) ex.hpack_unknown = true;
  if (r.error) ex.hpack_error = true;
  if (r.dropped) m.headers_truncated = true;
  m.header_bytes += r.list_bytes;

  bool trailers = m.has_headers;
  if (d == kServer && !m.has_headers) {
    int status = 0;
    for (const Header& h : r.fields) {
      if (h.name != ":status") continue;
      // Three digits, 100 to 999 (RFC 9110 15); anything else is no status.
      if (h.value.size() == 3 && h.value[0] >= '1' &&
          std::all_of(h.value.begin(), h.value.end(), [](char c) { return c >= '0' && c <= '9'; }))
        status = std::stoi(h.value);
      break;
    }
    if (status >= 100 && status < 200) {  // interim: the final response follows
      if (ex.interim.size() < lim_.max_interim) ex.interim.push_back(status);
      if (end) end_stream(st, d, out);
      return;
    }
    // No :status with END_STREAM, before any response headers: the trailers
    // of a response whose headers we missed.
    trailers = status == 0 && end && ex.partial;
    if (!trailers) ex.status = status;
  }
  std::vector<Header>& list = trailers ? m.trailers : m.headers;
  for (Header& h : r.fields) {
    if (!h.name.empty() && h.name[0] == ':') {
      if (trailers || d != kClient) continue;  // :status was read above; pseudo-fields in trailers are malformed
      std::string* slot = h.name == ":method"      ? &ex.method
                          : h.name == ":path"      ? &ex.path
                          : h.name == ":authority" ? &ex.authority
                          : h.name == ":scheme"    ? &ex.scheme
                          : h.name == ":protocol"  ? &ex.protocol
                                                   : nullptr;
      if (!slot || !slot->empty()) continue;
      if (keep(st, h.value.size()))
        *slot = std::move(h.value);
      else
        m.headers_truncated = true;
      continue;
    }
    if (list.size() >= lim_.max_headers || !keep(st, h.name.size() + h.value.size())) {
      m.headers_truncated = true;
      continue;
    }
    list.push_back(std::move(h));
  }
  r.fields.clear();
  if (!trailers) {
    m.has_headers = true;
    if (taps_ && !ex.tap) ex.tap = taps_(ex);
  }
  if (end) end_stream(st, d, out);
}

// The stream the DATA frame in progress was matched with when its header
// came: while its payload streams in, the other direction may have ended
// that stream (RST_STREAM), or opened another with the same id.
void Http2Parser::open_upgraded(std::string method, std::string path, std::string authority,
                                std::vector<Header> headers, uint64_t body_size, uint64_t ts_first_ns,
                                uint64_t ts_last_ns) {
  std::vector<Http2Exchange> none;
  Stream* st = open(1, false, none);
  if (!st) return;
  Http2Exchange& ex = st->ex;
  ex.method = std::move(method);
  ex.path = std::move(path);
  ex.authority = std::move(authority);
  ex.scheme = "http";
  if (headers.size() > lim_.max_headers) {
    headers.resize(lim_.max_headers);
    ex.request.headers_truncated = true;
  }
  ex.request.headers = std::move(headers);
  ex.request.has_headers = true;
  ex.request.end_stream = true;
  ex.request.body_size = body_size;
  ex.request.ts_first_ns = ts_first_ns;
  ex.request.ts_last_ns = ts_last_ns;
  if (taps_) ex.tap = taps_(ex);
}

Http2Parser::Stream* Http2Parser::data_stream(int d) {
  Stream* st = find(side_[d].sid);
  return st && st->seq == side_[d].data_seq ? st : nullptr;
}

Http2Parser::Stream* Http2Parser::find(uint32_t sid) {
  auto it = streams_.find(sid);
  return it == streams_.end() ? nullptr : &it->second;
}

bool Http2Parser::recently_closed(uint32_t sid) const {
  return std::find(std::begin(closed_), std::end(closed_), sid) != std::end(closed_);
}

bool Http2Parser::late_join() const { return !info_.preface || info_.resynced[0] || info_.resynced[1]; }

Http2Parser::Stream* Http2Parser::open(uint32_t sid, bool partial, std::vector<Http2Exchange>& out) {
  if (lim_.max_streams == 0) return nullptr;
  if (streams_.size() >= lim_.max_streams) {  // the oldest goes out, flagged
    const uint32_t victim = order_.begin()->second;
    streams_.at(victim).ex.evicted = true;
    info_.evicted_streams++;
    emit(victim, out);
  }
  Stream& st = streams_[sid];
  st.seq = seq_++;
  st.ex.stream_id = sid;
  st.ex.partial = partial;
  order_.emplace(st.seq, sid);
  info_.streams++;
  return &st;
}

void Http2Parser::touch(Stream& st, int d, uint64_t wire, uint32_t frames, uint64_t first_ts) {
  Http2Message& m = st.ex.message(static_cast<Http2Dir>(d));
  m.wire_bytes += wire;
  m.frames += frames;
  if (!m.ts_first_ns) m.ts_first_ns = first_ts;
  m.ts_last_ns = cur_ts_;
}

bool Http2Parser::keep(Stream& st, size_t n) {
  if (held_ + n > lim_.max_held_bytes) {
    st.ex.memory_capped = true;
    return false;
  }
  held_ += n;
  st.held += n;
  return true;
}

void Http2Parser::end_stream(Stream& st, int d, std::vector<Http2Exchange>& out) {
  Http2Exchange& ex = st.ex;
  ex.message(static_cast<Http2Dir>(d)).end_stream = true;
  ex.message(static_cast<Http2Dir>(d)).ts_last_ns = cur_ts_;
  if (ex.tap) ex.tap->end(static_cast<Http2Dir>(d));
  // A stream we joined late whose request side never showed itself had
  // closed it before we looked: the response's end is the stream's end.
  const bool done = (ex.request.end_stream && ex.response.end_stream) ||
                    (ex.partial && ex.response.end_stream && ex.request.frames == 0);
  if (done) emit(ex.stream_id, out);
}

void Http2Parser::emit(uint32_t sid, std::vector<Http2Exchange>& out) {
  auto it = streams_.find(sid);
  if (it == streams_.end()) return;
  held_ -= it->second.held;
  order_.erase(it->second.seq);
  out.push_back(std::move(it->second.ex));
  streams_.erase(it);
  closed_[closed_next_] = sid;
  closed_next_ = (closed_next_ + 1) % std::size(closed_);
}

void Http2Parser::on_gap(Http2Dir dir, uint64_t len) {
  const int d = static_cast<int>(dir);
  Side& s = side_[d];
  if (len == 0 || s.phase == Phase::Stopped) return;
  if (s.in_block) block_lost(d);
  for (auto& [sid, st] : streams_) st.ex.gap = true;
  // Whatever was lost may have held header blocks: the table is unknown.
  s.hpack->reset();
  s.pending.clear();
  s.fh_have = 0;
  s.phase = Phase::Resync;
  info_.resynced[d] = true;
}

void Http2Parser::on_close(uint64_t ts, std::vector<Http2Exchange>& out) {
  cur_ts_ = ts;
  for (int d = 0; d < 2; d++) {
    Side& s = side_[d];
    if (s.in_block) {
      if (Stream* st = find(s.block_sid)) st->ex.header_overflow = true;
      s.in_block = false;
      std::vector<uint8_t>().swap(s.block);
    }
    std::vector<uint8_t>().swap(s.pending);
  }
  while (!order_.empty()) {
    const uint32_t sid = order_.begin()->second;
    streams_.at(sid).ex.incomplete = true;
    emit(sid, out);
  }
}

size_t Http2Parser::buffered_bytes() const {
  return side_[0].pending.size() + side_[1].pending.size() + side_[0].block.size() + side_[1].block.size();
}

size_t Http2Parser::memory_bytes() const {
  // Per stream: the map node and bucket, the order index node, the exchange.
  constexpr size_t kPerStream = sizeof(Stream) + 64 + 64;
  size_t n = sizeof(*this) + streams_.size() * kPerStream + held_;
  for (const auto& [sid, st] : streams_)
    if (st.ex.tap) n += st.ex.tap->memory_bytes();
  for (const Side& s : side_) {
    n += heap_bytes(s.pending.capacity()) + heap_bytes(s.block.capacity()) + s.hpack->memory_bytes() +
         heap_bytes(s.unacked.capacity() * sizeof(s.unacked[0]));
  }
  for (const std::string& dbg : info_.goaway_debug) n += string_heap_bytes(dbg);
  return n;
}

bool looks_like_http2(std::span<const uint8_t> b, std::optional<Http2Dir> dir) {
  const size_t n = b.size();
  const size_t k = std::min(n, kHttp2Preface.size());
  if (k >= 14 && std::memcmp(b.data(), kHttp2Preface.data(), k) == 0) return true;
  size_t p = 0, count = 0;
  FrameHeader first{};
  while (n - p >= kHttp2FrameHeader) {
    const FrameHeader h = decode_header(b.data() + p);
    if (!plausible(h, dir, count == 0 ? kDefaultMaxFrame : kMaxFrameSetting, count == 0)) return false;
    if (count == 0) first = h;
    count++;
    p += kHttp2FrameHeader + h.len;
    if (p > n) break;
  }
  if (count >= 2) return true;
  return count == 1 && p == n && is_server_start(first, kDefaultMaxFrame);
}

}  // namespace tapwire::proto
