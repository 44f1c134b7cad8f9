// WebSocket framing (RFC 6455 5) and permessage-deflate (RFC 7692 7.2).
//
// A frame header is parsed when all of it is there (it stays unconsumed
// until then: 14 bytes at most); payload bytes are consumed as they come,
// unmasked on the fly in small pieces and, for a compressed message, fed to
// a raw inflate stream whose output is counted and kept up to the cap.
// Nothing is allocated from a length read off the wire.
#include "websocket.hpp"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "body/body_text.hpp"

namespace tapwire::proto {

namespace {

constexpr size_t kUnmaskBuf = 4096;  // payload unmasked this many bytes at a time before inflating
constexpr size_t kInflateBuf = 16 * 1024;  // inflate output per step
constexpr uint64_t kMaxControlPayload = 125;  // RFC 6455 5.5
// RFC 7692 7.2.2: the sender removes these 4 bytes (an empty stored block,
// the end of a sync flush) from every compressed message; the receiver
// appends them again before inflating.
constexpr uint8_t kDeflateTail[4] = {0x00, 0x00, 0xff, 0xff};

void flag(WsMessage& m, std::string why) {
  m.protocol_error = true;
  if (m.error.empty()) m.error = std::move(why);
}

// Status codes a close frame may carry (RFC 6455 7.4.1, 7.4.2 and the IANA
// registry: 1012-1014 were added later). 1005, 1006 and 1015 are for APIs,
// never on the wire.
bool valid_close_code(uint16_t c) {
  return (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999);
}

}  // namespace

const char* ws_opcode_name(uint8_t opcode) {
  switch (opcode) {
    case kWsContinuation: return "continuation";
    case kWsText: return "text";
    case kWsBinary: return "binary";
    case kWsClose: return "close";
    case kWsPing: return "ping";
    case kWsPong: return "pong";
    default: return "reserved";
  }
}

size_t ws_message_heap_bytes(const WsMessage& m) {
  return string_heap_bytes(m.payload) + string_heap_bytes(m.close_reason) + string_heap_bytes(m.error);
}

// A raw inflate stream (windowBits -15: the largest window, which decodes
// whatever *_max_window_bits the peers agreed) whose allocations are counted
// for memory_bytes(). Held by pointer: zlib's state points back at the
// z_stream, which therefore must not move.
struct WebSocketParser::Inflater {
  z_stream z{};
  bool init = false;
  size_t heap = 0;

  Inflater() = default;
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;
  ~Inflater() {
    if (init) inflateEnd(&z);
  }

  bool start() {
    if (init) return inflateReset(&z) == Z_OK;
    z = z_stream{};
    z.zalloc = &Inflater::alloc;
    z.zfree = &Inflater::release;
    z.opaque = this;
    init = inflateInit2(&z, -15) == Z_OK;
    return init;
  }

  // Each block carries its size in front of it (16 bytes keep malloc's alignment).
  static voidpf alloc(voidpf opaque, uInt items, uInt size) {
    if (size != 0 && items > SIZE_MAX / size - 16) return Z_NULL;
    const size_t n = size_t{items} * size;
    auto* base = static_cast<uint8_t*>(std::malloc(n + 16));
    if (!base) return Z_NULL;
    std::memcpy(base, &n, sizeof n);
    static_cast<Inflater*>(opaque)->heap += heap_bytes(n + 16);
    return base + 16;
  }
  static void release(voidpf opaque, voidpf p) {
    if (!p) return;
    uint8_t* base = static_cast<uint8_t*>(p) - 16;
    size_t n;
    std::memcpy(&n, base, sizeof n);
    static_cast<Inflater*>(opaque)->heap -= heap_bytes(n + 16);
    std::free(base);
  }
};

WebSocketParser::WebSocketParser(Sender sender, WsDeflate deflate, WsLimits limits)
    : sender_(sender), deflate_(deflate), lim_(limits) {}
WebSocketParser::~WebSocketParser() = default;
WebSocketParser::WebSocketParser(WebSocketParser&&) noexcept = default;
WebSocketParser& WebSocketParser::operator=(WebSocketParser&&) noexcept = default;

bool WebSocketParser::takeover() const {
  return sender_ == Sender::Client ? !deflate_.client_no_context_takeover : !deflate_.server_no_context_takeover;
}

ParseResult WebSocketParser::feed(std::span<const uint8_t> data, uint64_t ts, std::vector<WsMessage>& out) {
  hand_out_ready(out);
  const uint8_t* const d = data.data();
  const size_t n = data.size();
  if (st_ == State::Stopped) return ParseResult{n ? ParseStatus::Ignored : ParseStatus::NeedMoreData, n};

  size_t pos = 0;
  for (;;) {
    if (st_ == State::Payload) {
      if (remaining_ == 0) {
        end_frame(ts, out);
        continue;
      }
      if (pos == n) break;
      const size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, n - pos));
      payload(d + pos, take);
      current().ts_last_ns = ts;
      pos += take;
      remaining_ -= take;
      continue;
    }
    // Header: 2 bytes, then 2 or 8 of extended length, then 4 of mask key.
    const uint8_t* h = d + pos;
    const size_t avail = n - pos;
    size_t need = 2;
    if (avail >= 2) {
      const uint8_t len7 = h[1] & 0x7f;
      need += (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((h[1] & 0x80) ? 4 : 0);
    }
    if (avail < need) {
      if (avail > 0 && !partial_header_) {
        partial_header_ = true;
        partial_ts_ = ts;
      }
      break;
    }
    const uint64_t first_ts = partial_header_ ? partial_ts_ : ts;
    partial_header_ = false;
    pos += need;
    if (!begin_frame(h, need, first_ts, out)) {
      // The framing is lost: everything after this header is skipped.
      return ParseResult{ParseStatus::Invalid, n};
    }
    current().ts_last_ns = ts;
  }
  return ParseResult{pos == 0 ? ParseStatus::NeedMoreData : ParseStatus::Done, pos};
}

bool WebSocketParser::begin_frame(const uint8_t* h, size_t header_len, uint64_t ts, std::vector<WsMessage>& out) {
  frames_++;
  const bool fin = h[0] & 0x80;
  const uint8_t rsv = h[0] & 0x70;
  const uint8_t opcode = h[0] & 0x0f;
  const bool masked = h[1] & 0x80;
  const uint8_t len7 = h[1] & 0x7f;
  uint64_t len = len7;
  bool minimal = true;  // RFC 6455 5.2: "the minimal number of bytes MUST be used to encode the length"
  if (len7 == 126) {
    len = uint64_t{h[2]} << 8 | h[3];
    minimal = len >= 126;
  } else if (len7 == 127) {
    len = 0;
    for (int i = 2; i < 10; i++) len = len << 8 | h[i];
    minimal = len > 0xffff;
  }
  const bool control = opcode & 0x08;

  if ((len >> 63) != 0 || len > lim_.max_frame_payload) {
    std::string why = (len >> 63) != 0 ? "frame length with its most significant bit set (RFC 6455 5.2)"
                                        : "frame length " + std::to_string(len) + " above the cap of " +
                                              std::to_string(lim_.max_frame_payload) + " bytes";
    if (opcode == kWsContinuation && msg_active_) {  // the last frame of the message in progress, as far as it goes
      msg_.frames++;
      msg_.wire_size += header_len;
    } else {
      if (msg_active_) {
        msg_.incomplete = true;
        emit(msg_, out);
      }
      msg_ = WsMessage{};
      msg_.from_client = sender_ == Sender::Client;
      msg_.opcode = opcode;
      msg_.frames = 1;
      msg_.wire_size = header_len;
      msg_.ts_first_ns = ts;
    }
    flag(msg_, std::move(why));
    msg_.incomplete = true;
    msg_.ts_last_ns = ts;
    emit(msg_, out);
    msg_active_ = false;
    stop();
    return false;
  }

  fin_ = fin;
  control_ = control;
  masked_ = masked;
  if (masked) std::memcpy(mask_, h + header_len - 4, 4);
  remaining_ = len;
  mask_off_ = 0;
  st_ = State::Payload;

  WsMessage* m;
  if (control) {
    ctl_ = WsMessage{};
    ctl_.from_client = sender_ == Sender::Client;
    ctl_.opcode = opcode;
    ctl_.ts_first_ns = ts;
    keep_ctl_ = true;
    m = &ctl_;
    if (opcode > kWsPong) flag(ctl_, "reserved control opcode " + std::to_string(opcode));
    if (!fin) flag(ctl_, "fragmented control frame");
    if (len > kMaxControlPayload) flag(ctl_, "control frame payload of " + std::to_string(len) + " bytes, over 125");
    if (rsv) flag(ctl_, "RSV bits set on a control frame");
  } else if (opcode == kWsContinuation) {
    if (!msg_active_) {
      // What it continues began before the capture (or was lost): a
      // message of its own, of unknown type.
      msg_ = WsMessage{};
      msg_.from_client = sender_ == Sender::Client;
      msg_.opcode = kWsContinuation;
      msg_.ts_first_ns = ts;
      msg_active_ = true;
      keep_msg_ = true;
      inflating_ = undecodable_ = stream_end_ = false;
      flag(msg_, "continuation frame with no message to continue");
    }
    m = &msg_;
    if (rsv & 0x40) flag(msg_, "RSV1 set on a continuation frame (RFC 7692 6.1: the first frame only)");
    if (rsv & 0x30) flag(msg_, "RSV2/RSV3 set: no extension agreed defines them");
  } else {
    if (msg_active_) {
      // A new message before the last frame of the previous one: that one
      // is over, as far as it got.
      msg_.incomplete = true;
      flag(msg_, "a new message began before this one's last frame");
      if (inflating_) stop_inflate(nullptr, false);
      emit(msg_, out);
    }
    msg_ = WsMessage{};
    msg_.from_client = sender_ == Sender::Client;
    msg_.opcode = opcode;
    msg_.ts_first_ns = ts;
    msg_active_ = true;
    keep_msg_ = true;
    inflating_ = undecodable_ = stream_end_ = false;
    m = &msg_;
    if (opcode != kWsText && opcode != kWsBinary) flag(msg_, "reserved opcode " + std::to_string(opcode));
    if (rsv & 0x40) {
      if (deflate_.enabled && (opcode == kWsText || opcode == kWsBinary)) {
        msg_.compressed = true;
        start_inflate();
      } else {
        flag(msg_, "RSV1 set without permessage-deflate agreed");
      }
    }
    if (rsv & 0x30) flag(msg_, "RSV2/RSV3 set: no extension agreed defines them");
  }
  m->frames++;
  m->wire_size += header_len;
  if (!minimal) flag(*m, "frame length not in its shortest form");
  if (sender_ == Sender::Client && !masked) flag(*m, "client frame not masked (RFC 6455 5.1)");
  if (sender_ == Sender::Server && masked) flag(*m, "server frame masked (RFC 6455 5.1)");
  return true;
}

void WebSocketParser::keep(WsMessage& m, const uint8_t* p, size_t n) {
  m.decoded_size += n;
  const bool keeping = &m == &ctl_ ? keep_ctl_ : keep_msg_;
  const size_t room = lim_.max_message_kept - std::min(lim_.max_message_kept, m.payload.size());
  const size_t take = keeping ? std::min(n, room) : 0;
  if (take < n) m.truncated = true;
  m.payload.append(reinterpret_cast<const char*>(p), take);
}

void WebSocketParser::payload(const uint8_t* p, size_t n) {
  WsMessage& m = current();
  m.wire_size += n;
  m.payload_size += n;
  const bool inflate = !control_ && msg_.compressed;
  if (inflate && !inflating_) {  // decompression stopped: the rest is counted only
    mask_off_ += n;
    return;
  }
  if (!inflate && !masked_) {
    keep(m, p, n);
    mask_off_ += n;
    return;
  }
  if (!inflate) {
    // Bytes beyond what is kept need no unmasking: count them only.
    const bool keeping = control_ ? keep_ctl_ : keep_msg_;
    const size_t room = keeping ? lim_.max_message_kept - std::min(lim_.max_message_kept, m.payload.size()) : 0;
    const size_t take = std::min(n, room);
    const size_t at = m.payload.size();
    m.payload.resize(at + take);
    char* o = m.payload.data() + at;
    for (size_t i = 0; i < take; i++) o[i] = static_cast<char>(p[i] ^ mask_[(mask_off_ + i) & 3]);
    m.decoded_size += n;
    if (take < n) m.truncated = true;
    mask_off_ += n;
    return;
  }
  uint8_t buf[kUnmaskBuf];
  while (n > 0 && inflating_) {
    const size_t k = std::min(n, kUnmaskBuf);
    const uint8_t* in = p;
    if (masked_) {
      for (size_t i = 0; i < k; i++) buf[i] = p[i] ^ mask_[(mask_off_ + i) & 3];
      in = buf;
    }
    inflate_bytes(in, k);
    p += k;
    n -= k;
    mask_off_ += k;
  }
  mask_off_ += n;  // what is left after decompression stopped
}

void WebSocketParser::end_frame(uint64_t ts, std::vector<WsMessage>& out) {
  st_ = State::Header;
  if (control_) {
    ctl_.ts_last_ns = ts;
    emit(ctl_, out);
    control_ = false;
    return;
  }
  msg_.ts_last_ns = ts;
  if (!fin_) return;  // more frames to come
  if (msg_.compressed && inflating_) finish_inflate();
  if (msg_.opcode == kWsText) {
    // RFC 6455 8.1: text is UTF-8 (what is kept may end inside a character).
    const auto* p = reinterpret_cast<const uint8_t*>(msg_.payload.data());
    if (!is_utf8({p, msg_.payload.size()}, msg_.truncated || msg_.gap || undecodable_))
      flag(msg_, "text message not UTF-8");
  }
  emit(msg_, out);
  msg_active_ = false;
  inflating_ = false;
}

void WebSocketParser::hand_out_ready(std::vector<WsMessage>& out) {
  for (WsMessage& m : ready_) {
    if (m.protocol_error) protocol_errors_++;
    out.push_back(std::move(m));
  }
  ready_.clear();
}

void WebSocketParser::emit(WsMessage& m, std::vector<WsMessage>& out) {
  if (m.opcode == kWsClose && !m.payload.empty()) {
    // Status code (2 bytes, big-endian) and a UTF-8 reason (RFC 6455 5.5.1).
    const std::string& p = m.payload;
    if (p.size() >= 2) {
      m.close_code = static_cast<uint16_t>(static_cast<uint8_t>(p[0]) << 8 | static_cast<uint8_t>(p[1]));
      m.close_reason.assign(p, 2);
      if (!valid_close_code(m.close_code))
        flag(m, "close status code " + std::to_string(m.close_code) + " not allowed on the wire");
      const auto* r = reinterpret_cast<const uint8_t*>(m.close_reason.data());
      if (!is_utf8({r, m.close_reason.size()}, m.truncated || m.gap || m.incomplete)) flag(m, "close reason not UTF-8");
    }
    std::string().swap(m.payload);
  }
  if (m.opcode == kWsClose && m.payload_size == 1 && !m.incomplete && !m.gap)
    flag(m, "close payload of 1 byte: a status code has 2");
  if (m.decoded_size > m.payload.size() && m.opcode != kWsClose) m.truncated = true;
  if (m.protocol_error && &out != &ready_) protocol_errors_++;  // ready_: counted when handed out
  out.push_back(std::move(m));
  m = WsMessage{};
}

void WebSocketParser::start_inflate() {
  if (takeover() && ctx_lost_) {
    undecodable_ = true;
    msg_.truncated = true;
    msg_.error = "not decompressed: an earlier message of this direction was not, and this one may refer to it";
    return;
  }
  if (!inflater_) inflater_ = std::make_unique<Inflater>();
  // Without context takeover each message is a fresh stream (RFC 7692
  // 7.1.1); after a message left unfinished the context is unusable anyway.
  const bool fresh = !inflater_->init || !takeover() || reset_next_;
  if (fresh && !inflater_->start()) {
    undecodable_ = true;
    msg_.truncated = true;
    msg_.error = "not decompressed: cannot initialise the inflater";
    return;
  }
  reset_next_ = false;
  inflating_ = true;
}

void WebSocketParser::inflate_bytes(const uint8_t* p, size_t n) {
  if (stream_end_) return;  // after a final block: the rest of the message is not deflate data
  z_stream& z = inflater_->z;
  z.next_in = const_cast<Bytef*>(p);
  z.avail_in = static_cast<uInt>(n);  // n <= kUnmaskBuf, or the 4-byte tail
  uint8_t out[kInflateBuf];
  for (;;) {
    z.next_out = out;
    z.avail_out = sizeof out;
    const int r = inflate(&z, Z_SYNC_FLUSH);
    const size_t produced = sizeof out - z.avail_out;
    if (produced > 0) {
      if (msg_.decoded_size + produced > lim_.max_inflate) {  // a bomb, or just too big to decode
        keep(msg_, out, static_cast<size_t>(lim_.max_inflate - msg_.decoded_size));
        stop_inflate(nullptr, false);
        return;
      }
      keep(msg_, out, produced);
    }
    if (r == Z_STREAM_END) {
      stream_end_ = true;
      return;
    }
    if (r != Z_OK && r != Z_BUF_ERROR) {
      stop_inflate(r == Z_NEED_DICT ? "deflate data asks for a preset dictionary" : z.msg ? z.msg : "corrupt deflate data",
                   true);
      return;
    }
    if (z.avail_in == 0 && z.avail_out > 0) return;  // all taken, nothing pending
    if (r == Z_BUF_ERROR && produced == 0) return;  // no progress possible
  }
}

void WebSocketParser::finish_inflate() {
  if (!stream_end_) inflate_bytes(kDeflateTail, sizeof kDeflateTail);
  if (!inflating_) return;  // that failed
  inflating_ = false;
  if (stream_end_ && takeover()) {
    // The message ended its deflate stream (BFINAL): the next one starts a
    // new stream, which may still refer to this one's data (the sliding
    // window is kept, RFC 7692 7.2.2): carry the window over as a dictionary.
    z_stream& z = inflater_->z;
    std::vector<Bytef> window(32768);
    uInt len = static_cast<uInt>(window.size());
    if (inflateGetDictionary(&z, window.data(), &len) != Z_OK || inflateReset(&z) != Z_OK ||
        inflateSetDictionary(&z, window.data(), len) != Z_OK)
      ctx_lost_ = true;
  } else if (stream_end_) {
    reset_next_ = true;
  }
  stream_end_ = false;
}

// Decompression of msg_ stops before its end: an error (`why`), the
// max_inflate cap, a gap. The context is then unusable: fresh next time, or
// lost for good with context takeover.
void WebSocketParser::stop_inflate(const char* why, bool error) {
  inflating_ = false;
  undecodable_ = true;
  msg_.truncated = true;
  if (error) flag(msg_, std::string("permessage-deflate: ") + why);
  if (takeover())
    ctx_lost_ = true;
  else
    reset_next_ = true;
  stream_end_ = false;
}

void WebSocketParser::on_gap(uint64_t len) {
  if (len == 0 || st_ == State::Stopped) return;
  if (st_ == State::Payload && remaining_ >= len) {  // lost payload: still in step
    WsMessage& m = current();
    m.gap = true;
    m.wire_size += len;
    m.payload_size += len;
    remaining_ -= len;
    mask_off_ += len;
    if (!control_ && msg_.compressed) {
      if (inflating_) stop_inflate(nullptr, false);
    } else {
      m.decoded_size += len;
      m.truncated = true;
      (control_ ? keep_ctl_ : keep_msg_) = false;  // what is kept stays a prefix
    }
    return;
  }
  // Lost inside a header, or past the end of the frame: no telling where the
  // next frame begins.
  if (st_ == State::Payload && control_) {
    ctl_.gap = ctl_.incomplete = true;
    emit(ctl_, ready_);
  }
  if (msg_active_) {
    msg_.gap = msg_.incomplete = true;
    if (inflating_) stop_inflate(nullptr, false);
    emit(msg_, ready_);
    msg_active_ = false;
  }
  stop();
}

void WebSocketParser::on_close(uint64_t ts, std::vector<WsMessage>& out) {
  hand_out_ready(out);
  // The data message began first; a control frame in progress interrupts it.
  const bool ctl_open = st_ == State::Payload && control_;
  if (msg_active_) {
    msg_.incomplete = true;
    if (inflating_) stop_inflate(nullptr, false);
    emit(msg_, out);
    msg_active_ = false;
  }
  if (ctl_open) {
    ctl_.incomplete = true;
    emit(ctl_, out);
  }
  if (st_ != State::Stopped) st_ = State::Header;
  control_ = false;
  remaining_ = 0;
  partial_header_ = false;
  // The connection is over: so is its compression context.
  inflater_.reset();
  inflating_ = ctx_lost_ = reset_next_ = false;
}

// The framing is lost: nothing more is parsed, nothing is kept.
void WebSocketParser::stop() {
  st_ = State::Stopped;
  partial_header_ = false;
  inflating_ = false;
  inflater_.reset();
}

bool WebSocketParser::stopped() const { return st_ == State::Stopped; }

size_t WebSocketParser::memory_bytes() const {
  size_t n = ws_message_heap_bytes(msg_) + ws_message_heap_bytes(ctl_) +
             heap_bytes(ready_.capacity() * sizeof(WsMessage));
  for (const WsMessage& m : ready_) n += ws_message_heap_bytes(m);
  if (inflater_) n += heap_bytes(sizeof(Inflater)) + inflater_->heap;
  return n;
}

uint64_t WebSocketParser::frame_count() const { return frames_; }

uint64_t WebSocketParser::protocol_error_count() const { return protocol_errors_; }

}  // namespace tapwire::proto
