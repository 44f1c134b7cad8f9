// WebSocket frames and messages (userspace/protocols/websocket/): the
// examples of RFC 6455 5.7 and RFC 7692 7.2.3, frames built by hand in every
// length form, masked and not, fed whole, byte by byte and at random split
// points (fixed seeds) with the same records; fragmented messages with
// control frames between the fragments; permessage-deflate messages made
// here with zlib (raw deflate, sync flush, the 00 00 ff ff tail removed)
// with and without context takeover; protocol errors; hostile lengths, a
// deflate bomb, gaps; and the Sec-WebSocket-Extensions parser.
#include <gtest/gtest.h>
#include <zlib.h>

#include <random>
#include <string>
#include <vector>

#include "websocket/extensions.hpp"
#include "websocket/websocket.hpp"

namespace {

using namespace tapwire::proto;
using Sender = WebSocketParser::Sender;

std::span<const uint8_t> bytes(std::string_view s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }
std::string operator""_b(const char* s, size_t n) { return std::string(s, n); }

constexpr uint32_t kKey = 0x37fa213d;  // RFC 6455 5.7's mask key

struct FrameOpts {
  bool fin = true;
  bool mask = false;
  uint8_t rsv = 0;  // RSV1 0x40, RSV2 0x20, RSV3 0x10
  uint32_t key = kKey;
  int len_form = 0;  // 0: shortest; 126 / 127: that extended form whatever the length
};

std::string frame(uint8_t opcode, std::string_view payload, FrameOpts o = {}) {
  std::string f;
  f.push_back(static_cast<char>((o.fin ? 0x80 : 0) | o.rsv | opcode));
  const uint8_t m = o.mask ? 0x80 : 0;
  const uint64_t n = payload.size();
  int form = o.len_form ? o.len_form : n < 126 ? 0 : n <= 0xffff ? 126 : 127;
  if (form == 0) {
    f.push_back(static_cast<char>(m | n));
  } else if (form == 126) {
    f.push_back(static_cast<char>(m | 126));
    f.push_back(static_cast<char>(n >> 8));
    f.push_back(static_cast<char>(n));
  } else {
    f.push_back(static_cast<char>(m | 127));
    for (int i = 7; i >= 0; i--) f.push_back(static_cast<char>(n >> (8 * i)));
  }
  if (!o.mask) return f + std::string(payload);
  const uint8_t k[4] = {static_cast<uint8_t>(o.key >> 24), static_cast<uint8_t>(o.key >> 16),
                        static_cast<uint8_t>(o.key >> 8), static_cast<uint8_t>(o.key)};
  f.append(reinterpret_cast<const char*>(k), 4);
  for (size_t i = 0; i < payload.size(); i++) f.push_back(static_cast<char>(payload[i] ^ k[i & 3]));
  return f;
}

// A header claiming `len` payload bytes (and no payload).
std::string header64(uint8_t opcode, uint64_t len, bool mask = false) {
  std::string f;
  f.push_back(static_cast<char>(0x80 | opcode));
  f.push_back(static_cast<char>((mask ? 0x80 : 0) | 127));
  for (int i = 7; i >= 0; i--) f.push_back(static_cast<char>(len >> (8 * i)));
  if (mask) f += "\x37\xfa\x21\x3d";
  return f;
}

// Feeds a parser the way the dissector does: what feed() leaves unconsumed
// is presented again with the next piece after it.
struct Driver {
  explicit Driver(Sender s, WsDeflate d = {}, WsLimits l = {}) : p(s, d, l) {}

  void push(std::string_view piece, uint64_t ts) {
    buf.append(piece);
    size_t used = 0;
    for (int guard = 0;; guard++) {
      ASSERT_LT(guard, 100000) << "feed() does not progress";
      const ParseResult r = p.feed(bytes(buf).subspan(used), ts, out);
      ASSERT_LE(r.consumed, buf.size() - used);
      if (r.status == ParseStatus::NeedMoreData) {
        ASSERT_EQ(r.consumed, 0u);
      }
      used += r.consumed;
      statuses.push_back(r.status);
      if (r.status == ParseStatus::NeedMoreData || r.consumed == 0 || used == buf.size()) break;
    }
    buf.erase(0, used);
    max_buffered = std::max(max_buffered, buf.size());
  }
  void close(uint64_t ts) { p.on_close(ts, out); }
  void gap(uint64_t len) {
    p.on_gap(len);
    buf.clear();
  }
  size_t count(ParseStatus s) const { return static_cast<size_t>(std::count(statuses.begin(), statuses.end(), s)); }

  WebSocketParser p;
  std::string buf;
  std::vector<WsMessage> out;
  std::vector<ParseStatus> statuses;
  size_t max_buffered = 0;
};

// Everything but the timestamps, which follow the chunks.
void expect_same(const WsMessage& a, const WsMessage& b, const std::string& where) {
  EXPECT_EQ(a.from_client, b.from_client) << where;
  EXPECT_EQ(a.opcode, b.opcode) << where;
  EXPECT_TRUE(a.payload == b.payload) << where;
  EXPECT_EQ(a.wire_size, b.wire_size) << where;
  EXPECT_EQ(a.payload_size, b.payload_size) << where;
  EXPECT_EQ(a.decoded_size, b.decoded_size) << where;
  EXPECT_EQ(a.frames, b.frames) << where;
  EXPECT_EQ(a.close_code, b.close_code) << where;
  EXPECT_EQ(a.close_reason, b.close_reason) << where;
  EXPECT_EQ(a.compressed, b.compressed) << where;
  EXPECT_EQ(a.truncated, b.truncated) << where;
  EXPECT_EQ(a.protocol_error, b.protocol_error) << where;
  EXPECT_EQ(a.incomplete, b.incomplete) << where;
  EXPECT_EQ(a.error, b.error) << where;
}

std::vector<WsMessage> run(std::string_view stream, const std::vector<size_t>& cuts, Sender s, WsDeflate d = {},
                           WsLimits l = {}, bool close = true) {
  Driver drv(s, d, l);
  size_t off = 0;
  uint64_t ts = 1;
  for (size_t k : cuts) {
    drv.push(stream.substr(off, k), ts++);
    off += k;
  }
  if (off < stream.size()) drv.push(stream.substr(off), ts++);
  if (close) drv.close(ts);
  return std::move(drv.out);
}

// The records of a stream, checked equal when fed whole, byte by byte and
// at random split points.
std::vector<WsMessage> all_splits(std::string_view stream, Sender s, WsDeflate d = {}, WsLimits l = {}) {
  std::vector<WsMessage> whole = run(stream, {}, s, d, l);
  std::vector<WsMessage> bytewise = run(stream, std::vector<size_t>(stream.size(), 1), s, d, l);
  EXPECT_EQ(bytewise.size(), whole.size());
  for (size_t i = 0; i < std::min(whole.size(), bytewise.size()); i++)
    expect_same(bytewise[i], whole[i], "byte by byte, record " + std::to_string(i));
  for (unsigned seed = 1; seed <= 20; seed++) {
    std::mt19937 rng(seed);
    std::vector<size_t> cuts;
    for (size_t left = stream.size(); left > 0;) {
      const size_t k = std::min<size_t>(left, 1 + rng() % (seed % 2 ? 7 : 300));
      cuts.push_back(k);
      left -= k;
    }
    std::vector<WsMessage> split = run(stream, cuts, s, d, l);
    EXPECT_EQ(split.size(), whole.size()) << "seed " << seed;
    for (size_t i = 0; i < std::min(whole.size(), split.size()); i++)
      expect_same(split[i], whole[i], "seed " + std::to_string(seed) + ", record " + std::to_string(i));
  }
  return whole;
}

// permessage-deflate's compressor: raw deflate, a sync flush per message,
// the trailing 00 00 ff ff removed (RFC 7692 7.2.1).
class Deflater {
 public:
  explicit Deflater(int level = Z_DEFAULT_COMPRESSION, int window_bits = 15) {
    EXPECT_EQ(deflateInit2(&z_, level, Z_DEFLATED, -window_bits, 8, Z_DEFAULT_STRATEGY), Z_OK);
  }
  ~Deflater() { deflateEnd(&z_); }
  Deflater(const Deflater&) = delete;
  Deflater& operator=(const Deflater&) = delete;

  std::string message(std::string_view in) {
    std::string out;
    compress(in, Z_SYNC_FLUSH, out);
    EXPECT_GE(out.size(), 4u);
    EXPECT_EQ(out.substr(out.size() - 4), "\x00\x00\xff\xff"_b);
    out.resize(out.size() - 4);
    return out;
  }
  // `n` zero bytes as one message, fed a MiB at a time.
  std::string zeros(size_t n) {
    std::string out, mib(1 << 20, '\0');
    for (; n > mib.size(); n -= mib.size()) compress(mib, Z_NO_FLUSH, out);
    compress(std::string(n, '\0'), Z_SYNC_FLUSH, out);
    out.resize(out.size() - 4);
    return out;
  }
  void reset() { deflateReset(&z_); }  // no context takeover

 private:
  void compress(std::string_view in, int flush, std::string& out) {
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
    z_.avail_in = static_cast<uInt>(in.size());
    char buf[16384];
    do {
      z_.next_out = reinterpret_cast<Bytef*>(buf);
      z_.avail_out = sizeof buf;
      deflate(&z_, flush);
      out.append(buf, sizeof buf - z_.avail_out);
    } while (z_.avail_out == 0 || z_.avail_in > 0);
  }
  z_stream z_{};
};

WsDeflate deflate_on(bool server_nct = false, bool client_nct = false) {
  WsDeflate d;
  d.enabled = true;
  d.server_no_context_takeover = server_nct;
  d.client_no_context_takeover = client_nct;
  return d;
}

// ---- RFC 6455 5.7 examples -------------------------------------------------------

TEST(WebSocketFrames, Rfc6455Examples) {
  // A single-frame unmasked text message.
  auto r = all_splits("\x81\x05\x48\x65\x6c\x6c\x6f"_b, Sender::Server);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].opcode, kWsText);
  EXPECT_STREQ(r[0].opcode_name(), "text");
  EXPECT_EQ(r[0].payload, "Hello");
  EXPECT_EQ(r[0].wire_size, 7u);
  EXPECT_EQ(r[0].payload_size, 5u);
  EXPECT_EQ(r[0].decoded_size, 5u);
  EXPECT_EQ(r[0].frames, 1u);
  EXPECT_FALSE(r[0].from_client);
  EXPECT_FALSE(r[0].protocol_error);
  EXPECT_FALSE(r[0].truncated);
  EXPECT_FALSE(r[0].incomplete);
  EXPECT_EQ(r[0].error, "");

  // A single-frame masked text message.
  r = all_splits("\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"_b, Sender::Client);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].payload, "Hello");
  EXPECT_EQ(r[0].wire_size, 11u);
  EXPECT_TRUE(r[0].from_client);
  EXPECT_FALSE(r[0].protocol_error);

  // A fragmented unmasked text message.
  r = all_splits("\x01\x03\x48\x65\x6c\x80\x02\x6c\x6f"_b, Sender::Server);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].payload, "Hello");
  EXPECT_EQ(r[0].frames, 2u);
  EXPECT_EQ(r[0].wire_size, 9u);
  EXPECT_EQ(r[0].payload_size, 5u);

  // Unmasked Ping, then a masked Pong with the same body.
  r = all_splits("\x89\x05\x48\x65\x6c\x6c\x6f"_b, Sender::Server);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_STREQ(r[0].opcode_name(), "ping");
  EXPECT_EQ(r[0].payload, "Hello");
  r = all_splits("\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"_b, Sender::Client);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_STREQ(r[0].opcode_name(), "pong");
  EXPECT_EQ(r[0].payload, "Hello");
  EXPECT_FALSE(r[0].protocol_error);

  // 256 bytes binary in a single unmasked frame; 64 KiB likewise.
  std::string b256;
  for (int i = 0; i < 256; i++) b256.push_back(static_cast<char>(i));
  r = all_splits("\x82\x7e\x01\x00"_b + b256, Sender::Server);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_STREQ(r[0].opcode_name(), "binary");
  EXPECT_EQ(r[0].payload, b256);
  EXPECT_EQ(r[0].wire_size, 260u);
  std::string b64k(65536, '\x5a');
  r = run("\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"_b + b64k, {}, Sender::Server);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_TRUE(r[0].payload == b64k);
  EXPECT_EQ(r[0].wire_size, 65546u);
  EXPECT_FALSE(r[0].protocol_error);
}

TEST(WebSocketFrames, EveryLengthFormMaskedAndNot) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{125}, size_t{126}, size_t{127}, size_t{65535}, size_t{65536},
                   size_t{70000}}) {
    std::string payload;
    for (size_t i = 0; i < n; i++) payload.push_back(static_cast<char>('a' + i % 26));
    for (bool mask : {false, true}) {
      const std::string f = frame(kWsBinary, payload, {.mask = mask, .key = 0x01020304});
      const size_t header = 2 + (n < 126 ? 0 : n <= 0xffff ? 2 : 8) + (mask ? 4 : 0);
      ASSERT_EQ(f.size(), header + n);
      const Sender s = mask ? Sender::Client : Sender::Server;
      WsLimits lim;
      lim.max_message_kept = 1 << 20;
      std::vector<WsMessage> r = n <= 300 ? all_splits(f, s, {}, lim) : run(f, {}, s, {}, lim);
      // Large frames: byte by byte as well (the payload loop, not the header).
      if (n > 300) {
        std::vector<WsMessage> bw = run(f, std::vector<size_t>(f.size(), 1), s, {}, lim);
        ASSERT_EQ(bw.size(), 1u);
        expect_same(bw[0], r[0], "byte by byte " + std::to_string(n));
      }
      ASSERT_EQ(r.size(), 1u) << n;
      EXPECT_TRUE(r[0].payload == payload) << n << (mask ? " masked" : "");
      EXPECT_EQ(r[0].wire_size, f.size());
      EXPECT_EQ(r[0].payload_size, n);
      EXPECT_FALSE(r[0].protocol_error) << r[0].error;
    }
  }
}

TEST(WebSocketFrames, NonMinimalLengthIsFlaggedButParsed) {
  // 5 bytes in the 16-bit form, 300 in the 64-bit form: RFC 6455 5.2 wants the shortest.
  const std::string s = frame(kWsText, "Hello", {.len_form = 126}) + frame(kWsText, std::string(300, 'x'), {.len_form = 127}) +
                        frame(kWsText, "next");
  auto r = all_splits(s, Sender::Server);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].payload, "Hello");
  EXPECT_EQ(r[0].wire_size, 9u);
  EXPECT_TRUE(r[0].protocol_error);
  EXPECT_EQ(r[0].error, "frame length not in its shortest form");
  EXPECT_EQ(r[1].payload, std::string(300, 'x'));
  EXPECT_TRUE(r[1].protocol_error);
  EXPECT_EQ(r[2].payload, "next");
  EXPECT_FALSE(r[2].protocol_error);
}

// ---- messages ----------------------------------------------------------------

TEST(WebSocketMessages, FragmentedWithControlFramesBetween) {
  const std::string s = frame(kWsText, "Hel", {.fin = false, .mask = true}) + frame(kWsPing, "p1", {.mask = true}) +
                        frame(kWsContinuation, "lo, ", {.fin = false, .mask = true, .key = 0xdeadbeef}) +
                        frame(kWsPong, "", {.mask = true}) + frame(kWsContinuation, "world", {.mask = true, .key = 0}) +
                        frame(kWsClose, "\x03\xe8" "bye", {.mask = true});
  auto r = all_splits(s, Sender::Client);
  ASSERT_EQ(r.size(), 4u);
  // Control frames come out when they end, before the message they interrupt.
  EXPECT_STREQ(r[0].opcode_name(), "ping");
  EXPECT_EQ(r[0].payload, "p1");
  EXPECT_STREQ(r[1].opcode_name(), "pong");
  EXPECT_EQ(r[1].payload, "");
  EXPECT_EQ(r[1].wire_size, 6u);
  EXPECT_STREQ(r[2].opcode_name(), "text");
  EXPECT_EQ(r[2].payload, "Hello, world");
  EXPECT_EQ(r[2].frames, 3u);
  EXPECT_EQ(r[2].payload_size, 12u);
  EXPECT_EQ(r[2].wire_size, 3u * 6 + 12);
  EXPECT_FALSE(r[2].protocol_error);
  EXPECT_STREQ(r[3].opcode_name(), "close");
  EXPECT_EQ(r[3].close_code, 1000);
  EXPECT_EQ(r[3].close_reason, "bye");
  EXPECT_EQ(r[3].payload, "");
  EXPECT_EQ(r[3].payload_size, 5u);
  for (const WsMessage& m : r) {
    EXPECT_TRUE(m.from_client);
    EXPECT_FALSE(m.protocol_error) << m.opcode_name() << ": " << m.error;
  }
}

TEST(WebSocketMessages, Timestamps) {
  // The message's first byte came at 10, its last at 40; the ping in
  // between at 20..30. A header cut in two keeps the time of its first byte.
  const std::string a = frame(kWsBinary, "abc", {.fin = false});
  const std::string ping = frame(kWsPing, "xy");
  const std::string b = frame(kWsContinuation, "def");
  Driver d(Sender::Server);
  d.push(a, 10);
  d.push(ping.substr(0, 1), 20);
  d.push(ping.substr(1), 30);
  d.push(b.substr(0, 3), 35);
  d.push(b.substr(3), 40);
  ASSERT_EQ(d.out.size(), 2u);
  EXPECT_EQ(d.out[0].payload, "xy");
  EXPECT_EQ(d.out[0].ts_first_ns, 20u);
  EXPECT_EQ(d.out[0].ts_last_ns, 30u);
  EXPECT_EQ(d.out[1].payload, "abcdef");
  EXPECT_EQ(d.out[1].ts_first_ns, 10u);
  EXPECT_EQ(d.out[1].ts_last_ns, 40u);
  EXPECT_EQ(d.max_buffered, 1u);  // only the cut header waited
}

TEST(WebSocketMessages, CloseFrames) {
  auto r = all_splits(frame(kWsClose, "\x0f\xa0" "going \xc3\xa0 bientot") + frame(kWsClose, "") +
                          frame(kWsClose, "\x03\xed") + frame(kWsClose, "\x03") + frame(kWsClose, "\x03\xee") +
                          frame(kWsClose, "\x03\xe8\xff\xfe") + frame(kWsClose, "\x00\x05"_b),
                      Sender::Server);
  ASSERT_EQ(r.size(), 7u);
  EXPECT_EQ(r[0].close_code, 4000);
  EXPECT_EQ(r[0].close_reason, "going \xc3\xa0 bientot");
  EXPECT_FALSE(r[0].protocol_error);
  EXPECT_EQ(r[1].close_code, 0);  // no status code
  EXPECT_FALSE(r[1].protocol_error);
  EXPECT_EQ(r[2].close_code, 1005);  // "no status": never on the wire
  EXPECT_TRUE(r[2].protocol_error);
  EXPECT_EQ(r[2].error, "close status code 1005 not allowed on the wire");
  EXPECT_EQ(r[3].close_code, 0);
  EXPECT_EQ(r[3].error, "close payload of 1 byte: a status code has 2");
  EXPECT_EQ(r[4].close_code, 1006);
  EXPECT_TRUE(r[4].protocol_error);
  EXPECT_EQ(r[5].close_code, 1000);
  EXPECT_EQ(r[5].error, "close reason not UTF-8");
  EXPECT_EQ(r[6].close_code, 5);
  EXPECT_TRUE(r[6].protocol_error);
}

TEST(WebSocketMessages, ProtocolErrorsAreFlaggedAndParsingGoesOn) {
  struct Case {
    std::string frames;
    Sender sender;
    const char* error;
  };
  const std::vector<Case> cases = {
      {frame(kWsText, "x"), Sender::Client, "client frame not masked (RFC 6455 5.1)"},
      {frame(kWsText, "x", {.mask = true}), Sender::Server, "server frame masked (RFC 6455 5.1)"},
      {frame(kWsText, "x", {.rsv = 0x40}), Sender::Server, "RSV1 set without permessage-deflate agreed"},
      {frame(kWsBinary, "x", {.rsv = 0x20}), Sender::Server, "RSV2/RSV3 set: no extension agreed defines them"},
      {frame(3, "x"), Sender::Server, "reserved opcode 3"},
      {frame(0xb, "x"), Sender::Server, "reserved control opcode 11"},
      {frame(kWsPing, std::string(126, 'p')), Sender::Server, "control frame payload of 126 bytes, over 125"},
      {frame(kWsPing, "x", {.fin = false}), Sender::Server, "fragmented control frame"},
      {frame(kWsPong, "x", {.rsv = 0x40}), Sender::Server, "RSV bits set on a control frame"},
      {frame(kWsContinuation, "x"), Sender::Server, "continuation frame with no message to continue"},
      {frame(kWsText, "caf\xe9!"), Sender::Server, "text message not UTF-8"},
  };
  for (const Case& c : cases) {
    auto r = all_splits(c.frames + frame(kWsBinary, "ok", {.mask = c.sender == Sender::Client}), c.sender);
    ASSERT_EQ(r.size(), 2u) << c.error;
    EXPECT_TRUE(r[0].protocol_error) << c.error;
    EXPECT_EQ(r[0].error, c.error);
    EXPECT_EQ(r[0].payload_size, c.frames.size() > 100 ? 126u : c.error == std::string("text message not UTF-8") ? 5u : 1u);
    EXPECT_EQ(r[1].payload, "ok") << c.error;
    EXPECT_FALSE(r[1].protocol_error) << c.error;
  }
  // A new message before the last frame of the previous one.
  auto r = all_splits(frame(kWsText, "part", {.fin = false}) + frame(kWsBinary, "new"), Sender::Server);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].payload, "part");
  EXPECT_TRUE(r[0].incomplete);
  EXPECT_EQ(r[0].error, "a new message began before this one's last frame");
  EXPECT_EQ(r[1].payload, "new");
  EXPECT_FALSE(r[1].protocol_error);
  Driver d(Sender::Server);
  d.push(frame(kWsText, "x", {.rsv = 0x40}) + frame(kWsText, "y"), 1);
  EXPECT_EQ(d.p.protocol_error_count(), 1u);
  EXPECT_EQ(d.p.frame_count(), 2u);
}

TEST(WebSocketMessages, KeptUpToTheCapCountedBeyond) {
  WsLimits lim;
  lim.max_message_kept = 10;
  std::string payload;
  for (int i = 0; i < 100; i++) payload.push_back(static_cast<char>('0' + i % 10));
  auto r = all_splits(frame(kWsText, payload, {.mask = true}), Sender::Client, {}, lim);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].payload, "0123456789");
  EXPECT_EQ(r[0].decoded_size, 100u);
  EXPECT_EQ(r[0].payload_size, 100u);
  EXPECT_TRUE(r[0].truncated);
  EXPECT_FALSE(r[0].protocol_error);
  // Across fragments: 5 x 30 bytes, 64 kept.
  lim.max_message_kept = 64;
  std::string s;
  for (int i = 0; i < 5; i++)
    s += frame(i ? kWsContinuation : kWsBinary, std::string(30, static_cast<char>('a' + i)), {.fin = i == 4});
  r = all_splits(s, Sender::Server, {}, lim);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].payload, std::string(30, 'a') + std::string(30, 'b') + "cccc");
  EXPECT_EQ(r[0].decoded_size, 150u);
  EXPECT_EQ(r[0].frames, 5u);
  EXPECT_TRUE(r[0].truncated);
  // Text cut inside a character by the cap is still text.
  lim.max_message_kept = 4;
  r = all_splits(frame(kWsText, "ab\xe2\x82\xac"), Sender::Server, {}, lim);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].payload, "ab\xe2\x82");
  EXPECT_FALSE(r[0].protocol_error) << r[0].error;
}

// ---- hostile lengths -------------------------------------------------------------------

TEST(WebSocketHostile, LengthWithTopBitSetStopsTheDirection) {
  Driver d(Sender::Server);
  d.push(frame(kWsText, "before") + header64(kWsBinary, uint64_t{1} << 63) + std::string(100, 'x'), 1);
  ASSERT_EQ(d.out.size(), 2u);
  EXPECT_EQ(d.out[0].payload, "before");
  EXPECT_STREQ(d.out[1].opcode_name(), "binary");
  EXPECT_TRUE(d.out[1].protocol_error);
  EXPECT_TRUE(d.out[1].incomplete);
  EXPECT_EQ(d.out[1].error, "frame length with its most significant bit set (RFC 6455 5.2)");
  EXPECT_EQ(d.out[1].wire_size, 10u);
  EXPECT_EQ(d.out[1].payload_size, 0u);
  EXPECT_TRUE(d.p.stopped());
  EXPECT_EQ(d.count(ParseStatus::Invalid), 1u);
  EXPECT_EQ(d.buf, "");  // everything consumed
  EXPECT_LT(d.p.memory_bytes(), 256u);
  // What follows is skipped.
  d.push(frame(kWsText, "after"), 2);
  d.close(3);
  EXPECT_EQ(d.out.size(), 2u);
  EXPECT_EQ(d.statuses.back(), ParseStatus::Ignored);
}

TEST(WebSocketHostile, LengthAboveTheCap) {
  WsLimits lim;
  lim.max_frame_payload = 1000;
  // At the cap: a frame. One above: the end.
  auto r = run(frame(kWsBinary, std::string(1000, 'a')) + frame(kWsBinary, std::string(1001, 'b')) + frame(kWsText, "x"),
               {}, Sender::Server, {}, lim);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].payload_size, 1000u);
  EXPECT_FALSE(r[0].protocol_error);
  EXPECT_EQ(r[1].error, "frame length 1001 above the cap of 1000 bytes");
  EXPECT_TRUE(r[1].incomplete);
  // The default cap (256 MiB) against 2^62 and 2^32, masked: no allocation, just the end.
  for (uint64_t len : {uint64_t{1} << 62, uint64_t{1} << 32, (uint64_t{256} << 20) + 1}) {
    Driver d(Sender::Client);
    d.push(header64(kWsBinary, len, true) + "\x01\x02\x03", 1);
    ASSERT_EQ(d.out.size(), 1u);
    EXPECT_EQ(d.out[0].error, "frame length " + std::to_string(len) + " above the cap of 268435456 bytes");
    EXPECT_TRUE(d.p.stopped());
    EXPECT_LT(d.p.memory_bytes(), 256u);
  }
  // A continuation too long ends the message in progress, flagged.
  r = run(frame(kWsText, "Hel", {.fin = false}) + header64(kWsContinuation, uint64_t{1} << 40), {}, Sender::Server);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].payload, "Hel");
  EXPECT_EQ(r[0].frames, 2u);
  EXPECT_TRUE(r[0].incomplete);
  EXPECT_TRUE(r[0].protocol_error);
}

TEST(WebSocketHostile, CutShortAndGaps) {
  // The stream ends inside a message: what it got, incomplete.
  Driver d(Sender::Client);
  const std::string f = frame(kWsText, "Hello, world", {.mask = true});
  d.push(f.substr(0, f.size() - 5), 7);
  d.close(9);
  ASSERT_EQ(d.out.size(), 1u);
  EXPECT_EQ(d.out[0].payload, "Hello, ");
  EXPECT_TRUE(d.out[0].incomplete);
  EXPECT_EQ(d.out[0].ts_last_ns, 7u);

  // A gap inside a payload: counted, the stream stays in step (and the
  // mask's phase with it).
  Driver g(Sender::Client);
  const std::string a = frame(kWsBinary, "0123456789", {.mask = true});
  g.push(a.substr(0, 6 + 3), 1);
  g.gap(4);
  g.push(a.substr(6 + 7), 2);
  g.push(frame(kWsText, "next", {.mask = true}), 3);
  ASSERT_EQ(g.out.size(), 2u);
  EXPECT_EQ(g.out[0].payload, "012");  // kept stays a prefix
  EXPECT_TRUE(g.out[0].gap);
  EXPECT_TRUE(g.out[0].truncated);
  EXPECT_EQ(g.out[0].payload_size, 10u);
  EXPECT_EQ(g.out[0].decoded_size, 10u);
  EXPECT_EQ(g.out[1].payload, "next");
  EXPECT_FALSE(g.out[1].gap);

  // A gap across a header: the framing is lost, the direction stops.
  Driver h(Sender::Server);
  h.push(frame(kWsText, "abc", {.fin = false}), 1);
  h.gap(100);
  h.push(frame(kWsText, "lost"), 2);
  ASSERT_EQ(h.out.size(), 1u);
  EXPECT_EQ(h.out[0].payload, "abc");
  EXPECT_TRUE(h.out[0].gap);
  EXPECT_TRUE(h.out[0].incomplete);
  EXPECT_TRUE(h.p.stopped());
}

// ---- permessage-deflate ------------------------------------------------------------------

TEST(WebSocketDeflate, Rfc7692Examples) {
  // 7.2.3.1: "Hello" compressed, in one frame and in two fragments.
  const std::string hello = "\xc1\x07\xf2\x48\xcd\xc9\xc9\x07\x00"_b;
  auto r = all_splits(hello, Sender::Server, deflate_on());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].payload, "Hello");
  EXPECT_TRUE(r[0].compressed);
  EXPECT_EQ(r[0].payload_size, 7u);
  EXPECT_EQ(r[0].decoded_size, 5u);
  EXPECT_EQ(r[0].wire_size, 9u);
  EXPECT_FALSE(r[0].protocol_error) << r[0].error;
  r = all_splits("\x41\x03\xf2\x48\xcd\x80\x04\xc9\xc9\x07\x00"_b, Sender::Server, deflate_on());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].payload, "Hello");
  EXPECT_EQ(r[0].frames, 2u);
  // 7.2.3.2: the second "Hello" refers to the first (context takeover).
  r = all_splits(hello + "\xc1\x05\xf2\x00\x11\x00\x00"_b, Sender::Server, deflate_on());
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[1].payload, "Hello");
  EXPECT_EQ(r[1].payload_size, 5u);
  EXPECT_FALSE(r[1].protocol_error) << r[1].error;
  // 7.2.3.3: a stored (uncompressed) block; 7.2.3.4: a block with BFINAL;
  // 7.2.3.5: two blocks in one message.
  r = all_splits("\xc1\x0b\x00\x05\x00\xfa\xff\x48\x65\x6c\x6c\x6f\x00"_b + "\xc1\x08\xf3\x48\xcd\xc9\xc9\x07\x00\x00"_b +
                     "\xc1\x0d\xf2\x48\x05\x00\x00\x00\xff\xff\xca\xc9\xc9\x07\x00"_b,
                 Sender::Server, deflate_on());
  ASSERT_EQ(r.size(), 3u);
  for (const WsMessage& m : r) {
    EXPECT_EQ(m.payload, "Hello");
    EXPECT_FALSE(m.protocol_error) << m.error;
  }
}

TEST(WebSocketDeflate, ContextTakeover) {
  Deflater z;
  const std::string text = "{\"type\":\"update\",\"symbol\":\"ACME\",\"price\":101.25,\"volume\":1200}";
  std::string s;
  std::vector<size_t> sizes;
  for (int i = 0; i < 5; i++) {
    const std::string c = z.message(text);
    sizes.push_back(c.size());
    s += frame(kWsText, c, {.mask = true, .rsv = 0x40, .key = 0x11223344u * static_cast<uint32_t>(i + 1)});
  }
  // The later messages refer to the first: far shorter.
  EXPECT_LT(sizes[1] * 3, sizes[0]);
  auto r = all_splits(s, Sender::Client, deflate_on());
  ASSERT_EQ(r.size(), 5u);
  for (size_t i = 0; i < r.size(); i++) {
    EXPECT_EQ(r[i].payload, text) << i;
    EXPECT_TRUE(r[i].compressed);
    EXPECT_EQ(r[i].payload_size, sizes[i]);
    EXPECT_EQ(r[i].decoded_size, text.size());
    EXPECT_FALSE(r[i].protocol_error) << r[i].error;
  }
  // Reset between messages on the wrong side's flag: the server resetting
  // does not change how the client's messages decode.
  r = run(s, {}, Sender::Client, deflate_on(true, false));
  ASSERT_EQ(r.size(), 5u);
  EXPECT_EQ(r[4].payload, text);
}

TEST(WebSocketDeflate, NoContextTakeover) {
  Deflater z;
  const std::string text = "no context takeover, no context takeover, each message stands alone";
  std::string s;
  for (int i = 0; i < 3; i++) {
    z.reset();
    s += frame(kWsText, z.message(text), {.rsv = 0x40});
  }
  auto r = all_splits(s, Sender::Server, deflate_on(true, false));
  ASSERT_EQ(r.size(), 3u);
  for (const WsMessage& m : r) {
    EXPECT_EQ(m.payload, text);
    EXPECT_FALSE(m.protocol_error) << m.error;
  }
  // A corrupt message does not spoil the next one: each starts afresh.
  z.reset();
  std::string bad = z.message(text);
  bad[0] = static_cast<char>(0xff);  // BTYPE 11: reserved
  z.reset();
  const std::string good = z.message(text);
  r = all_splits(frame(kWsText, bad, {.rsv = 0x40}) + frame(kWsText, good, {.rsv = 0x40}), Sender::Server,
                 deflate_on(true, false));
  ASSERT_EQ(r.size(), 2u);
  EXPECT_TRUE(r[0].protocol_error);
  EXPECT_EQ(r[0].error, "permessage-deflate: invalid block type");
  EXPECT_TRUE(r[0].truncated);
  EXPECT_EQ(r[1].payload, text);
  EXPECT_FALSE(r[1].protocol_error);
  // The same with context takeover: the second message may refer to the
  // first, which is gone: not decoded, said so.
  r = all_splits(frame(kWsText, bad, {.rsv = 0x40}) + frame(kWsText, good, {.rsv = 0x40}) + frame(kWsText, "plain"),
                 Sender::Server, deflate_on());
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[1].payload, "");
  EXPECT_TRUE(r[1].truncated);
  EXPECT_FALSE(r[1].protocol_error);
  EXPECT_EQ(r[1].error, "not decompressed: an earlier message of this direction was not, and this one may refer to it");
  EXPECT_EQ(r[2].payload, "plain");  // uncompressed messages are unaffected
}

TEST(WebSocketDeflate, FragmentedWithPingBetween) {
  Deflater z;
  std::string text;
  for (int i = 0; i < 200; i++) text += "fragment " + std::to_string(i) + " ";
  const std::string c = z.message(text);
  ASSERT_GT(c.size(), 30u);
  const size_t third = c.size() / 3;
  const std::string s = frame(kWsText, c.substr(0, third), {.fin = false, .mask = true, .rsv = 0x40}) +
                        frame(kWsPing, "", {.mask = true}) +
                        frame(kWsContinuation, c.substr(third, third), {.fin = false, .mask = true}) +
                        frame(kWsContinuation, c.substr(2 * third), {.mask = true});
  auto r = all_splits(s, Sender::Client, deflate_on(false, true));
  ASSERT_EQ(r.size(), 2u);
  EXPECT_STREQ(r[0].opcode_name(), "ping");
  EXPECT_TRUE(r[1].payload == text);
  EXPECT_EQ(r[1].frames, 3u);
  EXPECT_EQ(r[1].payload_size, c.size());
  EXPECT_EQ(r[1].decoded_size, text.size());
  EXPECT_FALSE(r[1].protocol_error) << r[1].error;
}

TEST(WebSocketDeflate, BfinalKeepsTheWindow) {
  // A message ending its deflate stream (BFINAL), then one whose new stream
  // refers to the first's data (a preset dictionary on the sender's side):
  // with context takeover the window carries over.
  std::string first, second;
  {
    z_stream z{};
    ASSERT_EQ(deflateInit2(&z, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    std::string in = "the same words again and again";
    char buf[256];
    z.next_in = reinterpret_cast<Bytef*>(in.data());
    z.avail_in = static_cast<uInt>(in.size());
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof buf;
    ASSERT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
    first.assign(buf, sizeof buf - z.avail_out);
    deflateReset(&z);
    ASSERT_EQ(deflateSetDictionary(&z, reinterpret_cast<const Bytef*>(in.data()), static_cast<uInt>(in.size())), Z_OK);
    z.next_in = reinterpret_cast<Bytef*>(in.data());
    z.avail_in = static_cast<uInt>(in.size());
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof buf;
    ASSERT_EQ(deflate(&z, Z_SYNC_FLUSH), Z_OK);
    second.assign(buf, sizeof buf - z.avail_out - 4);
    deflateEnd(&z);
  }
  ASSERT_LT(second.size(), 10u);  // a back-reference, no literals
  auto r = all_splits(frame(kWsText, first, {.rsv = 0x40}) + frame(kWsText, second, {.rsv = 0x40}), Sender::Server,
                      deflate_on());
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].payload, "the same words again and again");
  EXPECT_EQ(r[1].payload, "the same words again and again");
  EXPECT_FALSE(r[1].protocol_error) << r[1].error;
}

TEST(WebSocketDeflate, BombStopsAtMaxInflate) {
  Deflater z(9);
  const std::string bomb = z.zeros(64 << 20);  // 64 MiB of zeros
  ASSERT_LT(bomb.size(), 128u * 1024);
  const std::string after = z.message("after");
  WsLimits lim;
  lim.max_message_kept = 4096;
  lim.max_inflate = 1 << 20;
  Driver d(Sender::Server, deflate_on(), lim);
  d.push(frame(kWsBinary, bomb, {.rsv = 0x40}) + frame(kWsText, after, {.rsv = 0x40}) + frame(kWsText, "plain"), 1);
  ASSERT_EQ(d.out.size(), 3u);
  EXPECT_EQ(d.out[0].payload, std::string(4096, '\0'));
  EXPECT_EQ(d.out[0].decoded_size, uint64_t{1} << 20);
  EXPECT_EQ(d.out[0].payload_size, bomb.size());
  EXPECT_TRUE(d.out[0].truncated);
  EXPECT_FALSE(d.out[0].protocol_error);
  // Context takeover: the next compressed message cannot be decoded.
  EXPECT_EQ(d.out[1].payload, "");
  EXPECT_TRUE(d.out[1].truncated);
  EXPECT_EQ(d.out[2].payload, "plain");
  // The inflater is counted: a 32 KiB window and zlib's state.
  EXPECT_GT(d.p.memory_bytes(), 32u * 1024);
  EXPECT_LT(d.p.memory_bytes(), 64u * 1024);
  d.close(2);  // released with the connection
  EXPECT_EQ(d.p.memory_bytes(), 0u);
  // Without context takeover the next message decodes.
  Deflater z2(9);
  const std::string bomb2 = z2.zeros(8 << 20);
  z2.reset();
  const std::string after2 = z2.message("after");
  auto r = run(frame(kWsBinary, bomb2, {.rsv = 0x40}) + frame(kWsText, after2, {.rsv = 0x40}), {}, Sender::Server,
               deflate_on(true, false), lim);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].decoded_size, uint64_t{1} << 20);
  EXPECT_EQ(r[1].payload, "after");
}

TEST(WebSocketDeflate, CompressedAtTheCapOfKeptBytes) {
  Deflater z;
  std::string text;
  for (int i = 0; i < 1000; i++) text += static_cast<char>('a' + i % 26);
  WsLimits lim;
  lim.max_message_kept = 100;
  const std::string first = z.message(text);
  const std::string second = z.message(text);  // refers to the first
  ASSERT_LT(second.size(), first.size());
  auto r = all_splits(frame(kWsText, first, {.rsv = 0x40}) + frame(kWsText, second, {.rsv = 0x40}), Sender::Server,
                      deflate_on(), lim);
  ASSERT_EQ(r.size(), 2u);
  for (const WsMessage& m : r) {
    EXPECT_EQ(m.payload, text.substr(0, 100));
    EXPECT_EQ(m.decoded_size, 1000u);  // decompressed to the end all the same: the context stays right
    EXPECT_TRUE(m.truncated);
    EXPECT_FALSE(m.protocol_error) << m.error;
  }
}

// ---- Sec-WebSocket-Extensions --------------------------------------------------------

TEST(WebSocketExtensions, ParseHeader) {
  auto e = parse_ws_extensions("foo; a=1; B=\"x,y\" ,, bar ;baz, =bad; x, qux; p=\"unterminated");
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0].name, "foo");
  ASSERT_EQ(e[0].params.size(), 2u);
  EXPECT_EQ(e[0].params[0].name, "a");
  EXPECT_EQ(e[0].params[0].value, "1");
  EXPECT_EQ(e[0].params[1].name, "b");
  EXPECT_EQ(e[0].params[1].value, "x,y");
  EXPECT_EQ(e[1].name, "bar");
  ASSERT_EQ(e[1].params.size(), 1u);
  EXPECT_EQ(e[1].params[0].name, "baz");
  EXPECT_FALSE(e[1].params[0].has_value);
}

TEST(WebSocketExtensions, PermessageDeflate) {
  // Chrome's offer.
  auto o = parse_permessage_deflate("permessage-deflate; client_max_window_bits", false);
  ASSERT_TRUE(o.has_value());
  EXPECT_TRUE(o->enabled);
  EXPECT_EQ(o->client_max_window_bits, 15);
  EXPECT_FALSE(o->malformed);
  // A server's answer.
  o = parse_permessage_deflate("permessage-deflate; server_no_context_takeover; client_max_window_bits=10", true);
  ASSERT_TRUE(o.has_value());
  EXPECT_TRUE(o->server_no_context_takeover);
  EXPECT_FALSE(o->client_no_context_takeover);
  EXPECT_EQ(o->client_max_window_bits, 10);
  EXPECT_EQ(o->server_max_window_bits, 15);
  EXPECT_FALSE(o->malformed);
  // Quoted value; the first permessage-deflate of several offers.
  o = parse_permessage_deflate(
      "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=\"9\"; client_no_context_takeover, "
      "permessage-deflate",
      false);
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->server_max_window_bits, 9);
  EXPECT_TRUE(o->client_no_context_takeover);
  // What RFC 7692 rejects: flagged, the rest kept.
  for (std::string_view bad : {"permessage-deflate; server_max_window_bits=16",
                               "permessage-deflate; server_max_window_bits=08",
                               "permessage-deflate; server_max_window_bits", "permessage-deflate; mystery=1",
                               "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                               "permessage-deflate; client_no_context_takeover=yes"}) {
    o = parse_permessage_deflate(bad, true);
    ASSERT_TRUE(o.has_value()) << bad;
    EXPECT_TRUE(o->malformed) << bad;
    EXPECT_EQ(o->server_max_window_bits, 15) << bad;
  }
  // client_max_window_bits without a value: fine in an offer, not in an answer.
  EXPECT_TRUE(parse_permessage_deflate("permessage-deflate; client_max_window_bits", true)->malformed);
  EXPECT_FALSE(parse_permessage_deflate("x-webkit-deflate-frame", false).has_value());
  EXPECT_FALSE(parse_permessage_deflate("", false).has_value());
}

TEST(WebSocketExtensions, Negotiate) {
  WsDeflate d = negotiate_permessage_deflate("permessage-deflate; client_max_window_bits",
                                             "permessage-deflate; server_no_context_takeover");
  EXPECT_TRUE(d.enabled);
  EXPECT_TRUE(d.server_no_context_takeover);
  EXPECT_FALSE(d.client_no_context_takeover);
  EXPECT_FALSE(d.malformed);
  // The server declined: no compression.
  d = negotiate_permessage_deflate("permessage-deflate; client_max_window_bits", "");
  EXPECT_FALSE(d.enabled);
  // Accepted without an offer: on, and flagged.
  d = negotiate_permessage_deflate("", "permessage-deflate");
  EXPECT_TRUE(d.enabled);
  EXPECT_TRUE(d.malformed);
  // The client's hint is not taken (extensions.hpp says why).
  d = negotiate_permessage_deflate("permessage-deflate; client_no_context_takeover", "permessage-deflate");
  EXPECT_FALSE(d.client_no_context_takeover);
}

}  // namespace
