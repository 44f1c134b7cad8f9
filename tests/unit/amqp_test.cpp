// AMQP 0-9-1 (userspace/protocols/amqp/) through the whole engine: a
// Dissector fed synthetic TCP connections (frames built here as RabbitMQ
// and librabbitmq send them), the calls collected from its sink. Covered:
// the connection handshake, every pairing rule (synchronous methods with
// their -ok per channel, basic.get with get-ok / get-empty, a channel.close
// answering a waiting request, close with close-ok, no-wait methods),
// content (header properties, a body in several frames, interleaved
// channels), asynchronous methods as one-message calls, credentials not
// recorded; the same records whole, byte by byte and at random splits;
// joined mid-connection; detection (0-9-1 only, other protocols not
// claimed); hostile input (a 2^31 frame, a broken frame end, garbage,
// nested tables 10000 deep, a body claiming 2^63 bytes) bounded, flagged,
// and the calls after it still dissected.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "amqp/amqp.hpp"
#include "amqp/session.hpp"
#include "dissector.hpp"
#include "engine_harness.hpp"

using namespace tapwire::dissect;
namespace proto = tapwire::proto;

namespace {

constexpr size_t kLimit = 1u << 20;
constexpr size_t kSlack = 64u << 10;

// ------------------------------------------------------------ encoding --

std::string u8(uint8_t v) { return std::string(1, static_cast<char>(v)); }
std::string u16(uint16_t v) { return u8(v >> 8) + u8(v & 0xff); }
std::string u32(uint32_t v) { return u16(v >> 16) + u16(v & 0xffff); }
std::string u64(uint64_t v) { return u32(static_cast<uint32_t>(v >> 32)) + u32(static_cast<uint32_t>(v)); }
std::string sstr(std::string_view s) { return u8(static_cast<uint8_t>(s.size())) + std::string(s); }
std::string lstr(std::string_view s) { return u32(static_cast<uint32_t>(s.size())) + std::string(s); }
std::string table(std::string_view entries) { return lstr(entries); }

std::string frame(uint8_t type, uint16_t ch, std::string_view payload) {
  return u8(type) + u16(ch) + u32(static_cast<uint32_t>(payload.size())) + std::string(payload) + u8(0xCE);
}
std::string method(uint16_t ch, uint16_t cls, uint16_t m, std::string_view args = {}) {
  return frame(1, ch, u16(cls) + u16(m) + std::string(args));
}
// A content header with content-type, delivery-mode and a headers table.
std::string header(uint16_t ch, uint64_t body_size, std::string_view content_type = "text/plain",
                   std::string_view headers = {}) {
  uint16_t flags = 0x8000 | 0x1000;
  std::string props = sstr(content_type);
  if (!headers.empty()) {
    flags |= 0x2000;
    props += table(headers);
  }
  props += u8(2);  // delivery-mode persistent
  return frame(2, ch, u16(60) + u16(0) + u64(body_size) + u16(flags) + props);
}
std::string body(uint16_t ch, std::string_view b) { return frame(3, ch, b); }

const std::string kProtoHeader("AMQP\0\0\x09\x01", 8);

std::string conn_start() {
  std::string caps = sstr("publisher_confirms") + "t" + u8(1) + sstr("exchange_exchange_bindings") + "t" + u8(1);
  std::string props = sstr("capabilities") + "F" + table(caps) + sstr("product") + "S" + lstr("RabbitMQ") +
                      sstr("version") + "S" + lstr("3.10.8");
  return method(0, 10, 10, u8(0) + u8(9) + table(props) + lstr("PLAIN AMQPLAIN") + lstr("en_US"));
}
std::string conn_start_ok() {
  std::string props = sstr("product") + "S" + lstr("rabbitmq-c");
  return method(0, 10, 11, table(props) + sstr("PLAIN") + lstr(std::string("\0guest\0s3cr3t", 13)) + sstr("en_US"));
}
std::string tune(bool ok) { return method(0, 10, ok ? 31 : 30, u16(2047) + u32(131072) + u16(ok ? 0 : 60)); }

// ------------------------------------------------------------- traffic --

using Conn = tapwire::test::ConnOn<5672>;
using Result = tapwire::test::EngineRun;

Result run_all_ways(const std::vector<Conn>& conns) {
  return tapwire::test::run_all_ways(
      conns, tapwire::test::run_options(kLimit, tapwire::test::Split::Whole, 0, true, /*parse_json=*/false),
      {.peak_limit = kLimit + kSlack, .check_shed = true, .check_whole_shed = true, .check_parse_errors_total = true});
}

std::string flags_of(const Call& c) {
  std::string s;
  for (const std::string& n : proto::flag_names(c.flags)) s += (s.empty() ? "" : ",") + n;
  return s;
}

const proto::AmqpMessage* req(const Call& c) {
  auto* r = c.req<proto::AmqpRecord>();
  return r ? &r->msg : nullptr;
}
const proto::AmqpMessage* resp(const Call& c) {
  auto* r = c.resp<proto::AmqpRecord>();
  return r ? &r->msg : nullptr;
}

// A whole session as amqp-tools run it against RabbitMQ.
Conn session(uint16_t cport) {
  Conn c;
  c.cport = cport;
  c.c(kProtoHeader);
  c.s(conn_start());
  c.c(conn_start_ok());
  c.s(tune(false));
  c.c(tune(true));
  c.c(method(0, 10, 40, sstr("/") + sstr("") + u8(0)));
  c.s(method(0, 10, 41, sstr("")));
  c.c(method(1, 20, 10, sstr("")));
  c.s(method(1, 20, 11, lstr("")));
  // queue.declare durable, with an argument; its -ok with counts.
  c.c(method(1, 50, 10, u16(0) + sstr("jobs") + u8(0x02) + table(sstr("x-max-length") + "I" + u32(100))));
  c.s(method(1, 50, 11, sstr("jobs") + u32(3) + u32(1)));
  // basic.publish to a named exchange, its body in two frames, headers table.
  c.c(method(1, 60, 40, u16(0) + sstr("amq.direct") + sstr("rk.1") + u8(0)) +
      header(1, 11, "text/plain", sstr("trace") + "S" + lstr("abc")) + body(1, "hello") + body(1, " world"));
  // basic.publish to the default exchange, empty body.
  c.c(method(1, 60, 40, u16(0) + sstr("") + sstr("jobs") + u8(0)) + header(1, 0));
  // basic.get → get-ok with content; basic.get → get-empty.
  c.c(method(1, 60, 70, u16(0) + sstr("jobs") + u8(1)));
  c.s(method(1, 60, 71, u64(1) + u8(0) + sstr("") + sstr("jobs") + u32(2)) + header(1, 3, "application/json") +
      body(1, "{} "));
  c.c(method(1, 60, 70, u16(0) + sstr("jobs") + u8(1)));
  c.s(method(1, 60, 72, sstr("")));
  // basic.consume → consume-ok, a delivery, its ack.
  c.c(method(1, 60, 20, u16(0) + sstr("jobs") + sstr("") + u8(0) + table("")));
  c.s(method(1, 60, 21, sstr("amq.ctag-1")));
  c.s(method(1, 60, 60, sstr("amq.ctag-1") + u64(2) + u8(0) + sstr("") + sstr("jobs")) + header(1, 4) + body(1, "job4"));
  c.c(method(1, 60, 80, u64(2) + u8(0)));
  // queue.declare passive of a missing queue on channel 2: channel.close 404, close-ok.
  c.c(method(2, 20, 10, sstr("")));
  c.s(method(2, 20, 11, lstr("")));
  c.c(method(2, 50, 10, u16(0) + sstr("nope") + u8(0x01) + table("")));
  c.s(method(2, 20, 40, u16(404) + sstr("NOT_FOUND - no queue 'nope' in vhost '/'") + u16(50) + u16(10)));
  c.c(method(2, 20, 41));
  // A no-wait exchange.declare: a call of its own.
  c.c(method(1, 40, 10, u16(0) + sstr("logs") + sstr("fanout") + u8(0x10) + table("")));
  c.s(frame(8, 0, ""));  // heartbeat
  c.c(method(1, 20, 40, u16(200) + sstr("Goodbye") + u16(0) + u16(0)));
  c.s(method(1, 20, 41));
  c.c(method(0, 10, 50, u16(200) + sstr("Normal shutdown") + u16(0) + u16(0)));
  c.s(method(0, 10, 51));
  return c;
}

}  // namespace

TEST(Amqp, RegisteredBeforeDns) {
  const auto& all = proto::protocols();
  size_t amqp = all.size(), dns = all.size();
  for (size_t i = 0; i < all.size(); i++) {
    if (std::string(all[i].name) == "amqp") amqp = i;
    if (std::string(all[i].name) == "dns") dns = i;
  }
  ASSERT_LT(amqp, all.size());
  EXPECT_LT(amqp, dns);
  EXPECT_STREQ(all[amqp].dissector, "amqp");
}

TEST(Amqp, SessionCallsAllWays) {
  Result r = run_all_ways({session(40001)});
  std::vector<std::string> methods;
  for (const Call& c : r.calls) methods.push_back(c.method + " " + c.path + " " + std::to_string(c.status));
  const std::vector<std::string> want = {
      "connection.start  0",
      "connection.tune  0",
      "connection.open  0",
      "channel.open  0",
      "queue.declare jobs 0",
      "basic.publish amq.direct/rk.1 -1",
      "basic.publish /jobs -1",
      "basic.get jobs 0",
      "basic.get jobs 0",
      "basic.consume jobs 0",
      "basic.deliver /jobs -1",
      "basic.ack  -1",
      "channel.open  0",
      "queue.declare nope 404",
      "channel.close  404",
      "exchange.declare logs -1",
      "channel.close  0",
      "connection.close  0",
  };
  EXPECT_EQ(methods, want);
  EXPECT_EQ(r.m.parse_errors_total(), 0u);
  for (const Call& c : r.calls) EXPECT_EQ(c.flags, 0u) << c.method << ": " << flags_of(c);
  ASSERT_EQ(r.calls.size(), want.size());

  // connection.start's properties as JSON; start-ok's credentials not kept.
  EXPECT_NE(r.records[0].find(R"("server_properties":{"capabilities":{"publisher_confirms":true,)"), std::string::npos)
      << r.records[0];
  EXPECT_NE(r.records[0].find(R"("response_size":13)"), std::string::npos) << r.records[0];
  EXPECT_EQ(r.records[0].find("s3cr3t"), std::string::npos);
  EXPECT_EQ(resp(r.calls[0])->str("mechanism"), "PLAIN");
  // queue.declare-ok's counts.
  uint64_t n = 0;
  ASSERT_TRUE(resp(r.calls[4])->num("message_count", n));
  EXPECT_EQ(n, 3u);
  EXPECT_NE(r.records[4].find(R"("arguments":{"x-max-length":100})"), std::string::npos) << r.records[4];
  // The publish: request only, both body frames joined, properties.
  const Call& pub = r.calls[5];
  EXPECT_TRUE(pub.one_message);
  ASSERT_TRUE(req(pub));
  EXPECT_FALSE(resp(pub));
  EXPECT_EQ(req(pub)->body, "hello world");
  EXPECT_EQ(req(pub)->frames, 4u);
  EXPECT_NE(r.records[5].find(R"("exchange":"amq.direct","routing_key":"rk.1")"), std::string::npos);
  EXPECT_NE(r.records[5].find(
                R"("properties":{"content_type":"text/plain","headers":{"trace":"abc"},"delivery_mode":2},"body_size":11,"body":"hello world")"),
            std::string::npos)
      << r.records[5];
  // get-ok with content as basic.get's response; get-empty the next one's.
  EXPECT_EQ(resp(r.calls[7])->name(), "basic.get-ok");
  EXPECT_EQ(resp(r.calls[7])->body, "{} ");
  EXPECT_EQ(resp(r.calls[8])->name(), "basic.get-empty");
  // The delivery: response only.
  EXPECT_FALSE(req(r.calls[10]));
  EXPECT_EQ(resp(r.calls[10])->body, "job4");
  EXPECT_EQ(resp(r.calls[10])->str("consumer_tag"), "amq.ctag-1");
  // The failed declare: its response is the server's channel.close.
  EXPECT_EQ(resp(r.calls[13])->name(), "channel.close");
  EXPECT_NE(r.records[13].find(R"("reply_code":404)"), std::string::npos);
  EXPECT_EQ(req(r.calls[14])->name(), "channel.close");
  EXPECT_EQ(resp(r.calls[14])->name(), "channel.close-ok");
  EXPECT_FALSE(req(r.calls[14])->from_client);
  // Counters.
  auto& b = r.m.breakdowns.at("amqp_methods");
  EXPECT_EQ(b.at("basic.publish"), 2u);
}

TEST(Amqp, InterleavedChannelsAndPipelining) {
  Conn c;
  c.cport = 40002;
  c.c(kProtoHeader);
  // Two publishes on channels 1 and 3, their frames interleaved; two declares pipelined on two channels.
  c.c(method(1, 60, 40, u16(0) + sstr("x") + sstr("a") + u8(0)) + method(3, 60, 40, u16(0) + sstr("x") + sstr("b") + u8(0)) +
      header(3, 2) + header(1, 2) + body(1, "1a") + body(3, "3b") + method(1, 50, 10, u16(0) + sstr("q1") + u8(0) + table("")) +
      method(3, 50, 10, u16(0) + sstr("q3") + u8(0) + table("")));
  c.s(method(3, 50, 11, sstr("q3") + u32(0) + u32(0)) + method(1, 50, 11, sstr("q1") + u32(5) + u32(0)));
  Result r = run_all_ways({c});
  ASSERT_EQ(r.calls.size(), 4u);
  EXPECT_EQ(req(r.calls[0])->body, "1a");
  EXPECT_EQ(req(r.calls[0])->channel, 1);
  EXPECT_EQ(req(r.calls[1])->body, "3b");
  EXPECT_EQ(r.calls[2].path, "q3");
  EXPECT_EQ(r.calls[3].path, "q1");
  uint64_t n = 0;
  ASSERT_TRUE(resp(r.calls[3])->num("message_count", n));
  EXPECT_EQ(n, 5u);
}

TEST(Amqp, JoinedMidConnection) {
  Conn full = session(40003);
  // Without the handshake and the first messages: the stream starts at the
  // queue.declare (client) and in the middle of a frame (server).
  Conn c;
  c.cport = 40003;
  c.handshake = false;
  bool started = false;
  for (const auto& m : full.msgs) {
    if (!started && m.client && m.bytes.find("jobs") != std::string::npos) started = true;
    if (started) c.msgs.push_back(m);
  }
  Result r = run_all_ways({c});
  ASSERT_GE(r.calls.size(), 10u);
  EXPECT_EQ(r.calls[0].method, "queue.declare");
  EXPECT_EQ(r.calls[0].status, 0);
  EXPECT_EQ(r.calls[0].src.port, 40003);  // the client known from the method's sender

  // Starting inside the server's get-ok content: the delivery after it still comes out.
  Conn s;
  s.cport = 40004;
  s.handshake = false;
  s.s(body(1, "tail of a body") + method(1, 60, 60, sstr("t") + u64(9) + u8(0) + sstr("") + sstr("jobs")) + header(1, 1) +
      body(1, "x"));
  s.c(method(1, 60, 80, u64(9) + u8(0)));
  Result r2 = run_all_ways({s});
  ASSERT_EQ(r2.calls.size(), 2u);
  EXPECT_EQ(r2.calls[0].method, "basic.deliver");
  EXPECT_EQ(resp(r2.calls[0])->body, "x");
  EXPECT_EQ(r2.calls[1].method, "basic.ack");
}

TEST(Amqp, Detection) {
  proto::AmqpProtocol p;
  proto::FlowView v;
  auto det = [&](std::string_view s) {
    return p.detect(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()), 0, v);
  };
  EXPECT_TRUE(det(kProtoHeader).matched);
  EXPECT_EQ(det(kProtoHeader).client_side, 0);
  EXPECT_TRUE(det("AMQ").need_more);
  EXPECT_FALSE(det(std::string("AMQP\0\0\x0a\x00", 8)).matched);  // 0-10
  EXPECT_FALSE(det(std::string("AMQP\x03\x01\x00\x00", 8)).matched);  // 1.0 SASL
  EXPECT_FALSE(det("GET / HTTP/1.1\r\n\r\n").matched);
  EXPECT_FALSE(det("GET / HTTP/1.1\r\n\r\n").need_more);
  EXPECT_FALSE(det(std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11)).matched);
  EXPECT_FALSE(det(std::string("\x00\x00\x00\x08\x04\xd2\x16\x2f", 8)).matched);  // postgres SSLRequest
  // A server's method frame: the other side is the client.
  auto d = det(method(1, 60, 60, sstr("t") + u64(9) + u8(0) + sstr("") + sstr("q")));
  EXPECT_TRUE(d.matched);
  EXPECT_EQ(d.client_side, 1);
  std::string m = method(1, 50, 10, u16(0) + sstr("q") + u8(0) + table(""));
  EXPECT_TRUE(det(m.substr(0, 9)).need_more);
  m.back() = 0;  // no frame end
  EXPECT_FALSE(det(m).matched);
  EXPECT_FALSE(det(method(1, 60, 999)).matched);  // unknown method
}

TEST(Amqp, HostileInputIsBoundedAndFlagged) {
  std::vector<Conn> conns;
  // 1. A frame claiming 2^31 bytes, then good frames after it.
  Conn a;
  a.cport = 41001;
  a.c(kProtoHeader + u8(1) + u16(1) + u32(0x80000000u) + std::string(100, 'z'));
  a.c(method(1, 50, 10, u16(0) + sstr("after") + u8(0) + table("")));
  a.s(method(1, 50, 11, sstr("after") + u32(0) + u32(0)));
  conns.push_back(a);
  // 2. A body claiming 2^63 bytes in frames: body kept up to the cap, no more.
  Conn b;
  b.cport = 41002;
  b.c(kProtoHeader);
  std::string big = method(1, 60, 40, u16(0) + sstr("") + sstr("q") + u8(0)) + header(1, uint64_t{1} << 63);
  for (int i = 0; i < 40; i++) big += body(1, std::string(100000, 'b'));
  b.c(big);
  b.c(method(1, 50, 10, u16(0) + sstr("after2") + u8(0) + table("")));
  conns.push_back(b);
  // 3. Tables nested 10000 deep and a table with 100000 entries; garbage; a broken frame end.
  Conn c;
  c.cport = 41003;
  c.c(kProtoHeader);
  std::string nested;
  for (int i = 0; i < 10000; i++) nested = sstr("k") + "F" + table(nested);
  c.c(method(1, 50, 10, u16(0) + sstr("deep") + u8(0) + table(nested)));
  std::string many;
  for (int i = 0; i < 10000; i++) many += sstr("k" + std::to_string(i)) + "V";
  c.c(method(1, 50, 10, u16(0) + sstr("wide") + u8(0) + table(many)));
  c.c(std::string(5000, '\x01') + "garbage");
  std::string broken = method(1, 50, 10, u16(0) + sstr("broken") + u8(0) + table(""));
  broken.back() = 'X';
  c.c(broken);
  c.c(method(1, 50, 10, u16(0) + sstr("last") + u8(0) + table("")));
  c.s(method(1, 50, 11, sstr("deep") + u32(0) + u32(0)) + method(1, 50, 11, sstr("wide") + u32(0) + u32(0)) +
      method(1, 50, 11, sstr("last") + u32(0) + u32(0)));
  conns.push_back(c);
  // 4. A later ordinary connection.
  conns.push_back(session(41004));

  Result r = run_all_ways(conns);
  auto ca = r.of(41001);
  ASSERT_EQ(ca.size(), 1u);
  EXPECT_EQ(ca[0]->path, "after");
  EXPECT_EQ(ca[0]->status, 0);
  EXPECT_NE(flags_of(*ca[0]).find("gap"), std::string::npos);  // it follows lost framing

  auto cb = r.of(41002);
  ASSERT_EQ(cb.size(), 2u);
  EXPECT_EQ(req(*cb[0])->body.size(), 64u * 1024);
  EXPECT_NE(flags_of(*cb[0]).find("body_truncated"), std::string::npos);
  EXPECT_NE(flags_of(*cb[0]).find("protocol_error"), std::string::npos);  // cut by the method after it
  EXPECT_EQ(cb[1]->path, "after2");

  auto cc = r.of(41003);
  ASSERT_EQ(cc.size(), 3u);
  EXPECT_EQ(cc[0]->path, "deep");
  EXPECT_NE(flags_of(*cc[0]).find("truncated"), std::string::npos);
  EXPECT_EQ(cc[0]->status, 0);
  EXPECT_EQ(cc[1]->path, "wide");
  EXPECT_NE(flags_of(*cc[1]).find("truncated"), std::string::npos);
  EXPECT_EQ(cc[2]->path, "last");
  EXPECT_EQ(cc[2]->status, 0);
  EXPECT_GT(r.m.parse_errors_total(), 0u);

  EXPECT_EQ(r.of(41004).size(), 18u);
  for (const Call* call : r.of(41004)) EXPECT_EQ(call->flags, 0u) << call->method;
}

TEST(Amqp, UnansweredRequestsAtClose) {
  Conn c;
  c.cport = 40010;
  c.c(kProtoHeader);
  c.c(method(1, 50, 10, u16(0) + sstr("q") + u8(0) + table("")));
  c.c(method(1, 60, 40, u16(0) + sstr("") + sstr("q") + u8(0)) + header(1, 10) + body(1, "12345"));
  c.s(method(1, 50, 21));  // a reply nothing asked for
  Result r = run_all_ways({c});
  ASSERT_EQ(r.calls.size(), 3u);
  std::vector<std::string> got;
  for (const Call& call : r.calls) got.push_back(call.method + " " + flags_of(call));
  EXPECT_EQ(got, (std::vector<std::string>{"queue.bind-ok orphan_response", "basic.publish incomplete",
                                           "queue.declare closed"}));
}
