// Redis (userspace/protocols/redis/): the RESP parser on every RESP2 and
// RESP3 type, fed whole, byte by byte and at random split points (fixed
// seeds) with the same messages; detection; and the whole engine (a
// Dissector, synthetic TCP connections) on commands and replies as
// redis-cli, redis-benchmark and a RESP3 client send them: pipelining,
// inline commands, errors, MULTI/EXEC, RESP2 subscribe mode and RESP3
// pushes, attributes, a connection joined in the middle; and hostile
// input (a 2^31 bulk length, nesting 100000 deep, a 2^31 count, garbage,
// a 4 MiB value, a cut message) next to ordinary calls, with the memory
// bounded and the calls after them still dissected.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "dissector.hpp"
#include "engine_harness.hpp"
#include "redis/resp.hpp"
#include "redis/session.hpp"

using namespace tapwire::dissect;
namespace proto = tapwire::proto;
using proto::RespMessage;
using proto::RespParser;
using json = nlohmann::json;

namespace {

constexpr size_t kLimit = 1u << 20;
constexpr size_t kSlack = 64u << 10;

std::span<const uint8_t> bytes(std::string_view s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

std::string cmd(std::initializer_list<std::string_view> args) {
  std::string s = "*" + std::to_string(args.size()) + "\r\n";
  for (std::string_view a : args) s += "$" + std::to_string(a.size()) + "\r\n" + std::string(a) + "\r\n";
  return s;
}
std::string bulk(std::string_view v) { return "$" + std::to_string(v.size()) + "\r\n" + std::string(v) + "\r\n"; }

std::string value_json(const proto::RespValue& v) {
  std::string s;
  tapwire::JsonOut out(s);
  v.write_json(out);
  return s;
}

// --------------------------------------------------------------- parser --

std::vector<RespMessage> parse(RespParser::Side side, std::string_view stream, int mode, uint32_t seed = 0,
                               proto::RespLimits lim = {}) {
  RespParser p(side, lim);
  std::vector<RespMessage> out;
  std::mt19937 rng(seed);
  for (size_t off = 0; off < stream.size();) {
    size_t k = stream.size() - off;
    if (mode == 1) k = 1;
    if (mode == 2) k = std::min(k, std::uniform_int_distribution<size_t>(1, 9)(rng));
    const auto r = p.feed(bytes(stream.substr(off, k)), 1, out);
    EXPECT_EQ(r.consumed, k);
    off += k;
  }
  p.on_close(2, out);
  return out;
}

std::vector<RespMessage> parse_all_ways(RespParser::Side side, std::string_view stream, proto::RespLimits lim = {}) {
  auto whole = parse(side, stream, 0, 0, lim);
  for (int mode : {1, 2, 2, 2}) {
    static uint32_t seed = 0;
    auto other = parse(side, stream, mode, ++seed, lim);
    EXPECT_EQ(other.size(), whole.size());
    for (size_t i = 0; i < std::min(other.size(), whole.size()); i++) {
      EXPECT_EQ(value_json(other[i].value), value_json(whole[i].value)) << "message " << i << " mode " << mode;
      EXPECT_EQ(other[i].wire_size, whole[i].wire_size);
      EXPECT_EQ(other[i].truncated, whole[i].truncated);
      EXPECT_EQ(other[i].protocol_error, whole[i].protocol_error);
    }
  }
  return whole;
}

TEST(RedisResp, EveryReplyType) {
  const std::string s =
      "+OK\r\n-ERR unknown command\r\n:-42\r\n$5\r\nhello\r\n$-1\r\n$0\r\n\r\n*-1\r\n*0\r\n"
      "*3\r\n:1\r\n$3\r\nfoo\r\n*2\r\n+a\r\n_\r\n"
      "_\r\n#t\r\n#f\r\n,3.14\r\n,inf\r\n(3492890328409238509324850943850943825024385\r\n"
      "!21\r\nSYNTAX invalid syntax\r\n=15\r\ntxt:Some string\r\n"
      "%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n#f\r\n~2\r\n+x\r\n+y\r\n"
      ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
      "|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:1\r\n:2\r\n"
      "*2\r\n|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n$1\r\nw\r\n";
  auto out = parse_all_ways(RespParser::Side::Replies, s);
  std::vector<std::pair<std::string, std::string>> want = {
      {"simple_string", "\"OK\""},
      {"error", "\"ERR unknown command\""},
      {"integer", "-42"},
      {"bulk_string", "\"hello\""},
      {"bulk_string", "null"},
      {"bulk_string", "\"\""},
      {"array", "null"},
      {"array", "[]"},
      {"array", "[1,\"foo\",[\"a\",null]]"},
      {"null", "null"},
      {"boolean", "true"},
      {"boolean", "false"},
      {"double", "\"3.14\""},
      {"double", "\"inf\""},
      {"big_number", "\"3492890328409238509324850943850943825024385\""},
      {"blob_error", "\"SYNTAX invalid syntax\""},
      {"verbatim_string", "\"Some string\""},
      {"map", "{\"first\":1,\"second\":false}"},
      {"set", "[\"x\",\"y\"]"},
      {"push", "[\"message\",\"ch\",\"hi\"]"},
      {"array", "[1,2]"},  // the attribute before it dropped
      {"array", "[\"v\",\"w\"]"},  // an attribute inside an aggregate is no element
  };
  ASSERT_EQ(out.size(), want.size());
  for (size_t i = 0; i < want.size(); i++) {
    EXPECT_EQ(out[i].value.type_name(), want[i].first) << i;
    EXPECT_EQ(value_json(out[i].value), want[i].second) << i;
    EXPECT_FALSE(out[i].protocol_error || out[i].truncated || out[i].incomplete) << i;
  }
  EXPECT_EQ(out[3].wire_size, 11u);
}

TEST(RedisResp, CommandsArraysAndInline) {
  const std::string s = cmd({"SET", "k", "v"}) + "PING\r\n\r\n" + "set \"a b\" 'c d'\n" + "*0\r\n" +
                        cmd({"CLIENT", "SETNAME", "x"});
  auto out = parse_all_ways(RespParser::Side::Commands, s);
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(proto::redis_command_name(out[0]), "SET");
  EXPECT_EQ(value_json(out[0].value), "[\"SET\",\"k\",\"v\"]");
  EXPECT_EQ(out[1].value.type, 'i');
  EXPECT_EQ(value_json(out[1].value), "[\"PING\"]");
  EXPECT_EQ(value_json(out[2].value), "[\"set\",\"a b\",\"c d\"]");
  EXPECT_EQ(proto::redis_command_name(out[3]), "CLIENT");
}

TEST(RedisResp, CapsAndBadInput) {
  proto::RespLimits lim;
  lim.max_kept = 100;
  lim.max_items = 10;
  // A 1 MiB value: 100 bytes kept; 50 elements: 10 kept.
  std::string big(1 << 20, 'x');
  std::string arr = "*50\r\n";
  for (int i = 0; i < 50; i++) arr += ":" + std::to_string(i) + "\r\n";
  auto out = parse_all_ways(RespParser::Side::Replies, bulk(big) + arr + "+after\r\n", lim);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_TRUE(out[0].truncated);
  EXPECT_EQ(out[0].value.text.size(), 100u);
  EXPECT_EQ(out[0].value.count, 1 << 20);
  EXPECT_TRUE(out[1].truncated);
  EXPECT_EQ(out[1].value.items.size(), 10u);
  EXPECT_EQ(out[1].value.count, 50);
  EXPECT_EQ(value_json(out[2].value), "\"after\"");

  // Bad input after a good message: flagged, then the parser finds the next boundary.
  for (std::string bad : {std::string("$2147483648\r\n"), std::string("*2147483648\r\n"), std::string("$12a\r\n"),
                          std::string("?garbage\r\n"), std::string("$3\r\nabcXY"), std::string(":12\n"),
                          std::string("+") + std::string(100000, 'a') + "\r\n"}) {
    SCOPED_TRACE(bad.substr(0, 20));
    auto r = parse_all_ways(RespParser::Side::Replies, "+OK\r\n" + bad + "\r\n:7\r\n");
    ASSERT_GE(r.size(), 3u);
    EXPECT_FALSE(r[0].protocol_error);
    EXPECT_TRUE(r[1].protocol_error);
    EXPECT_FALSE(r[1].error.empty());
    EXPECT_EQ(value_json(r.back().value), "7");
    EXPECT_FALSE(r.back().protocol_error);
  }
  // Hostile nesting: an error at the depth cap, bounded memory.
  std::string deep;
  for (int i = 0; i < 100000; i++) deep += "*1\r\n";
  RespParser p(RespParser::Side::Replies, {});
  std::vector<RespMessage> o;
  p.feed(bytes("+OK\r\n" + deep + "\r\n+PONG\r\n"), 1, o);
  EXPECT_LT(p.memory_bytes(), 64u << 10);
  ASSERT_EQ(o.size(), 3u);
  EXPECT_TRUE(o[1].protocol_error);
  EXPECT_EQ(value_json(o[2].value), "\"PONG\"");
  // A value cut by the end of the stream: incomplete.
  auto cut = parse(RespParser::Side::Replies, "+OK\r\n*2\r\n:1\r\n", 0);
  ASSERT_EQ(cut.size(), 2u);
  EXPECT_TRUE(cut[1].incomplete);
}

TEST(RedisResp, JoinedMidStream) {
  // The first bytes are the middle of a bulk string and of a command: skipped
  // without a protocol error up to the next boundary.
  auto r = parse(RespParser::Side::Replies, "llo world\r\n+OK\r\n:5\r\n", 0);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_FALSE(r[0].protocol_error);
  EXPECT_EQ(value_json(r[0].value), "\"OK\"");
  auto c = parse(RespParser::Side::Commands, "3\r\nfoo\r\n$3\r\nbar\r\n" + cmd({"GET", "k"}), 0);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(value_json(c[0].value), "[\"GET\",\"k\"]");
  EXPECT_FALSE(c[0].protocol_error);
}

TEST(RedisResp, Detection) {
  auto det = [](std::string_view s) { return proto::resp_detect(bytes(s)); };
  EXPECT_EQ(det(cmd({"PING"})), 1);
  EXPECT_EQ(det(cmd({"SET", "k", "v"})), 1);
  EXPECT_EQ(det(cmd({"HELLO", "3"})), 1);
  EXPECT_EQ(det("PING\r\n"), 1);
  EXPECT_EQ(det("get foo\r\n"), 1);
  EXPECT_EQ(det("+OK\r\n"), 2);
  EXPECT_EQ(det("-ERR unknown command 'x'\r\n"), 2);
  EXPECT_EQ(det(":1\r\n"), 2);
  EXPECT_EQ(det("$3\r\nbar\r\n"), 2);
  EXPECT_EQ(det("*2\r\n$3\r\nfoo\r\n$3\r\nbar\r\n"), 2);  // an array of values, not a command
  // Too few bytes: need more.
  EXPECT_EQ(det("*"), -1);
  EXPECT_EQ(det("*3\r\n$3\r\nSE"), -1);
  EXPECT_EQ(det("PIN"), -1);
  EXPECT_EQ(det("+O"), -1);
  // Other protocols.
  EXPECT_EQ(det("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
  EXPECT_EQ(det("HTTP/1.1 200 OK\r\n"), 0);
  EXPECT_EQ(det("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0);
  EXPECT_EQ(det("+OK POP3 server ready\r\n"), 0);
  EXPECT_EQ(det("220 smtp.example.com ESMTP\r\n"), 0);
  EXPECT_EQ(det(std::string("\x16\x03\x01\x02\x00\x01", 6)), 0);
  EXPECT_EQ(det(std::string("\x00\x1c\x12\x34\x01\x00\x00\x01", 8)), 0);
  EXPECT_EQ(det("*x\r\n"), 0);
  EXPECT_EQ(det("*01\r\n$4\r\nPING\r\n"), 0);
  EXPECT_EQ(det("*1\r\n$-4\r\n"), 0);
  EXPECT_EQ(det("HELLOWORLD x\r\n"), 0);
  EXPECT_EQ(det(std::string("SET \x01\x02\r\n")), 0);
}

// --------------------------------------------------------------- engine --

using Conn = tapwire::test::ConnOn<6379>;
using Result = tapwire::test::EngineRun;

Result run_all_ways(const std::vector<Conn>& conns) {
  return tapwire::test::run_all_ways(conns, tapwire::test::run_options(kLimit),
                                     {.peak_limit = kLimit + kSlack, .check_shed = true});
}

std::string flags(const json& r) {
  std::string s;
  for (const auto& f : r["flags"]) s += (s.empty() ? "" : ",") + f.get<std::string>();
  return s;
}

TEST(RedisEngine, Conversation) {
  Conn c;
  c.cport = 40001;
  c.c(cmd({"SET", "foo", "bar"}));
  c.s("+OK\r\n");
  c.c(cmd({"GET", "foo"}));
  c.s(bulk("bar"));
  c.c(cmd({"NOSUCH", "x"}));
  c.s("-ERR unknown command 'nosuch'\r\n");
  c.c("PING\r\n");
  c.s("+PONG\r\n");
  // Pipelined: three commands, then three replies.
  c.c(cmd({"INCR", "n"}) + cmd({"LPUSH", "l", "a", "b"}) + cmd({"LRANGE", "l", "0", "-1"}));
  c.s(":1\r\n:2\r\n*2\r\n$1\r\nb\r\n$1\r\na\r\n");
  // MULTI/EXEC.
  c.c(cmd({"MULTI"}));
  c.s("+OK\r\n");
  c.c(cmd({"SET", "a", "1"}));
  c.s("+QUEUED\r\n");
  c.c(cmd({"INCR", "a"}));
  c.s("+QUEUED\r\n");
  c.c(cmd({"EXEC"}));
  c.s("*2\r\n+OK\r\n:2\r\n");
  // RESP2 subscribe mode: one confirmation per channel, then messages.
  c.c(cmd({"SUBSCRIBE", "ch1", "ch2"}));
  c.s("*3\r\n$9\r\nsubscribe\r\n$3\r\nch1\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$3\r\nch2\r\n:2\r\n");
  c.s("*3\r\n$7\r\nmessage\r\n$3\r\nch1\r\n$5\r\nhello\r\n");
  c.s("*4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$3\r\nch2\r\n$2\r\nhi\r\n");
  c.c(cmd({"PING"}));
  c.s("*2\r\n$4\r\npong\r\n$0\r\n\r\n");
  c.c(cmd({"UNSUBSCRIBE"}));
  c.s("*3\r\n$11\r\nunsubscribe\r\n$3\r\nch1\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$3\r\nch2\r\n:0\r\n");
  c.c(cmd({"GET", "nokey"}));
  c.s("$-1\r\n");
  c.c(cmd({"BLPOP", "q", "0"}));  // never answered: closed

  Conn r3;  // RESP3
  r3.cport = 40002;
  r3.c(cmd({"HELLO", "3"}));
  r3.s("%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n");
  r3.c(cmd({"SUBSCRIBE", "ch3"}));
  r3.s(">3\r\n$9\r\nsubscribe\r\n$3\r\nch3\r\n:1\r\n");
  r3.s(">3\r\n$7\r\nmessage\r\n$3\r\nch3\r\n$3\r\nhi3\r\n");
  r3.c(cmd({"HGETALL", "h"}));
  r3.s(">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nh\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
  r3.c(cmd({"GET", "x"}));
  r3.s("|1\r\n+ttl\r\n:5\r\n_\r\n");

  Result res = run_all_ways({c, r3});
  auto a = res.j_of(40001);
  std::vector<std::string> got;
  for (const json* r : a) {
    std::string line = (*r)["request"].is_null() ? "-" : (*r)["request"]["command"].get<std::string>();
    line += " " + ((*r)["request"].is_null() ? std::string("-") : (*r)["request"]["args"].dump());
    line += " => ";
    if ((*r)["response"].is_null())
      line += "none";
    else
      line += (*r)["response"]["type"].get<std::string>() + " " +
              ((*r)["response"].contains("error") ? (*r)["response"]["error"] : (*r)["response"]["value"]).dump();
    if (!flags(*r).empty()) line += " [" + flags(*r) + "]";
    got.push_back(line);
  }
  const std::vector<std::string> want = {
      "SET [\"foo\",\"bar\"] => simple_string \"OK\"",
      "GET [\"foo\"] => bulk_string \"bar\"",
      "NOSUCH [\"x\"] => error \"ERR unknown command 'nosuch'\"",
      "PING [] => simple_string \"PONG\"",
      "INCR [\"n\"] => integer 1",
      "LPUSH [\"l\",\"a\",\"b\"] => integer 2",
      "LRANGE [\"l\",\"0\",\"-1\"] => array [\"b\",\"a\"]",
      "MULTI [] => simple_string \"OK\"",
      "SET [\"a\",\"1\"] => simple_string \"QUEUED\"",
      "INCR [\"a\"] => simple_string \"QUEUED\"",
      "EXEC [] => array [\"OK\",2]",
      "SUBSCRIBE [\"ch1\",\"ch2\"] => array [\"subscribe\",\"ch1\",1]",
      "- - => array [\"subscribe\",\"ch2\",2]",
      "- - => array [\"message\",\"ch1\",\"hello\"]",
      "- - => array [\"pmessage\",\"c*\",\"ch2\",\"hi\"]",
      "PING [] => array [\"pong\",\"\"]",
      "UNSUBSCRIBE [] => array [\"unsubscribe\",\"ch1\",1]",
      "- - => array [\"unsubscribe\",\"ch2\",0]",
      "GET [\"nokey\"] => bulk_string null",
      "BLPOP [\"q\",\"0\"] => none [closed]",
  };
  EXPECT_EQ(got, want);
  // Summary columns.
  const auto& calls = res.calls;
  ASSERT_GE(calls.size(), 20u);
  EXPECT_EQ(calls[0].method, "SET");
  EXPECT_EQ(calls[0].path, "foo");
  EXPECT_EQ(calls[0].status, 0);
  EXPECT_EQ(calls[2].status, 1);
  EXPECT_EQ(calls[3].path, "");
  EXPECT_EQ(calls[13].method, "MESSAGE");
  EXPECT_EQ(calls[13].path, "ch1");
  EXPECT_EQ(calls[14].path, "ch2");
  EXPECT_EQ(calls[19].status, -1);
  EXPECT_TRUE((*a[3])["request"]["inline"].get<bool>());

  auto b = res.j_of(40002);
  ASSERT_EQ(b.size(), 6u);
  EXPECT_EQ((*b[0])["response"]["value"].dump(), "{\"proto\":3,\"server\":\"redis\"}");
  EXPECT_EQ((*b[1])["request"]["command"], "SUBSCRIBE");
  EXPECT_EQ((*b[1])["response"]["type"], "push");
  EXPECT_TRUE((*b[2])["request"].is_null());
  EXPECT_EQ((*b[2])["response"]["value"].dump(), "[\"message\",\"ch3\",\"hi3\"]");
  EXPECT_EQ(flags(*b[2]), "");
  EXPECT_EQ((*b[3])["response"]["value"].dump(), "[\"invalidate\",[\"h\"]]");
  EXPECT_EQ((*b[4])["request"]["command"], "HGETALL");
  EXPECT_EQ((*b[4])["response"]["value"].dump(), "{\"f\":\"v\"}");
  EXPECT_EQ((*b[5])["request"]["command"], "GET");
  EXPECT_EQ((*b[5])["response"]["type"], "null");
  EXPECT_EQ(res.m.parse_errors_total(), 0u);
  const auto& counters = res.m.breakdowns.at("redis_commands");
  EXPECT_EQ(counters.at("SET"), 2u);
  EXPECT_EQ(counters.at("push:message"), 2u);
  EXPECT_EQ(counters.at("OTHER"), 1u);  // NOSUCH
}

TEST(RedisEngine, JoinedMidConnection) {
  Conn c;
  c.cport = 40003;
  c.handshake = false;
  c.c("5\r\nhello\r\n");  // the tail of a SET's value
  c.s("lo\r\n");  // the tail of a bulk reply
  c.c(cmd({"GET", "k"}));
  c.s("$1\r\nv\r\n");
  c.c(cmd({"DEL", "k"}));
  c.s(":1\r\n");
  Result res = run_all_ways({c});
  ASSERT_EQ(res.calls.size(), 2u);
  EXPECT_EQ(res.j[0]["request"]["command"], "GET");
  EXPECT_EQ(res.j[0]["response"]["value"], "v");
  EXPECT_EQ(res.j[1]["request"]["command"], "DEL");
  EXPECT_EQ(res.j[1]["response"]["value"], 1);
}

TEST(RedisEngine, HostileInputIsBoundedAndFlagged) {
  std::vector<Conn> conns;
  auto around = [&](uint16_t port, std::string bad_reply, std::string bad_command = "") {
    Conn c;
    c.cport = port;
    c.c(cmd({"SET", "a", "1"}));
    c.s("+OK\r\n");
    if (!bad_command.empty()) {
      c.c(bad_command);
      c.s("-ERR Protocol error: invalid bulk length\r\n");
    } else {
      c.c(cmd({"GET", "a"}));
      c.s(bad_reply);
    }
    c.c(cmd({"GET", "b"}));
    c.s("$2\r\nok\r\n");
    conns.push_back(c);
  };
  around(41001, "$2147483648\r\n");
  around(41002, std::string(100000, '*').insert(0, "*1\r\n") + "\r\n");
  // 99000 levels: every 33rd line fails at the depth cap (32), so that the
  // nesting that follows a failure is itself cut, and the stream ends in sync.
  std::string deep;
  for (int i = 0; i < 33 * 3000; i++) deep += "*1\r\n";
  around(41003, deep);
  around(41004, "*2147483648\r\n");
  around(41005, "", "*2\r\n$3\r\nGET\r\n$2147483648\r\n");
  around(41006, std::string("\x00\xff garbage \x01\x02\r\n", 15));
  // A 4 MiB value: 64 KiB kept, flagged truncated.
  Conn big;
  big.cport = 41007;
  big.c(cmd({"SET", "big", std::string(4 << 20, 'v')}));
  big.s("+OK\r\n");
  big.c(cmd({"GET", "big"}));
  big.s(bulk(std::string(4 << 20, 'w')));
  big.c(cmd({"GET", "after"}));
  big.s(bulk("fine"));
  big.c(cmd({"GET", "cut"}));
  big.s("$100\r\nabc");  // cut by the close
  conns.push_back(big);
  Conn after;
  after.cport = 41008;
  after.c(cmd({"PING"}));
  after.s("+PONG\r\n");
  conns.push_back(after);

  Result res = run_all_ways(conns);
  for (uint16_t port : {41001, 41002, 41003, 41004, 41005, 41006}) {
    SCOPED_TRACE(port);
    auto v = res.j_of(port);
    ASSERT_GE(v.size(), 3u);
    EXPECT_EQ((*v[0])["response"]["value"], "OK");
    EXPECT_EQ(flags(*v[0]), "");
    EXPECT_NE(flags(*v[1]).find("protocol_error"), std::string::npos) << v[1]->dump();
    ASSERT_FALSE((*v.back())["request"].is_null()) << v.back()->dump();
    EXPECT_EQ((*v.back())["request"]["command"], "GET");
    EXPECT_EQ((*v.back())["response"]["value"], "ok") << v.back()->dump();
  }
  auto b = res.j_of(41007);
  ASSERT_EQ(b.size(), 4u);
  EXPECT_EQ(flags(*b[0]), "truncated");
  EXPECT_EQ((*b[0])["request"]["args"][1].get<std::string>().size(), 64u * 1024 - 6);
  EXPECT_EQ(flags(*b[1]), "truncated");
  EXPECT_EQ((*b[1])["response"]["value"].get<std::string>().size(), 64u * 1024);
  EXPECT_EQ((*b[2])["response"]["value"], "fine");
  EXPECT_EQ(flags(*b[3]), "incomplete");
  auto p = res.j_of(41008);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ((*p[0])["response"]["value"], "PONG");
  EXPECT_GT(res.m.parse_errors_total(), 0u);
}

}  // namespace
