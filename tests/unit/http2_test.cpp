// HTTP/2 connection parser: conversations written frame by frame (header
// blocks from libnghttp2's deflater, one per direction as on a real
// connection), fed whole, byte by byte and at random splits, which must all
// give the same exchanges; every frame type; a connection joined late (frame
// boundary search, HPACK references to entries never seen); hostile input
// (oversized frames, HPACK bomb, stream and CONTINUATION floods, memory
// budget), each bounded, flagged, and followed by streams still parsed.
#include <gtest/gtest.h>

#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "http2/frame_writer.hpp"
#include "http2/hpack.hpp"
#include "http2/http2.hpp"

namespace {

using namespace tapwire::proto;
namespace w = tapwire::proto::h2w;

constexpr Http2Dir kC = Http2Dir::ClientToServer;
constexpr Http2Dir kS = Http2Dir::ServerToClient;

std::span<const uint8_t> bytes(std::string_view s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

// The bytes of a connection in the order they were sent: (direction, bytes) segments.
struct Seg {
  Http2Dir dir;
  std::string bytes;
};
using Conv = std::vector<Seg>;

enum class Split { Whole, Bytes, Random };

struct Feed {
  explicit Feed(Http2Limits lim, Http2TapFactory taps = {}) : p(lim, std::move(taps)) {}
  Http2Parser p;
  std::vector<Http2Exchange> out;
  std::vector<ParseStatus> statuses;
  size_t max_buffered = 0, max_held = 0, max_memory = 0, max_streams = 0;
};

std::unique_ptr<Feed> run(const Conv& conv, Split how, uint32_t seed = 1, Http2Limits lim = {}, bool close = true) {
  auto r = std::make_unique<Feed>(lim);
  std::mt19937 rng(seed);
  uint64_t ts = 1000;
  for (const Seg& s : conv) {
    size_t i = 0;
    while (i < s.bytes.size()) {
      size_t k = s.bytes.size() - i;
      if (how == Split::Bytes) k = 1;
      if (how == Split::Random) k = std::min<size_t>(k, 1 + rng() % 23);
      const ParseResult res = r->p.feed(s.dir, bytes(s.bytes).subspan(i, k), ts++, r->out);
      EXPECT_EQ(res.consumed, k);
      r->statuses.push_back(res.status);
      i += k;
      r->max_buffered = std::max(r->max_buffered, r->p.buffered_bytes());
      r->max_held = std::max(r->max_held, r->p.held_bytes());
      r->max_memory = std::max(r->max_memory, r->p.memory_bytes());
      r->max_streams = std::max(r->max_streams, r->p.open_streams());
    }
  }
  if (close) r->p.on_close(ts, r->out);
  return r;
}

// Everything an exchange says but its timestamps (which follow the chunks).
std::string describe(const Http2Exchange& e) {
  std::ostringstream o;
  o << "sid=" << e.stream_id << " [" << e.method << " " << e.scheme << "://" << e.authority << e.path << " "
    << e.protocol << "] status=" << e.status << " interim=";
  for (int s : e.interim) o << s << ",";
  auto msg = [&](const char* name, const Http2Message& m) {
    o << "\n  " << name << " headers{";
    for (const Header& h : m.headers) o << h.name << ": " << h.value << "; ";
    o << "} trailers{";
    for (const Header& h : m.trailers) o << h.name << ": " << h.value << "; ";
    o << "} body=" << m.body.size() << "/" << m.body_size << " '" << m.body.substr(0, 64) << "' hbytes=" << m.header_bytes
      << " wire=" << m.wire_bytes << " frames=" << m.frames << " has_headers=" << m.has_headers
      << " end=" << m.end_stream << " htrunc=" << m.headers_truncated << " btrunc=" << m.body_truncated;
  };
  msg("req", e.request);
  msg("resp", e.response);
  o << "\n  pushed=" << e.pushed << "/" << e.promised_on << " reset=" << e.reset << "/" << static_cast<int>(e.reset_by)
    << "/" << e.rst_error << " goaway=" << e.goaway << "/" << e.goaway_error << " incomplete=" << e.incomplete
    << " partial=" << e.partial << " gap=" << e.gap << " evicted=" << e.evicted << " hpack_unknown=" << e.hpack_unknown
    << " hpack_error=" << e.hpack_error << " overflow=" << e.header_overflow << " memcap=" << e.memory_capped;
  return o.str();
}

std::string describe(const std::vector<Http2Exchange>& v) {
  std::string s;
  for (const Http2Exchange& e : v) s += describe(e) + "\n";
  return s;
}

std::string describe(const Http2ConnInfo& i) {
  std::ostringstream o;
  for (int d = 0; d < 2; d++)
    o << "dir" << d << " resynced=" << i.resynced[d] << " skipped=" << i.skipped_bytes[d] << " stopped=" << i.stopped[d]
      << " frames=" << i.frames[d] << " pings=" << i.pings[d] << " malformed=" << i.malformed_frames[d]
      << " hpack_errors=" << i.hpack_errors[d] << " overflows=" << i.header_overflows[d]
      << " unknown=" << i.unknown_frames[d] << " goaway=" << i.goaway[d] << "/" << i.goaway_last_stream[d] << "/"
      << i.goaway_error[d] << "/" << i.goaway_debug[d] << "\n";
  o << "preface=" << i.preface << " streams=" << i.streams << " evicted=" << i.evicted_streams
    << " orphans=" << i.orphan_frames;
  return o.str();
}

// Runs the conversation whole, byte by byte and at random splits: the same
// exchanges and counters each time. Returns the whole run.
std::unique_ptr<Feed> all_ways(const Conv& conv, Http2Limits lim = {}, bool bytewise = true) {
  auto whole = run(conv, Split::Whole, 0, lim);
  const std::string want = describe(whole->out) + describe(whole->p.info());
  if (bytewise) {
    auto b = run(conv, Split::Bytes, 0, lim);
    EXPECT_EQ(describe(b->out) + describe(b->p.info()), want) << "byte by byte";
  }
  for (uint32_t seed : {1u, 7u, 42u}) {
    auto r = run(conv, Split::Random, seed, lim);
    EXPECT_EQ(describe(r->out) + describe(r->p.info()), want) << "random seed " << seed;
  }
  return whole;
}

const Http2Exchange* by_sid(const std::vector<Http2Exchange>& v, uint32_t sid) {
  for (const Http2Exchange& e : v)
    if (e.stream_id == sid) return &e;
  return nullptr;
}

std::string names(const std::vector<Header>& hs) {
  std::string s;
  for (const Header& h : hs) s += h.name + "=" + h.value + ";";
  return s;
}

// A connection from its first byte: preface and SETTINGS both ways.
struct Conn {
  w::Deflater cd, sd;  // the client's and the server's HPACK encoders
  Conv conv;
  void c(std::string b) { conv.push_back({kC, std::move(b)}); }
  void s(std::string b) { conv.push_back({kS, std::move(b)}); }
  void start(std::vector<std::pair<uint16_t, uint32_t>> client_settings = {{0x3, 100}, {0x4, 65535}},
             std::vector<std::pair<uint16_t, uint32_t>> server_settings = {{0x3, 128}}) {
    c(std::string(kHttp2Preface) + w::settings(client_settings));
    s(w::settings(server_settings) + w::settings_ack());
    c(w::settings_ack());
  }
  std::string req(const w::Fields& f) { return cd.block(f); }
  std::string resp(const w::Fields& f) { return sd.block(f); }
};

w::Fields get(const std::string& path) {
  return {{":method", "GET"}, {":scheme", "https"}, {":authority", "example.com"}, {":path", path}};
}

// ---- basics ------------------------------------------------------------------

TEST(Http2Parse, SimpleGet) {
  Conn k;
  k.start();
  w::Fields rq = get("/index.html");
  rq.push_back({"user-agent", "test/1.0"});
  rq.push_back({"accept", "*/*"});
  k.c(w::headers(1, k.req(rq), {.end_stream = true}));
  k.s(w::headers(1, k.resp({{":status", "200"}, {"content-type", "text/plain"}, {"content-length", "5"}})) +
      w::data(1, "hello", true));
  auto r = all_ways(k.conv);
  ASSERT_EQ(r->out.size(), 1u);
  const Http2Exchange& e = r->out[0];
  EXPECT_EQ(e.stream_id, 1u);
  EXPECT_EQ(e.method, "GET");
  EXPECT_EQ(e.scheme, "https");
  EXPECT_EQ(e.authority, "example.com");
  EXPECT_EQ(e.path, "/index.html");
  EXPECT_EQ(e.status, 200);
  EXPECT_EQ(names(e.request.headers), "user-agent=test/1.0;accept=*/*;");
  EXPECT_EQ(names(e.response.headers), "content-type=text/plain;content-length=5;");
  EXPECT_EQ(e.response.body, "hello");
  EXPECT_EQ(e.response.body_size, 5u);
  EXPECT_FALSE(e.response.body_truncated);
  EXPECT_TRUE(e.request.end_stream);
  EXPECT_TRUE(e.response.end_stream);
  EXPECT_TRUE(e.request.has_headers);
  EXPECT_EQ(e.request.frames, 1u);
  EXPECT_EQ(e.response.frames, 2u);
  EXPECT_EQ(e.response.wire_bytes, k.conv[4].bytes.size());
  // header_bytes: name + value + 32 per field, pseudo-fields included.
  EXPECT_EQ(e.response.header_bytes, (7 + 3 + 32) + (12 + 10 + 32) + (14 + 1 + 32));
  EXPECT_FALSE(e.incomplete || e.partial || e.reset || e.goaway || e.hpack_unknown || e.hpack_error ||
               e.header_overflow || e.evicted || e.memory_capped);
  const Http2ConnInfo& i = r->p.info();
  EXPECT_TRUE(i.preface);
  EXPECT_FALSE(i.resynced[0] || i.resynced[1]);
  EXPECT_EQ(i.settings[0].max_concurrent_streams, 100u);
  EXPECT_EQ(i.settings[1].max_concurrent_streams, 128u);
  EXPECT_EQ(i.frames[0], 3u);  // SETTINGS, ACK, HEADERS
  EXPECT_EQ(i.frames[1], 4u);
  EXPECT_EQ(i.skipped_bytes[0] + i.skipped_bytes[1], 0u);
}

TEST(Http2Parse, EmitsWhenBothSidesEnd) {
  Conn k;
  k.start();
  auto r = std::make_unique<Feed>(Http2Limits{});
  auto feed = [&](Http2Dir d, const std::string& b) { return r->p.feed(d, bytes(b), 1, r->out); };
  for (const Seg& s : k.conv) feed(s.dir, s.bytes);
  feed(kC, w::headers(1, k.req(get("/")), {}));
  feed(kS, w::headers(1, k.resp({{":status", "200"}})) + w::data(1, "x", true));
  EXPECT_TRUE(r->out.empty()) << "the request has not ended";
  EXPECT_EQ(r->p.open_streams(), 1u);
  const ParseResult res = feed(kC, w::data(1, "", true));
  EXPECT_EQ(res.status, ParseStatus::Done);
  ASSERT_EQ(r->out.size(), 1u);
  EXPECT_EQ(r->p.open_streams(), 0u);
  EXPECT_EQ(r->p.held_bytes(), 0u);
}

// Every frame type, padding, priority, CONTINUATION, trailers, interleaved
// streams, frames of unknown type.
Conv rich_conversation() {
  Conn k;
  k.start();
  // Stream 1: a POST whose header block spans HEADERS (priority, padded) and two CONTINUATIONs.
  w::Fields post = {{":method", "POST"}, {":scheme", "http"}, {":authority", "api.local:8080"}, {":path", "/upload?x=1"},
                    {"content-type", "application/octet-stream"}, {"x-request-id", std::string(300, 'r')}};
  const std::string blk = k.req(post);
  const size_t a = blk.size() / 3, b = 2 * blk.size() / 3;
  k.c(w::headers(1, blk.substr(0, a), {.end_headers = false, .pad = 5, .priority = true}) +
      w::continuation(1, blk.substr(a, b - a), false) + w::continuation(1, blk.substr(b), true));
  k.c(w::data(1, "part1-", false, 7));
  // Stream 3 interleaved: a GET.
  k.c(w::headers(3, k.req(get("/a")), {.end_stream = true, .priority = true}) + w::priority(3));
  k.c(w::data(1, "part2", false) + w::window_update(0, 1000));
  k.c(w::headers(1, k.req({{"x-checksum", "abc"}}), {.end_stream = true}));  // request trailers
  k.s(w::ping() + w::window_update(0, 65535) + w::frame(static_cast<Http2FrameType>(0x42), 0xff, 0, "unknown"));
  k.s(w::headers(3, k.resp({{":status", "200"}, {"content-type", "text/html"}}), {.pad = 0}) +
      w::data(3, "<p>a</p>", true, 0));
  k.c(w::ping(true));
  k.s(w::headers(1, k.resp({{":status", "100"}})) + w::headers(1, k.resp({{":status", "201"}, {"location", "/u/1"}})));
  k.s(w::data(1, "o", false) + w::data(1, "k", false, 200));
  k.s(w::headers(1, k.resp({{"x-status", "done"}}), {.end_stream = true}));  // response trailers
  return k.conv;
}

TEST(Http2Parse, RichConversationEverySplit) {
  auto r = all_ways(rich_conversation());
  ASSERT_EQ(r->out.size(), 2u) << describe(r->out);
  const Http2Exchange& e3 = r->out[0];  // stream 3 ends first
  EXPECT_EQ(e3.stream_id, 3u);
  EXPECT_EQ(e3.path, "/a");
  EXPECT_EQ(e3.status, 200);
  EXPECT_EQ(e3.response.body, "<p>a</p>");
  EXPECT_EQ(e3.request.frames, 2u);  // HEADERS, PRIORITY
  const Http2Exchange& e1 = r->out[1];
  EXPECT_EQ(e1.stream_id, 1u);
  EXPECT_EQ(e1.method, "POST");
  EXPECT_EQ(e1.scheme, "http");
  EXPECT_EQ(e1.authority, "api.local:8080");
  EXPECT_EQ(e1.path, "/upload?x=1");
  EXPECT_EQ(names(e1.request.headers),
            "content-type=application/octet-stream;x-request-id=" + std::string(300, 'r') + ";");
  EXPECT_EQ(e1.request.body, "part1-part2");  // padding excluded
  EXPECT_EQ(names(e1.request.trailers), "x-checksum=abc;");
  EXPECT_EQ(e1.request.frames, 6u);  // HEADERS + 2 CONTINUATION, 2 DATA, trailers
  EXPECT_EQ(e1.interim, std::vector<int>{100});
  EXPECT_EQ(e1.status, 201);
  EXPECT_EQ(names(e1.response.headers), "location=/u/1;");
  EXPECT_EQ(e1.response.body, "ok");
  EXPECT_EQ(names(e1.response.trailers), "x-status=done;");
  EXPECT_TRUE(e1.request.end_stream && e1.response.end_stream);
  const Http2ConnInfo& i = r->p.info();
  EXPECT_EQ(i.pings[0], 1u);
  EXPECT_EQ(i.pings[1], 1u);
  EXPECT_EQ(i.unknown_frames[1], 1u);
  EXPECT_EQ(i.malformed_frames[0] + i.malformed_frames[1], 0u);
  EXPECT_EQ(i.hpack_errors[0] + i.hpack_errors[1], 0u);
}

TEST(Http2Parse, RstStream) {
  Conn k;
  k.start();
  k.c(w::headers(1, k.req(get("/slow")), {.end_stream = true}));
  k.s(w::headers(1, k.resp({{":status", "200"}})) + w::data(1, "par", false));
  k.c(w::rst_stream(1, 8));  // CANCEL
  k.s(w::data(1, "tial", true));  // in flight: must not open the stream again
  k.c(w::headers(3, k.req(get("/next")), {.end_stream = true}));
  k.s(w::headers(3, k.resp({{":status", "204"}}), {.end_stream = true}));
  auto r = all_ways(k.conv);
  ASSERT_EQ(r->out.size(), 2u) << describe(r->out);
  const Http2Exchange& e = r->out[0];
  EXPECT_EQ(e.stream_id, 1u);
  EXPECT_TRUE(e.reset);
  EXPECT_EQ(e.reset_by, kC);
  EXPECT_EQ(e.rst_error, 8u);
  EXPECT_EQ(e.response.body, "par");
  EXPECT_FALSE(e.response.end_stream);
  EXPECT_EQ(r->out[1].stream_id, 3u);
  EXPECT_EQ(r->out[1].status, 204);
  EXPECT_FALSE(r->out[1].reset);
  EXPECT_EQ(r->p.info().orphan_frames, 1u);
}

TEST(Http2Parse, GoawayCutsStreamsAboveLast) {
  Conn k;
  k.start();
  for (uint32_t sid : {1u, 3u, 5u}) k.c(w::headers(sid, k.req(get("/" + std::to_string(sid))), {.end_stream = true}));
  k.s(w::goaway(1, 2, "bye"));
  k.s(w::headers(1, k.resp({{":status", "200"}}), {.end_stream = true}));
  auto r = all_ways(k.conv);
  ASSERT_EQ(r->out.size(), 3u) << describe(r->out);
  EXPECT_EQ(r->out[0].stream_id, 3u);
  EXPECT_EQ(r->out[1].stream_id, 5u);
  for (int i : {0, 1}) {
    EXPECT_TRUE(r->out[i].goaway);
    EXPECT_EQ(r->out[i].goaway_error, 2u);
    EXPECT_EQ(r->out[i].status, 0);
  }
  EXPECT_EQ(r->out[2].stream_id, 1u);
  EXPECT_FALSE(r->out[2].goaway);
  EXPECT_EQ(r->out[2].status, 200);
  const Http2ConnInfo& i = r->p.info();
  EXPECT_TRUE(i.goaway[1]);
  EXPECT_EQ(i.goaway_last_stream[1], 1u);
  EXPECT_EQ(i.goaway_error[1], 2u);
  EXPECT_EQ(i.goaway_debug[1], "bye");
}

TEST(Http2Parse, ServerPush) {
  Conn k;
  k.start();
  k.c(w::headers(1, k.req(get("/page")), {.end_stream = true}));
  k.s(w::push_promise(1, 2, k.resp(get("/style.css"))));
  k.s(w::headers(1, k.resp({{":status", "200"}, {"content-type", "text/html"}})));
  k.s(w::headers(2, k.resp({{":status", "200"}, {"content-type", "text/css"}})) + w::data(2, "body{}", true));
  k.s(w::data(1, "<html>", true));
  auto r = all_ways(k.conv);
  ASSERT_EQ(r->out.size(), 2u) << describe(r->out);
  const Http2Exchange& p = r->out[0];
  EXPECT_EQ(p.stream_id, 2u);
  EXPECT_TRUE(p.pushed);
  EXPECT_EQ(p.promised_on, 1u);
  EXPECT_EQ(p.method, "GET");
  EXPECT_EQ(p.path, "/style.css");
  EXPECT_EQ(p.authority, "example.com");
  EXPECT_TRUE(p.request.end_stream);
  EXPECT_EQ(p.status, 200);
  EXPECT_EQ(names(p.response.headers), "content-type=text/css;");
  EXPECT_EQ(p.response.body, "body{}");
  const Http2Exchange& e = r->out[1];
  EXPECT_EQ(e.stream_id, 1u);
  EXPECT_FALSE(e.pushed);
  EXPECT_EQ(e.response.body, "<html>");
  EXPECT_EQ(e.response.frames, 3u);  // PUSH_PROMISE, HEADERS, DATA
}

TEST(Http2Parse, BodyKeptUpToCapCountedBeyond) {
  Conn k;
  k.start();
  k.c(w::headers(1, k.req({{":method", "PUT"}, {":scheme", "https"}, {":path", "/f"}})) + w::data(1, std::string(40, 'a'), false) +
      w::data(1, std::string(60, 'b'), true, 3));
  k.s(w::headers(1, k.resp({{":status", "204"}}), {.end_stream = true}));
  Http2Limits lim;
  lim.max_body_kept = 50;
  auto r = all_ways(k.conv, lim);
  ASSERT_EQ(r->out.size(), 1u);
  EXPECT_EQ(r->out[0].request.body, std::string(40, 'a') + std::string(10, 'b'));
  EXPECT_EQ(r->out[0].request.body_size, 100u);
  EXPECT_TRUE(r->out[0].request.body_truncated);
}

TEST(Http2Parse, CloseEmitsOpenStreamsIncomplete) {
  Conn k;
  k.start();
  k.c(w::headers(1, k.req(get("/1")), {.end_stream = true}));
  k.c(w::headers(3, k.req(get("/3")), {.end_stream = true}));
  k.s(w::headers(3, k.resp({{":status", "200"}})) + w::data(3, "half", false));
  auto r = all_ways(k.conv);
  ASSERT_EQ(r->out.size(), 2u);
  EXPECT_EQ(r->out[0].stream_id, 1u);  // in the order they opened
  EXPECT_EQ(r->out[1].stream_id, 3u);
  EXPECT_TRUE(r->out[0].incomplete && r->out[1].incomplete);
  EXPECT_EQ(r->out[1].response.body, "half");
  EXPECT_EQ(r->p.open_streams(), 0u);
}

// What the fuzzer found: frames after END_STREAM belong to no message; a
// :status that is not 100-999 is none; PUSH_PROMISE only on a client's stream.
TEST(Http2Parse, ProtocolViolationsIgnored) {
  Conn k;
  k.start();
  k.c(w::headers(1, k.req(get("/")), {.end_stream = true}) + w::data(1, "late", false));
  k.s(w::push_promise(2, 4, k.resp(get("/pushed"))));  // on an even stream
  k.s(w::headers(1, k.resp({{":status", "010"}})) + w::data(1, "body", true) + w::data(1, "more", true));
  auto r = all_ways(k.conv);
  ASSERT_EQ(r->out.size(), 1u) << describe(r->out);
  const Http2Exchange& e = r->out[0];
  EXPECT_EQ(e.status, 0);
  EXPECT_EQ(e.request.body_size, 0u);
  EXPECT_EQ(e.response.body, "body");
  EXPECT_EQ(r->p.info().malformed_frames[1], 1u);
  EXPECT_EQ(r->p.info().orphan_frames, 2u);  // the client's late DATA, the server's DATA after the exchange ended
}

// ---- HPACK ------------------------------------------------------------------------

TEST(Http2Hpack, TableSizeFollowsAckedSettings) {
  // The client allows a 64 KiB table; once the server acks, its encoder uses
  // it (a size update to 65536, then entries far beyond 4096 bytes).
  const w::Fields big = {{":status", "200"}, {"x-a", std::string(9000, 'a')}, {"x-b", std::string(9000, 'b')}};
  for (bool ack : {true, false}) {
    SCOPED_TRACE(ack ? "acked" : "never acked");
    Conn k;
    w::Deflater sd(65536);
    k.c(std::string(kHttp2Preface) + w::settings({{0x1, 65536}}));
    k.s(w::settings({}) + (ack ? w::settings_ack() : ""));
    k.c(w::settings_ack());
    sd.change_table_size(65536);
    for (uint32_t sid : {1u, 3u}) {
      k.c(w::headers(sid, k.req(get("/")), {.end_stream = true}));
      k.s(w::headers(sid, sd.block(big), {.end_stream = true}));
    }
    auto r = all_ways(k.conv, {}, false);
    ASSERT_EQ(r->out.size(), 2u);
    // The second block refers to the first's entries by index.
    const Http2Exchange& e = r->out[1];
    EXPECT_EQ(e.status, 200);
    EXPECT_FALSE(e.hpack_error);
    if (ack) {
      EXPECT_FALSE(e.hpack_unknown);
      EXPECT_EQ(names(e.response.headers), "x-a=" + big[1].second + ";x-b=" + big[2].second + ";");
    } else {
      // Without the ack the size update is clamped to 4096: the entries do
      // not fit, and their references come out unknown.
      EXPECT_TRUE(e.hpack_unknown);
      EXPECT_EQ(e.response.headers.size(), 0u);
    }
  }
}

TEST(Http2Hpack, TableShrinkAcked) {
  Conn k;
  k.start({{0x1, 0}});  // the client wants no dynamic table
  k.sd.change_table_size(0);
  k.c(w::headers(1, k.req(get("/")), {.end_stream = true}));
  k.s(w::headers(1, k.resp({{":status", "200"}, {"x-a", "1"}}), {.end_stream = true}));
  k.c(w::headers(3, k.req(get("/")), {.end_stream = true}));
  k.s(w::headers(3, k.resp({{":status", "200"}, {"x-a", "1"}}), {.end_stream = true}));
  auto r = all_ways(k.conv);
  ASSERT_EQ(r->out.size(), 2u);
  for (const auto& e : r->out) {
    EXPECT_FALSE(e.hpack_error || e.hpack_unknown) << describe(e);
    EXPECT_EQ(names(e.response.headers), "x-a=1;");
  }
}

TEST(Http2Hpack, DecoderUnknownIndexRecoversLiterals) {
  // A decoder that missed the block inserting "x-trace: abc".
  w::Deflater enc;
  enc.block({{"x-trace", "abc"}, {"x-span", "s1"}});
  const std::string blk = enc.block({{":method", "GET"}, {"x-trace", "def"}, {"x-span", "s1"}, {"x-new", "v"}});
  HpackDecoder dec(4096);
  dec.reset();  // joined late
  HpackResult r;
  dec.decode(bytes(blk), 65536, r);
  EXPECT_FALSE(r.error);
  EXPECT_EQ(r.unknown, 2u);  // x-span dropped, x-trace's name unknown
  EXPECT_EQ(names(r.fields), ":method=GET;(unknown)=def;x-new=v;");
  // The decoder stays in step: the entries it inserted are referred to next.
  const std::string blk2 = enc.block({{"x-new", "v"}, {"x-trace", "def"}});
  dec.decode(bytes(blk2), 65536, r);
  EXPECT_FALSE(r.error);
  EXPECT_EQ(names(r.fields), "x-new=v;(unknown)=def;");
  EXPECT_EQ(r.unknown, 1u);  // the placeholder name, again
}

TEST(Http2Hpack, SmallTableCapLosesEntriesNotBlocks) {
  // Our table is capped below what the encoder uses: its references to
  // entries we could not hold come out unknown; nothing fails.
  w::Deflater enc;
  HpackDecoder dec(256);
  HpackResult r;
  const w::Fields f = {{"x-a", std::string(300, 'a')}, {"x-b", "1"}};
  dec.decode(bytes(enc.block(f)), 65536, r);
  EXPECT_FALSE(r.error);
  EXPECT_EQ(r.fields.size(), 2u);
  dec.decode(bytes(enc.block(f)), 65536, r);  // both fields by index now
  EXPECT_FALSE(r.error);
  EXPECT_EQ(r.unknown, 1u);
  EXPECT_EQ(names(r.fields), "x-b=1;");
  EXPECT_TRUE(dec.synced());
  HpackDecoder none(0);
  none.decode(bytes(w::Deflater().block({{":method", "GET"}, {"x-c", "3"}})), 65536, r);
  EXPECT_FALSE(r.error);
  EXPECT_EQ(names(r.fields), ":method=GET;x-c=3;");
}

TEST(Http2Hpack, CorruptBlockResetsDecoder) {
  w::Deflater enc;
  HpackDecoder dec(4096);
  HpackResult r;
  dec.decode(bytes(enc.block({{"x-a", "1"}})), 65536, r);
  ASSERT_FALSE(r.error);
  // Index 0 is never valid; a string running past the block's end neither.
  for (std::string bad : {std::string("\x82\x80", 2), std::string("\x82\x40\x05x-a", 6)}) {
    dec.decode(bytes(bad), 65536, r);
    EXPECT_TRUE(r.error);
    EXPECT_EQ(names(r.fields), ":method=GET;");  // what came before the error
    EXPECT_FALSE(dec.synced());
  }
  // Huffman garbage: nghttp2 fails; the decoder starts over.
  dec.decode(bytes(std::string("\x40\x81\xff\x81\xff", 5)), 65536, r);
  EXPECT_TRUE(r.error);
  dec.decode(bytes(std::string("\x82", 1)), 65536, r);
  EXPECT_FALSE(r.error);
  EXPECT_EQ(names(r.fields), ":method=GET;");
}

// ---- joining mid-connection --------------------------------------------------

TEST(Http2MidJoin, ResyncsAndRecoversWhatCanBe) {
  Conn k;  // (its blocks are encoded in send order: the encoders' tables are those of the full connection)
  const std::string a100(100, 'A');
  const std::string c1 =
      w::headers(1, k.req({{":method", "POST"}, {":scheme", "https"}, {":path", "/one"}, {"x-trace", "abc"}, {"x-span", "s1"}})) +
      w::data(1, a100, false) + w::data(1, "tail", true);
  const std::string s1 = w::headers(1, k.resp({{":status", "200"}, {"content-type", "text/plain"}})) + w::data(1, a100, false) +
                         w::data(1, "done", true);
  const std::string c3 = w::headers(3,
                                    k.req({{":method", "GET"}, {":scheme", "https"}, {":path", "/three"}, {"x-trace", "def"},
                                           {"x-span", "s1"}, {"x-new", "v3"}}),
                                    {.end_stream = true});
  const std::string s3 = w::headers(3, k.resp({{":status", "200"}, {"content-type", "text/plain"}}), {.end_stream = true});
  const std::string c5 =
      w::headers(5, k.req({{":method", "GET"}, {":scheme", "https"}, {":path", "/five"}, {"x-new", "v3"}}), {.end_stream = true});
  const std::string s5 = w::headers(5, k.resp({{":status", "404"}}), {.end_stream = true});
  // The capture begins 40 bytes into each side's first DATA payload: the
  // preface, SETTINGS and stream 1's header blocks were never seen.
  const Conv late = {{kC, c1.substr(c1.find(a100) + 40)}, {kS, s1.substr(s1.find(a100) + 40)}, {kC, c3}, {kS, s3},
                     {kC, c5}, {kS, s5}};
  auto r = all_ways(late);
  ASSERT_EQ(r->out.size(), 3u) << describe(r->out);
  const Http2ConnInfo& i = r->p.info();
  EXPECT_FALSE(i.preface);
  EXPECT_TRUE(i.resynced[0] && i.resynced[1]);
  EXPECT_EQ(i.skipped_bytes[0], 60u);  // the rest of the 100-byte payload, and no more
  EXPECT_EQ(i.skipped_bytes[1], 60u);

  const Http2Exchange& e1 = *by_sid(r->out, 1);
  EXPECT_TRUE(e1.partial);
  EXPECT_EQ(e1.method, "");
  EXPECT_EQ(e1.request.body, "tail");
  EXPECT_EQ(e1.response.body, "done");
  EXPECT_EQ(e1.status, 0);

  const Http2Exchange& e3 = *by_sid(r->out, 3);
  EXPECT_FALSE(e3.partial);
  EXPECT_TRUE(e3.hpack_unknown);
  EXPECT_FALSE(e3.hpack_error);
  EXPECT_EQ(e3.method, "GET");
  EXPECT_EQ(e3.path, "/three");  // a literal (nghttp2 never indexes :path)
  // x-trace's name was an entry inserted before the join: its value survives;
  // x-span was a reference to such an entry: lost.
  EXPECT_EQ(names(e3.request.headers), "(unknown)=def;x-new=v3;");
  EXPECT_EQ(e3.status, 200);
  EXPECT_EQ(names(e3.response.headers), "");  // content-type referred to an unseen entry

  // Stream 5 refers only to entries inserted in blocks we saw: all decoded.
  const Http2Exchange& e5 = *by_sid(r->out, 5);
  EXPECT_FALSE(e5.hpack_unknown) << describe(e5);
  EXPECT_EQ(e5.path, "/five");
  EXPECT_EQ(names(e5.request.headers), "x-new=v3;");
  EXPECT_EQ(e5.status, 404);
}

TEST(Http2MidJoin, SkipsGarbageToAFrameBoundary) {
  Conn k;
  k.c(std::string(37, '\xff'));  // the end of something we joined in the middle of
  k.c(w::headers(7, k.req(get("/seven")), {.end_stream = true}) + w::window_update(7, 10));
  k.s(std::string(5, '\xff'));
  k.s(w::headers(7, k.resp({{":status", "200"}}), {.end_stream = true}) + w::ping());
  auto r = all_ways(k.conv);
  ASSERT_EQ(r->out.size(), 1u) << describe(r->out);
  EXPECT_EQ(r->out[0].path, "/seven");
  EXPECT_EQ(r->out[0].status, 200);
  EXPECT_EQ(r->p.info().skipped_bytes[0], 37u);
  EXPECT_EQ(r->p.info().skipped_bytes[1], 5u);
  EXPECT_FALSE(r->out[0].partial);  // its HEADERS was seen
}

TEST(Http2MidJoin, ServerDirectionStartsWithSettings) {
  // The server's first bytes are a SETTINGS frame: that is the start, no
  // need to see a second frame (it may be a while before the server speaks again).
  Http2Parser p;
  std::vector<Http2Exchange> out;
  p.feed(kC, bytes(std::string(kHttp2Preface) + w::settings({})), 1, out);
  p.feed(kS, bytes(w::settings({{0x3, 10}})), 2, out);
  EXPECT_EQ(p.info().settings[1].max_concurrent_streams, 10u);
  EXPECT_FALSE(p.info().resynced[1]);
}

TEST(Http2MidJoin, Detection) {
  Conn k;
  k.start();
  k.c(w::headers(1, k.req(get("/")), {.end_stream = true}));
  std::string client;
  for (const Seg& s : k.conv)
    if (s.dir == kC) client += s.bytes;
  EXPECT_TRUE(looks_like_http2(bytes(client)));
  EXPECT_TRUE(looks_like_http2(bytes(client.substr(0, 14))));
  EXPECT_FALSE(looks_like_http2(bytes(client.substr(0, 3))));
  EXPECT_TRUE(looks_like_http2(bytes(w::settings({{0x3, 100}})), kS));  // a server's first bytes
  const std::string mid = w::headers(5, k.req(get("/x"))) + w::data(5, "abc", true) + w::window_update(0, 1);
  EXPECT_TRUE(looks_like_http2(bytes(mid), kC));
  EXPECT_FALSE(looks_like_http2(bytes(mid.substr(0, 12)), kC));  // one header, its payload cut: too little to tell
  EXPECT_FALSE(looks_like_http2(bytes(w::headers(4, "\x82")), kC));  // clients open odd streams
  EXPECT_FALSE(looks_like_http2(bytes("GET / HTTP/1.1\r\nHost: a\r\n\r\n")));
  EXPECT_FALSE(looks_like_http2(bytes("HTTP/1.1 200 OK\r\n\r\n")));
  EXPECT_FALSE(looks_like_http2(bytes(w::frame_header(0, 0, 1, 20000) + std::string(20000, 'x'))));  // over 16384
  EXPECT_FALSE(looks_like_http2(bytes(w::frame_header(0x3, 0, 1, 5) + "12345")));  // RST_STREAM is 4 bytes
  EXPECT_FALSE(looks_like_http2({}));
}

TEST(Http2MidJoin, GapResynchronises) {
  Conn k;
  k.start();
  k.c(w::headers(1, k.req(get("/1")), {.end_stream = true}) + w::headers(3, k.req(get("/3")), {.end_stream = true}));
  Feed r{Http2Limits{}};
  for (const Seg& s : k.conv) r.p.feed(s.dir, bytes(s.bytes), 1, r.out);
  r.p.feed(kS, bytes(w::headers(1, k.resp({{":status", "200"}})) + w::data(1, std::string(100, 'z'), false).substr(0, 50)), 2,
           r.out);
  r.p.on_gap(kS, 1000);
  const std::string after = w::data(1, std::string(30, 'z'), true) + w::headers(3, k.resp({{":status", "200"}}), {.end_stream = true}) +
                            w::ping();
  r.p.feed(kS, bytes(after.substr(10)), 3, r.out);  // the gap ended inside a frame
  r.p.on_close(4, r.out);
  ASSERT_EQ(r.out.size(), 2u) << describe(r.out);
  const Http2Exchange& e3 = *by_sid(r.out, 3);
  EXPECT_EQ(e3.status, 200);
  EXPECT_TRUE(e3.gap);
  EXPECT_FALSE(e3.incomplete);
  const Http2Exchange& e1 = *by_sid(r.out, 1);
  EXPECT_TRUE(e1.gap);
  EXPECT_TRUE(e1.incomplete);
  EXPECT_EQ(e1.response.body.size(), 50u - 9u);
}

// ---- hostile input ----------------------------------------------------------------

TEST(Http2Hostile, FrameOverCapStopsDirection) {
  Conn k;
  k.start();
  k.c(w::headers(1, k.req(get("/")), {.end_stream = true}));
  // A 16 MiB frame header: over the receiver's SETTINGS_MAX_FRAME_SIZE (16384: the client's SETTINGS had none).
  k.s(w::frame_header(0, 0, 1, (1u << 24) - 1) + std::string(5000, 'x'));
  k.s(w::headers(1, k.resp({{":status", "200"}}), {.end_stream = true}));  // never parsed
  auto r = all_ways(k.conv);
  EXPECT_TRUE(r->p.info().stopped[1]);
  EXPECT_FALSE(r->p.info().stopped[0]);
  EXPECT_EQ(r->p.info().skipped_bytes[1], 5000u + k.conv.back().bytes.size());
  ASSERT_EQ(r->out.size(), 1u);
  EXPECT_TRUE(r->out[0].incomplete);
  EXPECT_EQ(r->out[0].status, 0);
  EXPECT_LT(r->max_memory, 64u * 1024);
  // The status says so once.
  auto w1 = run(k.conv, Split::Whole);
  EXPECT_EQ(std::count(w1->statuses.begin(), w1->statuses.end(), ParseStatus::Invalid), 1);
}

TEST(Http2Hostile, FrameSizeFromSettingsAndHardCap) {
  // The client announces 1 MiB frames: a 20000-byte DATA frame is fine.
  Conn k;
  k.start({{0x5, 1u << 20}});
  k.c(w::headers(1, k.req(get("/")), {.end_stream = true}));
  k.s(w::headers(1, k.resp({{":status", "200"}})) + w::data(1, std::string(20000, 'd'), true));
  auto r = all_ways(k.conv, {}, false);
  ASSERT_EQ(r->out.size(), 1u);
  EXPECT_EQ(r->out[0].response.body_size, 20000u);
  EXPECT_FALSE(r->p.info().stopped[1]);
  // The hard cap holds whatever SETTINGS say; nothing of the frame is allocated.
  Http2Limits lim;
  lim.max_frame_size = 16384;
  auto r2 = run(k.conv, Split::Random, 3, lim);
  EXPECT_TRUE(r2->p.info().stopped[1]);
  EXPECT_LT(r2->max_memory, 64u * 1024);
}

TEST(Http2Hostile, HpackBombIsCapped) {
  Conn k;
  k.start();
  // One 4000-byte entry, then 20000 one-byte references to it: ~80 MB of
  // decoded fields from a 24 KB block.
  std::string bomb = "\x40\x06x-bomb";
  bomb += "\x7f";  // value length 4000: 127 + 3873 as an HPACK integer
  bomb += static_cast<char>(0x80 | (3873 & 0x7f));
  bomb += static_cast<char>(3873 >> 7);
  bomb += std::string(4000, 'b');
  bomb += "\x82\x86\x84";  // :method GET, :scheme http, :path /
  bomb += std::string(20000, '\xbe');  // index 62: the bomb entry
  k.c(w::headers(1, bomb.substr(0, 16000), {.end_headers = false}) + w::continuation(1, bomb.substr(16000), true) +
      w::data(1, "", true));
  k.s(w::headers(1, k.resp({{":status", "200"}}), {.end_stream = true}));
  // The same connection goes on: the table is still in step.
  k.c(w::headers(3, k.req(get("/after")), {.end_stream = true}));
  k.s(w::headers(3, k.resp({{":status", "200"}}), {.end_stream = true}));
  auto r = all_ways(k.conv, {}, false);
  ASSERT_EQ(r->out.size(), 2u);
  const Http2Exchange& e = r->out[0];
  EXPECT_TRUE(e.request.headers_truncated);
  EXPECT_EQ(e.method, "GET");  // before the cap: kept
  EXPECT_EQ(e.path, "/");
  EXPECT_EQ(e.request.header_bytes, 20001u * (6 + 4000 + 32) + (7 + 3 + 32) + (7 + 4 + 32) + (5 + 1 + 32));
  size_t kept = 0;
  for (const Header& h : e.request.headers) kept += h.name.size() + h.value.size() + 32;
  EXPECT_LE(kept, 64u * 1024);
  EXPECT_EQ(e.request.headers.size(), 16u);  // 16 x 4038 fit in 64 KiB
  EXPECT_LE(r->max_held, 70u * 1024);
  EXPECT_LT(r->max_memory, 300u * 1024);
  EXPECT_EQ(r->out[1].path, "/after");
  EXPECT_FALSE(r->out[1].hpack_error || r->out[1].hpack_unknown);
}

TEST(Http2Hostile, StreamCapEvictsOldest) {
  Conn k;
  k.start();
  std::string c;
  for (uint32_t n = 0; n < 1100; n++) c += w::headers(2 * n + 1, k.req(get("/" + std::to_string(n))));
  k.c(c);
  k.c(w::data(2 * 1099 + 1, "", true));
  k.s(w::headers(2 * 1099 + 1, k.resp({{":status", "200"}}), {.end_stream = true}));
  auto r = run(k.conv, Split::Random, 5, {}, false);
  EXPECT_LE(r->max_streams, 1024u);
  ASSERT_EQ(r->out.size(), 76u + 1u);
  for (uint32_t n = 0; n < 76; n++) {
    EXPECT_EQ(r->out[n].stream_id, 2 * n + 1);
    EXPECT_TRUE(r->out[n].evicted);
    EXPECT_EQ(r->out[n].path, "/" + std::to_string(n));
  }
  EXPECT_EQ(r->out[76].stream_id, 2199u);
  EXPECT_FALSE(r->out[76].evicted);
  EXPECT_EQ(r->out[76].status, 200);
  EXPECT_EQ(r->p.info().evicted_streams, 76u);
  EXPECT_EQ(r->p.open_streams(), 1023u);
}

TEST(Http2Hostile, ContinuationFlood) {
  Conn k;
  k.start();
  std::string flood = w::headers(1, "\x82", {.end_headers = false});
  for (int i = 0; i < 5000; i++) flood += w::continuation(1, "\x84\x86", false);
  flood += w::continuation(1, "", true);
  k.c(flood);
  k.c(w::headers(3, k.req(get("/after")), {.end_stream = true}));
  k.s(w::headers(3, k.resp({{":status", "200"}}), {.end_stream = true}));
  auto r = all_ways(k.conv, {}, false);
  ASSERT_EQ(r->out.size(), 2u) << describe(r->out);
  const Http2Exchange& e3 = r->out[0];
  EXPECT_EQ(e3.path, "/after");
  EXPECT_EQ(e3.status, 200);
  const Http2Exchange& e1 = r->out[1];
  EXPECT_EQ(e1.stream_id, 1u);
  EXPECT_TRUE(e1.header_overflow);
  EXPECT_TRUE(e1.incomplete);
  EXPECT_EQ(e1.method, "");
  EXPECT_EQ(r->p.info().header_overflows[0], 1u);
  EXPECT_LE(r->max_buffered, 64u * 2 + 1);  // dropped at the 65th CONTINUATION
}

TEST(Http2Hostile, HeaderBlockTooBig) {
  Conn k;
  k.start();
  // 70000 bytes in one literal: over max_header_block_bytes. The encoder's
  // table changed in that block: later blocks decode as after a late join.
  // GET, https, :path "/big" (a literal), then x-big: 70000 bytes (length 127 + 69873 as an HPACK integer).
  std::string big = std::string("\x82\x87\x04\x04/big\x00\x05x-big\x7f\xf1\xa1\x04", 19) + std::string(70000, 'q');
  std::string frames = w::headers(1, big.substr(0, 16000), {.end_stream = true, .end_headers = false});
  for (size_t at = 16000; at < big.size(); at += 16000)
    frames += w::continuation(1, big.substr(at, 16000), at + 16000 >= big.size());
  k.c(frames);
  k.s(w::headers(1, k.resp({{":status", "431"}}), {.end_stream = true}));
  k.c(w::headers(3, k.req(get("/small")), {.end_stream = true}));
  k.s(w::headers(3, k.resp({{":status", "200"}}), {.end_stream = true}));
  auto r = all_ways(k.conv, {}, false);
  ASSERT_EQ(r->out.size(), 2u) << describe(r->out);
  EXPECT_TRUE(r->out[0].header_overflow);
  EXPECT_EQ(r->out[0].status, 431);
  EXPECT_EQ(r->out[0].method, "");
  EXPECT_EQ(r->out[1].path, "/small");
  EXPECT_EQ(r->out[1].status, 200);
  EXPECT_LE(r->max_buffered, 64u * 1024);
}

TEST(Http2Hostile, HeldBytesBudget) {
  Conn k;
  k.start();
  for (uint32_t sid = 1; sid < 40; sid += 2)
    k.c(w::headers(sid, k.req({{":method", "POST"}, {":scheme", "https"}, {":path", "/p"}})) + w::data(sid, std::string(1000, 'p'), false));
  Http2Limits lim;
  lim.max_held_bytes = 10000;
  auto r = all_ways(k.conv, lim, false);
  EXPECT_LE(r->max_held, 10000u);
  ASSERT_EQ(r->out.size(), 20u);
  EXPECT_FALSE(r->out[0].memory_capped);
  EXPECT_EQ(r->out[0].request.body.size(), 1000u);
  EXPECT_TRUE(r->out[19].memory_capped);
  EXPECT_TRUE(r->out[19].request.body_truncated);
  EXPECT_EQ(r->out[19].request.body_size, 1000u);
}

TEST(Http2Hostile, MalformedFramesSkippedInStep) {
  Conn k;
  k.start();
  k.c(w::frame(Http2FrameType::RstStream, 0, 1, "12345") +  // RST_STREAM is 4 bytes
      w::frame(Http2FrameType::Settings, 0, 1, "") +  // SETTINGS on a stream
      w::frame(Http2FrameType::Ping, 0, 0, "1234") +  // PING is 8 bytes
      w::goaway(0x1234, 0, std::string(10000, 'g')) +  // well-formed; its debug data is capped
      w::continuation(9, "\x82", true));  // a CONTINUATION after no HEADERS
  k.c(w::headers(1, k.req(get("/ok")), {.end_stream = true}));
  k.s(w::frame_header(0, h2flag::kPadded | h2flag::kEndStream, 1, 11) + std::string(1, '\xff') + std::string(10, 'x') +  // padding > payload
      w::headers(1, k.resp({{":status", "200"}}), {.end_stream = true}));
  auto r = all_ways(k.conv, {}, false);
  ASSERT_EQ(r->out.size(), 1u) << describe(r->out);
  EXPECT_EQ(r->out[0].path, "/ok");
  EXPECT_EQ(r->out[0].status, 200);
  EXPECT_EQ(r->p.info().malformed_frames[0], 4u);
  EXPECT_EQ(r->p.info().malformed_frames[1], 1u);
  EXPECT_EQ(r->p.info().goaway_debug[0].size(), 256u);
}

}  // namespace
