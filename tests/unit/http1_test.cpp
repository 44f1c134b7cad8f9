// HTTP/1.x parser: every message in one go, byte by byte, at random split
// points (fixed seeds) and followed by junk; partial headers and bodies,
// invalid input, caps, gaps, detection. The fixtures in tests/fixtures/http1/
// are real curl 7.88.1 <-> nginx 1.22.1 exchanges recorded on loopback
// (NAME.req: client->server bytes, NAME.resp: server->client bytes).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "http1.hpp"

namespace {

using tapwire::proto::Header;
using tapwire::proto::Http1Parser;
using tapwire::proto::HttpLimits;
using tapwire::proto::HttpMessage;
using tapwire::proto::ParseResult;
using tapwire::proto::ParseStatus;
using Side = Http1Parser::Side;

constexpr Side kReq = Side::Requests;
constexpr Side kResp = Side::Responses;

std::span<const uint8_t> bytes(std::string_view s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

std::string fixture(const std::string& name) {
  const auto path = std::filesystem::path(__FILE__).parent_path() / ".." / "fixtures" / "http1" / name;
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << "missing fixture " << path;
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Feeds a parser the way the dissector does: what feed() leaves unconsumed
// is presented again with the next piece in front of it.
struct Driver {
  explicit Driver(Side side, HttpLimits lim = {}) : p(side, lim) {}

  void push(std::string_view piece, uint64_t ts) {
    buf.append(piece);
    size_t used = 0;
    for (int guard = 0;; guard++) {
      ASSERT_LT(guard, 1000000) << "feed() does not progress";
      std::span<const uint8_t> in = bytes(buf);
      const ParseResult r = p.feed(in.subspan(used), ts, out);
      ASSERT_LE(r.consumed, buf.size() - used);
      used += r.consumed;
      calls++;
      if (r.status == ParseStatus::Invalid) invalid_results++;
      if (r.status == ParseStatus::NeedMoreData) {
        ASSERT_EQ(r.consumed, 0u);
      }
      if (r.status == ParseStatus::NeedMoreData || r.consumed == 0 || used == buf.size()) break;
    }
    buf.erase(0, used);
    max_buffered = std::max(max_buffered, buf.size());
  }
  void close(uint64_t ts) { p.on_close(ts, out); }
  void gap(uint64_t len) {
    p.on_gap(len);
    buf.clear();  // what was not consumed before the gap is gone
  }

  Http1Parser p;
  std::string buf;
  std::vector<HttpMessage> out;
  size_t invalid_results = 0, calls = 0, max_buffered = 0;
};

std::vector<std::string_view> split_one(std::string_view s) { return {s}; }

std::vector<std::string_view> split_bytes(std::string_view s) {
  std::vector<std::string_view> v;
  for (size_t i = 0; i < s.size(); i++) v.push_back(s.substr(i, 1));
  return v;
}

std::vector<std::string_view> split_random(std::string_view s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::string_view> v;
  size_t i = 0;
  while (i < s.size()) {
    const size_t len = 1 + rng() % 97;
    v.push_back(s.substr(i, std::min(len, s.size() - i)));
    i += len;
  }
  return v;
}

struct Way {
  std::string name;
  std::vector<std::string_view> pieces;
};

std::vector<Way> all_ways(std::string_view s) {
  std::vector<Way> w{{"one go", split_one(s)}, {"byte by byte", split_bytes(s)}};
  for (uint32_t seed : {1u, 2u, 3u, 42u, 1234u}) w.push_back({"random seed " + std::to_string(seed), split_random(s, seed)});
  return w;
}

struct RunOptions {
  std::vector<std::string> expect;  // methods the responses answer, in order
  bool close = true;  // call on_close at the end
  HttpLimits lim = {};
};

Driver run(Side side, const std::vector<std::string_view>& pieces, const RunOptions& o) {
  Driver d(side, o.lim);
  for (const std::string& m : o.expect) d.p.expect_response_to(m);
  uint64_t ts = 1000;
  for (std::string_view piece : pieces) d.push(piece, ts++);
  if (o.close) d.close(ts);
  return d;
}

void expect_same(const HttpMessage& a, const HttpMessage& b, const std::string& way) {
  SCOPED_TRACE(way);
  EXPECT_EQ(a.is_request, b.is_request);
  EXPECT_EQ(a.method, b.method);
  EXPECT_EQ(a.target, b.target);
  EXPECT_EQ(a.status, b.status);
  EXPECT_EQ(a.reason, b.reason);
  EXPECT_EQ(a.version_minor, b.version_minor);
  ASSERT_EQ(a.headers.size(), b.headers.size());
  for (size_t i = 0; i < a.headers.size(); i++) {
    EXPECT_EQ(a.headers[i].name, b.headers[i].name);
    EXPECT_EQ(a.headers[i].value, b.headers[i].value);
  }
  ASSERT_EQ(a.trailers.size(), b.trailers.size());
  EXPECT_EQ(a.header_bytes, b.header_bytes);
  EXPECT_EQ(a.body_size, b.body_size);
  EXPECT_EQ(a.wire_size, b.wire_size);
  EXPECT_EQ(a.body, b.body);
  EXPECT_EQ(a.chunked, b.chunked);
  EXPECT_EQ(a.body_truncated, b.body_truncated);
  EXPECT_EQ(a.headers_truncated, b.headers_truncated);
  EXPECT_EQ(a.gap, b.gap);
  EXPECT_EQ(a.close_delimited, b.close_delimited);
  EXPECT_EQ(a.upgrade, b.upgrade);
  EXPECT_EQ(a.websocket, b.websocket);
  EXPECT_EQ(a.interim, b.interim);
  EXPECT_LE(a.ts_first_ns, a.ts_last_ns);
}

// Parses `s` every way; all ways must agree and none may report Invalid.
// Returns the one-go messages.
std::vector<HttpMessage> parse_every_way(Side side, std::string_view s, const RunOptions& o = {}) {
  std::vector<HttpMessage> ref;
  for (const Way& w : all_ways(s)) {
    Driver d = run(side, w.pieces, o);
    EXPECT_EQ(d.p.invalid_count(), 0u) << w.name;
    EXPECT_EQ(d.invalid_results, 0u) << w.name;
    if (w.name == "one go") {
      ref = std::move(d.out);
      continue;
    }
    EXPECT_EQ(d.out.size(), ref.size()) << w.name;
    for (size_t i = 0; i < std::min(d.out.size(), ref.size()); i++) expect_same(d.out[i], ref[i], w.name);
  }
  return ref;
}

// The same messages followed by junk: the junk is reported Invalid and skipped,
// the messages still come out, and a message after the junk is found again.
const std::string kJunk = std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11) + "garbage line\r\n" +
                          std::string("\x00\xff\xfe junk\n\n\r\n", 12) + "ZZZZ / HTTP/1.1\r\n\r\n" + "HTTP/9.9 xyz\r\n";

void parse_with_junk(Side side, std::string_view s, size_t n_messages, const RunOptions& o = {}) {
  std::string with_junk = std::string(s) + kJunk;
  std::string with_junk_then_more = with_junk + std::string(s);
  RunOptions o2 = o;
  for (const std::string& m : o.expect) o2.expect.push_back(m);  // the messages come twice
  for (const Way& w : all_ways(with_junk)) {
    Driver d = run(side, w.pieces, o);
    SCOPED_TRACE(w.name);
    EXPECT_EQ(d.out.size(), n_messages);
    EXPECT_GE(d.p.invalid_count(), 1u);
    EXPECT_GE(d.invalid_results, 1u);
    EXPECT_TRUE(d.buf.empty());  // the junk was skipped, not held
  }
  for (const Way& w : all_ways(with_junk_then_more)) {
    Driver d = run(side, w.pieces, o2);
    SCOPED_TRACE(w.name + " (message after junk)");
    EXPECT_EQ(d.out.size(), 2 * n_messages);
    for (size_t i = 0; i < std::min(d.out.size(), 2 * n_messages) / 2; i++)
      expect_same(d.out[i], d.out[i + n_messages], w.name);
    EXPECT_GE(d.p.invalid_count(), 1u);
  }
}

size_t header_end(std::string_view s, size_t from = 0) { return s.find("\r\n\r\n", from) + 4; }

// ------------------------------------------------------ real exchanges ---

TEST(Http1Fixtures, KeepAliveGetTwice) {
  const std::string req = fixture("get_keepalive.req"), resp = fixture("get_keepalive.resp");
  auto r = parse_every_way(kReq, req);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].method, "GET");
  EXPECT_EQ(r[0].target, "/");
  EXPECT_EQ(r[1].target, "/index.html");
  EXPECT_EQ(r[0].version_minor, 1);
  ASSERT_NE(r[0].header("host"), nullptr);
  EXPECT_EQ(*r[0].header("host"), "127.0.0.1:18080");
  EXPECT_EQ(*r[0].header("user-agent"), "curl/7.88.1");
  EXPECT_EQ(r[0].body_size, 0u);
  EXPECT_EQ(r[0].header_bytes + r[1].header_bytes, req.size());
  auto s = parse_every_way(kResp, resp, {.expect = {"GET", "GET"}});
  ASSERT_EQ(s.size(), 2u);
  for (const HttpMessage& m : s) {
    EXPECT_EQ(m.status, 200);
    EXPECT_EQ(m.reason, "OK");
    EXPECT_EQ(m.body, "<html><body>hello</body></html>\n");
    EXPECT_EQ(m.body_size, 32u);
    EXPECT_EQ(*m.header("content-length"), "32");
    EXPECT_FALSE(m.close_delimited);
  }
  EXPECT_EQ(s[0].wire_size + s[1].wire_size, resp.size());
  parse_with_junk(kReq, req, 2);
  parse_with_junk(kResp, resp, 2, {.expect = {"GET", "GET"}});
}

TEST(Http1Fixtures, HeadResponseHasNoBody) {
  const std::string req = fixture("head.req"), resp = fixture("head.resp");
  auto r = parse_every_way(kReq, req);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].method, "HEAD");
  auto s = parse_every_way(kResp, resp, {.expect = {"HEAD"}});
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].status, 200);
  EXPECT_EQ(*s[0].header("content-length"), "32");  // what a GET would have carried
  EXPECT_EQ(s[0].body_size, 0u);
  EXPECT_EQ(s[0].wire_size, resp.size());
  EXPECT_FALSE(s[0].body_truncated);
  parse_with_junk(kReq, req, 1);
  parse_with_junk(kResp, resp, 1, {.expect = {"HEAD"}});
}

TEST(Http1Fixtures, PostFormAnd405) {
  const std::string req = fixture("post_405.req"), resp = fixture("post_405.resp");
  auto r = parse_every_way(kReq, req);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].method, "POST");
  EXPECT_EQ(*r[0].header("content-type"), "application/x-www-form-urlencoded");
  EXPECT_EQ(r[0].body, "name=tapwire&x=1");
  auto s = parse_every_way(kResp, resp, {.expect = {"POST"}});
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].status, 405);
  EXPECT_EQ(s[0].reason, "Not Allowed");
  EXPECT_EQ(s[0].body_size, resp.size() - header_end(resp));
  parse_with_junk(kReq, req, 1);
  parse_with_junk(kResp, resp, 1, {.expect = {"POST"}});
}

TEST(Http1Fixtures, ChunkedUploadWith100Continue) {
  const std::string req = fixture("put_chunked.req"), resp = fixture("put_chunked.resp");
  auto r = parse_every_way(kReq, req);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].method, "PUT");
  EXPECT_TRUE(r[0].chunked);
  EXPECT_EQ(r[0].body, "chunked upload body\n");
  EXPECT_EQ(r[0].body_size, 20u);
  EXPECT_EQ(r[0].wire_size, req.size());
  EXPECT_TRUE(r[0].trailers.empty());
  auto s = parse_every_way(kResp, resp, {.expect = {"PUT"}});
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].status, 100);
  EXPECT_TRUE(s[0].interim);
  EXPECT_EQ(s[0].body_size, 0u);
  EXPECT_EQ(s[1].status, 201);
  EXPECT_FALSE(s[1].interim);
  EXPECT_EQ(*s[1].header("location"), "http://127.0.0.1:18081/dav/b.txt");
  parse_with_junk(kReq, req, 1);
  parse_with_junk(kResp, resp, 2, {.expect = {"PUT"}});
}

TEST(Http1Fixtures, ExpectContinueThenBody) {
  const std::string req = fixture("expect_continue.req"), resp = fixture("expect_continue.resp");
  auto r = parse_every_way(kReq, req);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(*r[0].header("expect"), "100-continue");
  EXPECT_EQ(r[0].body_size, 4053u);
  EXPECT_EQ(r[0].body, req.substr(header_end(req)));
  auto s = parse_every_way(kResp, resp, {.expect = {"PUT"}});
  ASSERT_EQ(s.size(), 2u);
  EXPECT_TRUE(s[0].interim);
  EXPECT_EQ(s[1].status, 201);
  parse_with_junk(kReq, req, 1);
}

TEST(Http1Fixtures, GzipChunkedResponse) {
  const std::string req = fixture("gzip_chunked.req"), resp = fixture("gzip_chunked.resp");
  EXPECT_EQ(parse_every_way(kReq, req).size(), 1u);
  auto s = parse_every_way(kResp, resp, {.expect = {"GET"}});
  ASSERT_EQ(s.size(), 1u);
  EXPECT_TRUE(s[0].chunked);
  EXPECT_EQ(*s[0].header("content-encoding"), "gzip");
  EXPECT_EQ(s[0].wire_size, resp.size());
  EXPECT_GT(s[0].body_size, 1000u);
  EXPECT_EQ(s[0].body.size(), s[0].body_size);
  EXPECT_EQ(static_cast<uint8_t>(s[0].body[0]), 0x1f);  // gzip magic, de-chunked
  EXPECT_EQ(static_cast<uint8_t>(s[0].body[1]), 0x8b);
  parse_with_junk(kResp, resp, 1, {.expect = {"GET"}});
}

TEST(Http1Fixtures, NotModifiedAndNoContentHaveNoBody) {
  for (const char* name : {"not_modified", "no_content"}) {
    SCOPED_TRACE(name);
    const std::string req = fixture(std::string(name) + ".req"), resp = fixture(std::string(name) + ".resp");
    EXPECT_EQ(parse_every_way(kReq, req).size(), 1u);
    // No expectation on purpose: 204 and 304 are bodiless whatever the method.
    auto s = parse_every_way(kResp, resp, {.expect = {}, .close = false});
    ASSERT_EQ(s.size(), 1u);
    EXPECT_EQ(s[0].status, std::string(name) == "no_content" ? 204 : 304);
    EXPECT_EQ(s[0].body_size, 0u);
    EXPECT_EQ(s[0].wire_size, resp.size());
    parse_with_junk(kResp, resp, 1);
  }
}

TEST(Http1Fixtures, WebSocketUpgrade) {
  const std::string req = fixture("websocket.req"), resp = fixture("websocket.resp");
  auto r = parse_every_way(kReq, req);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_TRUE(r[0].upgrade);
  EXPECT_TRUE(r[0].websocket);
  for (const Way& w : all_ways(resp)) {
    Driver d = run(kResp, w.pieces, {.expect = {"GET"}});
    SCOPED_TRACE(w.name);
    ASSERT_EQ(d.out.size(), 1u);
    EXPECT_EQ(d.out[0].status, 101);
    EXPECT_TRUE(d.out[0].upgrade);
    EXPECT_TRUE(d.out[0].websocket);
    EXPECT_FALSE(d.out[0].interim);
    EXPECT_EQ(d.out[0].wire_size, header_end(resp));
    EXPECT_TRUE(d.p.switched_protocols());
    EXPECT_EQ(d.p.invalid_count(), 0u);  // the frame after it is not HTTP, and not an error
    EXPECT_TRUE(d.buf.empty());
  }
  // The client's first WebSocket frame (masked) after its Upgrade request: a tunnel, not junk.
  const std::string frame("\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 11);
  const std::string req_frame = req + frame;
  for (const Way& w : all_ways(req_frame)) {
    Driver d = run(kReq, w.pieces, {});
    SCOPED_TRACE(w.name);
    EXPECT_EQ(d.out.size(), 1u);
    EXPECT_TRUE(d.p.switched_protocols());
    EXPECT_EQ(d.p.invalid_count(), 0u);
  }
}

TEST(Http1Fixtures, Http10CloseDelimitedBody) {
  const std::string req = fixture("http10_close.req"), resp = fixture("http10_close.resp");
  auto r = parse_every_way(kReq, req);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].version_minor, 0);
  auto s = parse_every_way(kResp, resp, {.expect = {"GET"}});
  ASSERT_EQ(s.size(), 1u);
  EXPECT_TRUE(s[0].close_delimited);
  EXPECT_EQ(s[0].header("content-length"), nullptr);
  EXPECT_EQ(*s[0].header("connection"), "close");
  EXPECT_EQ(s[0].body_size, resp.size() - header_end(resp));
  EXPECT_EQ(s[0].wire_size, resp.size());
  // Nothing comes out before the close.
  Driver d = run(kResp, {resp}, {.expect = {"GET"}, .close = false});
  EXPECT_TRUE(d.out.empty());
  d.close(99999);
  ASSERT_EQ(d.out.size(), 1u);
  EXPECT_EQ(d.out[0].ts_last_ns, 1000u);  // the last byte, not the close
}

TEST(Http1Fixtures, PipelinedRequestsAndResponses) {
  const std::string req = fixture("pipelined.req"), resp = fixture("pipelined.resp");
  auto r = parse_every_way(kReq, req);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].target, "/");
  EXPECT_EQ(r[1].target, "/index.html");
  EXPECT_EQ(r[2].method, "HEAD");
  const RunOptions o{.expect = {"GET", "GET", "HEAD"}};
  auto s = parse_every_way(kResp, resp, o);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].body_size, 32u);
  EXPECT_EQ(s[1].body_size, 32u);
  EXPECT_EQ(*s[2].header("content-length"), "4053");
  EXPECT_EQ(s[2].body_size, 0u);  // HEAD
  EXPECT_EQ(s[0].wire_size + s[1].wire_size + s[2].wire_size, resp.size());
  parse_with_junk(kReq, req, 3);
  parse_with_junk(kResp, resp, 3, o);
  // All three requests in one feed() call.
  Driver d(kReq);
  d.push(req, 7);
  EXPECT_EQ(d.out.size(), 3u);
  EXPECT_LE(d.calls, 2u);
}

TEST(Http1Fixtures, NotFound) {
  const std::string req = fixture("not_found.req"), resp = fixture("not_found.resp");
  EXPECT_EQ(parse_every_way(kReq, req)[0].target, "/missing");
  auto s = parse_every_way(kResp, resp, {.expect = {"GET"}});
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].status, 404);
  EXPECT_EQ(s[0].reason, "Not Found");
  parse_with_junk(kResp, resp, 1, {.expect = {"GET"}});
}

// ----------------------------------------------------- written messages ---
// Messages that the fixtures do not cover, written as curl and nginx send them.

const std::string kCurlGet = "GET /api.json HTTP/1.1\r\nHost: 10.99.0.2\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";

TEST(Http1Partial, HeaderIsNotConsumedUntilComplete) {
  Http1Parser p(kReq);
  std::vector<HttpMessage> out;
  const std::string part = kCurlGet.substr(0, kCurlGet.size() - 2);
  ParseResult r = p.feed(bytes(part), 1, out);
  EXPECT_EQ(r.status, ParseStatus::NeedMoreData);
  EXPECT_EQ(r.consumed, 0u);
  EXPECT_TRUE(out.empty());
  r = p.feed(bytes(kCurlGet), 2, out);
  EXPECT_EQ(r.status, ParseStatus::Done);
  EXPECT_EQ(r.consumed, kCurlGet.size());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].ts_first_ns, 1u);
  EXPECT_EQ(out[0].ts_last_ns, 2u);
  EXPECT_EQ(out[0].header_bytes, kCurlGet.size());
}

TEST(Http1Partial, BodyIsConsumedAsItComes) {
  const std::string head = "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Length: 10\r\n\r\n";
  Http1Parser p(kResp);
  std::vector<HttpMessage> out;
  ParseResult r = p.feed(bytes(head + "01234"), 5, out);
  EXPECT_EQ(r.status, ParseStatus::Done);
  EXPECT_EQ(r.consumed, head.size() + 5);
  EXPECT_TRUE(out.empty());
  r = p.feed(bytes("56789HTTP/1.1 204 No Content\r\n\r\n"), 6, out);
  EXPECT_EQ(r.status, ParseStatus::Done);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].body, "0123456789");
  EXPECT_EQ(out[0].ts_first_ns, 5u);
  EXPECT_EQ(out[0].ts_last_ns, 6u);
  EXPECT_EQ(out[1].status, 204);
  // on_close in the middle of a body: emitted, flagged truncated.
  p.feed(bytes(head + "abc"), 7, out);
  p.on_close(8, out);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_TRUE(out[2].body_truncated);
  EXPECT_EQ(out[2].body, "abc");
}

TEST(Http1Requests, LeadingEmptyLinesAreTolerated) {
  auto r = parse_every_way(kReq, "\r\n\r\n" + kCurlGet + "\r\n" + kCurlGet);
  EXPECT_EQ(r.size(), 2u);
}

TEST(Http1Requests, BareLfAndObsFold) {
  auto r = parse_every_way(kReq, "GET / HTTP/1.0\nHost: a\nX-Long: one\r\n  two\r\n\tthree\n\n");
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].version_minor, 0);
  EXPECT_EQ(*r[0].header("x-long"), "one two three");
  EXPECT_EQ(*r[0].header("host"), "a");
}

TEST(Http1Requests, HeaderNamesLowerCasedValuesTrimmed) {
  auto r = parse_every_way(kReq, "GET / HTTP/1.1\r\nHOST:\t example.com \t\r\nX-Empty:\r\nContent-TYPE: text/plain\r\n\r\n");
  ASSERT_EQ(r.size(), 1u);
  ASSERT_EQ(r[0].headers.size(), 3u);
  EXPECT_EQ(r[0].headers[0].name, "host");
  EXPECT_EQ(r[0].headers[0].value, "example.com");
  EXPECT_EQ(r[0].headers[1].value, "");
  EXPECT_EQ(r[0].headers[2].name, "content-type");
}

TEST(Http1Requests, PipelinedWithBodies) {
  const std::string s = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" +
                        std::string("PUT /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n") +
                        kCurlGet + "DELETE /c?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
  auto r = parse_every_way(kReq, s);
  ASSERT_EQ(r.size(), 4u);
  EXPECT_EQ(r[0].body, "abc");
  EXPECT_EQ(r[1].body, "de");
  EXPECT_EQ(r[2].target, "/api.json");
  EXPECT_EQ(r[3].method, "DELETE");
  EXPECT_EQ(r[3].target, "/c?x=1");
  parse_with_junk(kReq, s, 4);
}

TEST(Http1Requests, NoBodyWithoutLengthOrChunked) {
  // A POST without Content-Length/Transfer-Encoding has no body: the next bytes are the next request.
  auto r = parse_every_way(kReq, "POST /x HTTP/1.1\r\nHost: x\r\n\r\n" + kCurlGet);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].body_size, 0u);
}

TEST(Http1Responses, KeepAliveSequenceWithHeadInTheMiddle) {
  const std::string ok = "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                         "Connection: keep-alive\r\n\r\n";
  const std::string s = ok + "hello" + ok + ok + "world";
  auto r = parse_every_way(kResp, s, {.expect = {"GET", "HEAD", "GET"}});
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].body, "hello");
  EXPECT_EQ(r[1].body_size, 0u);
  EXPECT_EQ(r[2].body, "world");
}

TEST(Http1Responses, EarlyHintsAndContinueAreInterim) {
  const std::string s = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n"
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  auto r = parse_every_way(kResp, s, {.expect = {"POST"}});
  ASSERT_EQ(r.size(), 3u);
  EXPECT_TRUE(r[0].interim);
  EXPECT_TRUE(r[1].interim);
  EXPECT_EQ(*r[1].header("link"), "</style.css>; rel=preload; as=style");
  EXPECT_FALSE(r[2].interim);
  EXPECT_EQ(r[2].body, "ok");
}

TEST(Http1Responses, ChunkedWithExtensionsAndTrailers) {
  const std::string s = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nTrailer: Expires, X-Checksum\r\n\r\n"
                        "5;name=value;q=\"x\"\r\nhello\r\n"
                        "A \r\n, world!!!\r\n"
                        "0\r\nExpires: Wed, 21 Oct 2026 07:28:00 GMT\r\nX-Checksum: abc123\r\n\r\n"
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
  auto r = parse_every_way(kResp, s, {.expect = {"GET", "GET"}});
  ASSERT_EQ(r.size(), 2u);
  EXPECT_TRUE(r[0].chunked);
  EXPECT_EQ(r[0].body, "hello, world!!!");
  ASSERT_EQ(r[0].trailers.size(), 2u);
  EXPECT_EQ(r[0].trailers[0].name, "expires");
  EXPECT_EQ(r[0].trailers[1].value, "abc123");
  EXPECT_EQ(r[1].body_size, 0u);
  EXPECT_EQ(r[0].wire_size + r[1].wire_size, s.size());
  parse_with_junk(kResp, s, 2, {.expect = {"GET", "GET"}});
}

TEST(Http1Responses, CloseDelimitedWithoutLength) {
  // HTTP/1.1 without Content-Length or chunked, and a non-chunked Transfer-Encoding: both read until close.
  for (const std::string head : {"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
                                 "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n"}) {
    auto r = parse_every_way(kResp, head + "HTTP/1.1 200 OK is body here", {.expect = {"GET"}});
    ASSERT_EQ(r.size(), 1u);
    EXPECT_TRUE(r[0].close_delimited);
    EXPECT_EQ(r[0].body, "HTTP/1.1 200 OK is body here");
  }
}

TEST(Http1Responses, ConnectTunnel) {
  const std::string tls("\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", 10);
  auto req = parse_every_way(kReq, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nUser-Agent: curl/7.88.1\r\n\r\n");
  ASSERT_EQ(req.size(), 1u);
  EXPECT_EQ(req[0].target, "example.com:443");
  // Client side: TLS after CONNECT is a tunnel, not junk.
  Driver c = run(kReq, {"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", tls}, {});
  EXPECT_TRUE(c.p.switched_protocols());
  EXPECT_EQ(c.p.invalid_count(), 0u);
  // Server side: 2xx to CONNECT switches; no body even without Content-Length.
  const std::string established = "HTTP/1.1 200 Connection established\r\n\r\n" + tls;
  for (const Way& w : all_ways(established)) {
    Driver d = run(kResp, w.pieces, {.expect = {"CONNECT"}});
    SCOPED_TRACE(w.name);
    ASSERT_EQ(d.out.size(), 1u);
    EXPECT_EQ(d.out[0].body_size, 0u);
    EXPECT_FALSE(d.out[0].close_delimited);
    EXPECT_TRUE(d.p.switched_protocols());
    EXPECT_EQ(d.p.invalid_count(), 0u);
  }
  // A refused CONNECT is an ordinary response with a body, and HTTP goes on.
  auto r = parse_every_way(kResp, "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 3\r\n\r\nno!HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                           {.expect = {"CONNECT", "GET"}});
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].body, "no!");
}

// ------------------------------------------------------------ invalid ---

// The bad message is reported Invalid and skipped; the good request after it parses.
void expect_invalid_then_good(Side side, const std::string& bad, const std::string& good, size_t good_messages = 1,
                              HttpLimits lim = {}) {
  const std::string s = bad + good;  // outlives the pieces
  for (const Way& w : all_ways(s)) {
    Driver d = run(side, w.pieces, {.expect = {}, .close = true, .lim = lim});
    SCOPED_TRACE(w.name + ": " + bad.substr(0, 60));
    EXPECT_GE(d.p.invalid_count(), 1u);
    EXPECT_GE(d.invalid_results, 1u);
    ASSERT_GE(d.out.size(), good_messages);
    const HttpMessage& last = d.out.back();
    EXPECT_TRUE(last.method == "GET" || last.status == 200);
    EXPECT_FALSE(last.gap);
  }
}

TEST(Http1Invalid, BadRequestLines) {
  for (const std::string bad : {"GET /x HTTP/2.0\r\nHost: a\r\n\r\n", "get / HTTP/1.1\r\n\r\n", "GET  /x HTTP/1.1\r\n\r\n",
                                "GET /x\r\n\r\n", "GET /x HTTP/1.1 extra\r\n\r\n", "GET /a\x01b HTTP/1.1\r\n\r\n",
                                "FOO / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
                                "GET / HTTP/1.1\r\nHost : x\r\n\r\n", "GET / HTTP/1.1\r\n folded-first: x\r\n\r\n",
                                "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
                                "GET / HTTP/1.1\r\nNoColon\r\n\r\n"})
    expect_invalid_then_good(kReq, std::string(bad.data(), bad.size()), kCurlGet);
  static const char kNul[] = "GET / HTTP/1.1\r\nX: a\0z\r\n\r\n";  // a NUL inside a field value
  expect_invalid_then_good(kReq, std::string(kNul, sizeof kNul - 1), kCurlGet);
}

TEST(Http1Invalid, BadStatusLines) {
  const std::string good = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
  for (const std::string bad : {"HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 abc OK\r\n\r\n", "HTTP/2 200\r\n\r\n",
                                "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", "ICY 200 OK\r\n\r\n", "HTTP/1.1 099 Low\r\n\r\n"})
    expect_invalid_then_good(kResp, bad, good);
}

TEST(Http1Invalid, ContentLength) {
  const std::string pre = "POST /p HTTP/1.1\r\nHost: x\r\n";
  for (const std::string cl : {"Content-Length: 12a\r\n", "Content-Length: -1\r\n", "Content-Length: \r\n",
                               "Content-Length: 3\r\nContent-Length: 4\r\n", "Content-Length: 3, 4\r\n",
                               "Content-Length: 184467440737095516160\r\n", "Content-Length: 0x10\r\n",
                               "Content-Length: 3\r\n folded: 4\r\n"})
    expect_invalid_then_good(kReq, pre + cl + "\r\n", kCurlGet);
  // Identical duplicates are one value (RFC 9110 8.6).
  for (const std::string cl : {"Content-Length: 3\r\nContent-Length: 3\r\n", "Content-Length: 3, 3\r\n"}) {
    auto r = parse_every_way(kReq, pre + cl + "\r\nabc" + kCurlGet);
    ASSERT_EQ(r.size(), 2u);
    EXPECT_EQ(r[0].body, "abc");
  }
  // A request Transfer-Encoding that does not end in chunked cannot be framed.
  expect_invalid_then_good(kReq, pre + "Transfer-Encoding: gzip\r\n\r\n", kCurlGet);
}

TEST(Http1Invalid, ChunkSizes) {
  const std::string pre = "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (const std::string body : {"zz\r\nabc\r\n0\r\n\r\n", "8000000000000000\r\n", "ffffffffffffffff\r\n",
                                 "10000000000000000\r\n", "00000000000000001\r\nx\r\n0\r\n\r\n", "3\r\nabcX\r\n0\r\n\r\n",
                                 "\r\n", "3\rx\r\n", "-1\r\n"}) {
    const std::string s = pre + body + kCurlGet;
    for (const Way& w : all_ways(s)) {
      Driver d = run(kReq, w.pieces, {});
      SCOPED_TRACE(w.name + ": " + body);
      EXPECT_EQ(d.p.invalid_count(), 1u);
      ASSERT_EQ(d.out.size(), 2u);  // the broken request with what it had, then the good one
      EXPECT_TRUE(d.out[0].body_truncated);
      EXPECT_EQ(d.out[1].target, "/api.json");
    }
  }
  // 2^63 - 1 is a valid (if absurd) size: streamed, never allocated.
  Driver d(kReq);
  d.push(pre + "7fffffffffffffff\r\n" + std::string(100000, 'x'), 1);
  EXPECT_EQ(d.p.invalid_count(), 0u);
  EXPECT_TRUE(d.buf.empty());
  d.close(2);
  ASSERT_EQ(d.out.size(), 1u);
  EXPECT_EQ(d.out[0].body_size, 100000u);
  EXPECT_EQ(d.out[0].body.size(), HttpLimits{}.max_body_kept);
  EXPECT_TRUE(d.out[0].body_truncated);
}

TEST(Http1Invalid, TenMegabyteHeaderIsSkippedWithBoundedMemory) {
  std::string huge = "GET /big HTTP/1.1\r\nHost: x\r\nX-Huge: ";
  huge.append(10 * 1024 * 1024, 'a');
  huge += "\r\n\r\n";
  const std::string all = huge + kCurlGet;
  Driver d(kReq);
  const size_t piece = 64 * 1024;
  for (size_t i = 0; i < all.size(); i += piece) d.push(std::string_view(all).substr(i, piece), i);
  EXPECT_LE(d.max_buffered, HttpLimits{}.max_header_bytes);
  EXPECT_EQ(d.p.invalid_count(), 1u);  // one bad message, one count
  EXPECT_EQ(d.invalid_results, 1u);
  ASSERT_EQ(d.out.size(), 1u);
  EXPECT_EQ(d.out[0].target, "/api.json");
  // The same, many header lines instead of one long one; and as a response.
  std::string many = "GET /many HTTP/1.1\r\n";
  while (many.size() < 10 * 1024 * 1024) many += "X-Filler: 0123456789abcdef0123456789abcdef\r\n";
  Driver m(kReq);
  const std::string all2 = many + "\r\n" + kCurlGet;
  for (size_t i = 0; i < all2.size(); i += piece) m.push(std::string_view(all2).substr(i, piece), i);
  EXPECT_LE(m.max_buffered, HttpLimits{}.max_header_bytes);
  EXPECT_EQ(m.p.invalid_count(), 1u);
  ASSERT_EQ(m.out.size(), 1u);
  EXPECT_EQ(m.out[0].target, "/api.json");
}

TEST(Http1Invalid, HeaderExactlyAtTheCap) {
  HttpLimits lim;
  lim.max_header_bytes = 256;
  std::string req = "GET / HTTP/1.1\r\nX-Pad: ";
  req.append(256 - req.size() - 4, 'p');
  req += "\r\n\r\n";
  ASSERT_EQ(req.size(), 256u);
  auto r = parse_every_way(kReq, req, {.expect = {}, .close = true, .lim = lim});
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].header_bytes, 256u);
  expect_invalid_then_good(kReq, "GET / HTTP/1.1\r\nX-Pad: " + std::string(256, 'p') + "\r\n\r\n", kCurlGet, 1, lim);
  expect_invalid_then_good(kReq, req.substr(0, 254) + "x\r\n\r\n", kCurlGet, 1, lim);  // one byte over
}

TEST(Http1Invalid, RandomBytesNeverHangOrCrash) {
  std::mt19937 rng(7);
  for (int round = 0; round < 200; round++) {
    std::string s(1 + rng() % 4000, '\0');
    const std::string_view alphabet = "GETPOSHD /1.\r\n:0123456789abcdefxHTP;";
    for (char& c : s) c = (rng() % 3) ? alphabet[rng() % alphabet.size()] : static_cast<char>(rng());
    for (Side side : {kReq, kResp}) {
      Driver d(side, HttpLimits{.max_header_bytes = 512, .max_body_kept = 64, .max_headers = 8, .max_pending = 4});
      for (std::string_view piece : split_random(s, round)) d.push(piece, 1);
      EXPECT_LE(d.max_buffered, 512u);
      d.close(2);
    }
  }
}

TEST(Http1Invalid, MutatedRealTrafficNeverHangsOrCrashes) {
  // Real exchanges with bytes flipped, dropped and duplicated, fed at random
  // splits with random gaps and closes: no crash, no hang, bounded memory.
  std::vector<std::pair<Side, std::string>> corpus;
  for (const char* name : {"get_keepalive", "head", "post_405", "put_chunked", "expect_continue", "gzip_chunked",
                           "not_modified", "no_content", "websocket", "http10_close", "pipelined", "not_found"}) {
    corpus.emplace_back(kReq, fixture(std::string(name) + ".req"));
    corpus.emplace_back(kResp, fixture(std::string(name) + ".resp"));
  }
  std::mt19937 rng(2026);
  const HttpLimits lim{.max_header_bytes = 300, .max_body_kept = 100, .max_headers = 6, .max_pending = 3};
  for (int round = 0; round < 300; round++) {
    const auto& [side, orig] = corpus[rng() % corpus.size()];
    std::string s = orig + orig;
    for (int k = 0, n = 1 + static_cast<int>(rng() % 8); k < n && !s.empty(); k++) {
      const size_t at = rng() % s.size();
      switch (rng() % 3) {
        case 0: s[at] = static_cast<char>(rng()); break;
        case 1: s.erase(at, 1 + rng() % 16); break;
        default: s.insert(at, s.substr(at, 1 + rng() % 64)); break;
      }
    }
    Driver d(side, lim);
    for (int k = 0; k < 4; k++) d.p.expect_response_to(rng() % 4 ? "GET" : (rng() % 2 ? "HEAD" : "CONNECT"));
    for (std::string_view piece : split_random(s, round)) {
      if (rng() % 20 == 0) d.gap(1 + rng() % 300);
      d.push(piece, round);
      ASSERT_LE(d.buf.size(), lim.max_header_bytes);
    }
    d.close(round);
    for (const HttpMessage& m : d.out) EXPECT_LE(m.body.size(), lim.max_body_kept);
  }
}

// --------------------------------------------------------------- caps ---

TEST(Http1Caps, MaxHeadersAndMaxBodyKept) {
  HttpLimits lim;
  lim.max_headers = 4;
  lim.max_body_kept = 10;
  std::string req = "POST /u HTTP/1.1\r\n";
  for (int i = 0; i < 10; i++) req += "X-H" + std::to_string(i) + ": v\r\n";
  req += "Content-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz";  // beyond the cap, still honoured
  auto r = parse_every_way(kReq, req + kCurlGet, {.expect = {}, .close = true, .lim = lim});
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].headers.size(), 4u);
  EXPECT_TRUE(r[0].headers_truncated);
  EXPECT_EQ(r[0].body, "abcdefghij");
  EXPECT_EQ(r[0].body_size, 26u);
  EXPECT_TRUE(r[0].body_truncated);
  EXPECT_FALSE(r[1].headers_truncated);
}

TEST(Http1Caps, HugeContentLengthIsStreamedNotAllocated) {
  Driver d(kResp);
  d.push("HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n", 1);
  const std::string mb(1 << 20, 'z');
  for (int i = 0; i < 8; i++) d.push(mb, 2 + i);
  EXPECT_TRUE(d.buf.empty());
  EXPECT_EQ(d.p.invalid_count(), 0u);
  d.close(20);
  ASSERT_EQ(d.out.size(), 1u);
  EXPECT_EQ(d.out[0].body_size, 8u << 20);
  EXPECT_EQ(d.out[0].body.size(), HttpLimits{}.max_body_kept);
  EXPECT_TRUE(d.out[0].body_truncated);
}

TEST(Http1Caps, MaxPendingDropsTheOldestExpectation) {
  HttpLimits lim;
  lim.max_pending = 2;
  Driver d(kResp, lim);
  d.p.expect_response_to("HEAD");  // dropped: the owner dropped that request too
  d.p.expect_response_to("GET");
  d.p.expect_response_to("GET");
  d.push("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1);
  ASSERT_EQ(d.out.size(), 1u);
  EXPECT_EQ(d.out[0].body, "ok");
}

TEST(Http1Caps, HeaderScanIsLinearByteByByte) {
  // A 60 KB header block presented again after every byte (as the dissector
  // does) must not be rescanned from its start each time.
  std::string req = "GET / HTTP/1.1\r\n";
  while (req.size() < 60000) req += "X-Filler: 0123456789abcdef0123456789abcdef0123456789\r\n";
  req += "\r\n";
  // No timing assertion (machine time is noisy): a quadratic scan here is
  // ~1.8e9 byte visits, which the test's ctest timeout catches.
  Driver d(kReq);
  for (size_t i = 0; i < req.size(); i++) d.push(std::string_view(req).substr(i, 1), i);
  ASSERT_EQ(d.out.size(), 1u);
  EXPECT_EQ(d.out[0].headers.size(), std::min<size_t>(HttpLimits{}.max_headers, (req.size() - 20) / 55));
}

// ---------------------------------------------------------------- gaps ---

const std::string kPost100 = "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n";

TEST(Http1Gap, InsideKnownLengthBodyStaysInStep) {
  for (uint64_t lost : {1u, 50u, 60u}) {
    Driver d(kReq);
    d.push(kPost100 + std::string(40, 'a'), 1);
    d.gap(lost);
    d.push(std::string(60 - lost, 'b') + kCurlGet, 2);
    SCOPED_TRACE(lost);
    ASSERT_EQ(d.out.size(), 2u);
    EXPECT_TRUE(d.out[0].gap);
    EXPECT_EQ(d.out[0].body_size, 100u);
    EXPECT_EQ(d.out[0].body, std::string(40, 'a'));  // the kept body stays a prefix
    EXPECT_FALSE(d.out[1].gap);
    EXPECT_EQ(d.out[1].target, "/api.json");
    EXPECT_EQ(d.p.invalid_count(), 0u);
  }
}

TEST(Http1Gap, InsideChunkStaysInStep) {
  Driver d(kResp);
  d.push("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123", 1);
  d.gap(8);
  d.push("cdef\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 2);
  ASSERT_EQ(d.out.size(), 2u);
  EXPECT_TRUE(d.out[0].gap);
  EXPECT_EQ(d.out[0].body_size, 16u);
  EXPECT_EQ(d.out[1].status, 204);
  EXPECT_EQ(d.p.invalid_count(), 0u);
}

TEST(Http1Gap, PastTheBodyResynchronises) {
  Driver d(kReq);
  d.push(kPost100 + std::string(40, 'a'), 1);
  d.gap(500);  // the rest of the body and part of what followed
  d.push("e-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n" + kCurlGet, 2);
  ASSERT_EQ(d.out.size(), 2u);
  EXPECT_TRUE(d.out[0].gap);
  EXPECT_TRUE(d.out[0].body_truncated);
  EXPECT_EQ(d.out[0].target, "/up");
  EXPECT_EQ(d.out[1].target, "/api.json");
  EXPECT_EQ(d.p.invalid_count(), 0u);  // a gap is counted by reassembly, not as a parse error
}

TEST(Http1Gap, InsideHeaderDropsThePartialMessage) {
  Driver d(kReq);
  d.push(kCurlGet.substr(0, 20), 1);
  d.gap(30);
  d.push(kCurlGet.substr(50) + kCurlGet, 2);
  ASSERT_EQ(d.out.size(), 1u);
  EXPECT_EQ(d.out[0].target, "/api.json");
  EXPECT_EQ(d.out[0].ts_first_ns, 2u);
}

TEST(Http1Gap, CloseDelimitedBodyCountsTheLostBytes) {
  Driver d(kResp);
  d.push("HTTP/1.0 200 OK\r\n\r\nabc", 1);
  d.gap(1000);
  d.push("xyz", 2);
  d.close(3);
  ASSERT_EQ(d.out.size(), 1u);
  EXPECT_TRUE(d.out[0].gap);
  EXPECT_TRUE(d.out[0].close_delimited);
  EXPECT_EQ(d.out[0].body_size, 1006u);
  EXPECT_EQ(d.out[0].body, "abc");
}

TEST(Http1Gap, ExactlyTheRestOfTheBodyCompletesTheMessage) {
  Driver d(kReq);
  d.push(kPost100, 1);
  d.gap(100);
  d.push(kCurlGet, 2);
  ASSERT_EQ(d.out.size(), 2u);
  EXPECT_TRUE(d.out[0].gap);
  EXPECT_EQ(d.out[0].body_size, 100u);
  EXPECT_EQ(d.out[1].target, "/api.json");
}

// ----------------------------------------------------------- detection ---

TEST(Http1Detect, RequestsAndResponses) {
  for (const char* name : {"get_keepalive", "head", "post_405", "put_chunked", "websocket", "http10_close"}) {
    EXPECT_TRUE(tapwire::proto::looks_like_http1_request(bytes(fixture(std::string(name) + ".req")))) << name;
    EXPECT_TRUE(tapwire::proto::looks_like_http1_response(bytes(fixture(std::string(name) + ".resp")))) << name;
    EXPECT_FALSE(tapwire::proto::looks_like_http1_response(bytes(fixture(std::string(name) + ".req")))) << name;
    EXPECT_FALSE(tapwire::proto::looks_like_http1_request(bytes(fixture(std::string(name) + ".resp")))) << name;
  }
  // The first segment of a request with a very long URL: no line end yet.
  EXPECT_TRUE(tapwire::proto::looks_like_http1_request(bytes("GET /search?q=" + std::string(3000, 'x'))));
  EXPECT_TRUE(tapwire::proto::looks_like_http1_request(bytes("OPTIONS * HTTP/1.1\r\n")));
  EXPECT_TRUE(tapwire::proto::looks_like_http1_request(bytes("CONNECT example.com:443 HTTP/1.1\r\n")));
}

TEST(Http1Detect, NotOtherProtocols) {
  const std::vector<std::string> others = {
      std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x5c\x1d", 14),  // TLS ClientHello
      std::string("\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03", 11),  // TLS ServerHello
      std::string("\x00\x1d\xab\xcd\x01\x20\x00\x01\x00\x00\x00\x00\x00\x01\x07" "example\x03" "com\x00\x00\x01\x00\x01", 31),  // DNS/TCP
      "*1\r\n$4\r\nPING\r\n", "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", "+PONG\r\n",  // Redis RESP
      "GET key\r\n", "GET /key\r\n",  // Redis inline commands
      "SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP/2 200\r\n",
      "220 mail.example.com ESMTP Postfix\r\n", "GET", "HTTP/1.1 2", "", "GET / HTTP/1.1x\r\n"};
  for (const std::string& s : others) {
    EXPECT_FALSE(tapwire::proto::looks_like_http1_request(bytes(s))) << s;
    EXPECT_FALSE(tapwire::proto::looks_like_http1_response(bytes(s))) << s;
  }
  std::mt19937 rng(99);
  for (int i = 0; i < 10000; i++) {
    std::string s(1 + rng() % 200, '\0');
    for (char& c : s) c = static_cast<char>(rng());
    EXPECT_FALSE(tapwire::proto::looks_like_http1_request(bytes(s)));
    EXPECT_FALSE(tapwire::proto::looks_like_http1_response(bytes(s)));
  }
}

TEST(Http1Misc, StatusNames) {
  EXPECT_STREQ(tapwire::proto::to_string(ParseStatus::Done), "done");
  EXPECT_STREQ(tapwire::proto::to_string(ParseStatus::Invalid), "invalid");
  EXPECT_STREQ(tapwire::proto::to_string(ParseStatus::NeedMoreData), "need-more-data");
  EXPECT_STREQ(tapwire::proto::to_string(ParseStatus::Ignored), "ignored");
}

}  // namespace
