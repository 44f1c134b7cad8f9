// MySQL / MariaDB (userspace/protocols/mysql/) through the whole engine:
// synthetic TCP connections of packets built here after the protocol
// documentation (and checked against captures of mariadbd in the lab test),
// fed whole, one byte per packet and cut at random points (fixed seeds) with
// the same records: the handshake, text and binary result sets with and
// without CLIENT_DEPRECATE_EOF, multi-results, errors, prepared statements,
// LOCAL INFILE, the compressed framing, TLS, joining mid-connection; hostile
// input (a 2^24+ byte query, a compressed packet that lies about its size,
// garbage) stays bounded and the later calls still come out. The session
// alone for gaps, timeouts and close.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "dissector.hpp"
#include "engine_harness.hpp"
#include "mysql/mysql.hpp"
#include "mysql/session.hpp"

using namespace tapwire::dissect;
namespace proto = tapwire::proto;
using nlohmann::json;

namespace {


// ------------------------------------------------------------- packets --

std::string le(uint64_t v, int n) {
  std::string s;
  for (int i = 0; i < n; i++) s.push_back(static_cast<char>(v >> (8 * i)));
  return s;
}
std::string pkt(uint8_t seq, std::string_view payload) {
  return le(payload.size(), 3) + static_cast<char>(seq) + std::string(payload);
}
std::string lenenc(uint64_t v) {
  if (v < 251) return std::string(1, static_cast<char>(v));
  if (v < 65536) return "\xfc" + le(v, 2);
  if (v < (1u << 24)) return "\xfd" + le(v, 3);
  return "\xfe" + le(v, 8);
}
std::string lstr(std::string_view s) { return lenenc(s.size()) + std::string(s); }

constexpr uint32_t kCaps = 0x00000200 | 0x00008000 | 0x00080000 | 0x00010000 | 0x00020000 | 0x00000008 |
                           0x00200000 | 0x00000001;  // 41, secure, plugin auth, multi stmt/results, with db, lenenc, long pw
constexpr uint32_t kDeprecateEof = 1u << 24;
constexpr uint32_t kCompress = 1u << 5;
constexpr uint32_t kSsl = 1u << 11;

std::string greeting(uint32_t caps = kCaps | kDeprecateEof | kCompress | kSsl) {
  std::string p = "\x0a" "10.11.6-MariaDB-0+deb12u1";
  p.push_back('\0');
  p += le(42, 4) + "abcdefgh" + std::string(1, '\0') + le(caps & 0xffff, 2) + "\x2d" + le(2, 2) +
       le(caps >> 16, 2) + "\x15" + std::string(6, '\0') + le(0, 4) + "ijklmnopqrst" + std::string(1, '\0') +
       "mysql_native_password" + std::string(1, '\0');
  return pkt(0, p);
}
std::string handshake_response(uint32_t caps, std::string_view user, std::string_view db) {
  std::string p = le(caps, 4) + le(1 << 24, 4) + "\x2d" + std::string(23, '\0') + std::string(user) +
                  std::string(1, '\0') + lstr(std::string(20, 'P')) + std::string(db) + std::string(1, '\0') +
                  "mysql_native_password" + std::string(1, '\0');
  return pkt(1, p);
}
std::string ok(uint8_t seq, uint64_t affected = 0, uint16_t status = 2, uint64_t id = 0, uint8_t header = 0) {
  return pkt(seq, std::string(1, static_cast<char>(header)) + lenenc(affected) + lenenc(id) + le(status, 2) + le(0, 2));
}
std::string err(uint8_t seq, uint16_t code, std::string_view state, std::string_view msg) {
  return pkt(seq, "\xff" + le(code, 2) + "#" + std::string(state) + std::string(msg));
}
std::string eof(uint8_t seq, uint16_t status = 2) { return pkt(seq, "\xfe" + le(0, 2) + le(status, 2)); }
std::string coldef(uint8_t seq, std::string_view name) {
  return pkt(seq, lstr("def") + lstr("test") + lstr("t") + lstr("t") + lstr(name) + lstr(name) + "\x0c" + le(33, 2) +
                      le(11, 4) + "\x03" + le(0, 2) + "\x00" + le(0, 2));
}
std::string cmd(uint8_t c, std::string_view body) { return pkt(0, std::string(1, static_cast<char>(c)) + std::string(body)); }

// A text (or binary) result set: column count, definitions, EOF unless
// deprecated, rows, the end (EOF or OK 0xfe).
std::string result_set(int cols, int rows, bool deprecate, uint16_t end_status = 2, bool binary = false,
                       uint8_t first_seq = 1) {
  uint8_t seq = first_seq;
  std::string s = pkt(seq++, lenenc(cols));
  for (int c = 0; c < cols; c++) s += coldef(seq++, "c" + std::to_string(c));
  if (!deprecate) s += eof(seq++);
  for (int r = 0; r < rows; r++) {
    std::string row;
    if (binary) row = std::string(1, '\0') + std::string((cols + 7 + 2) / 8, '\0');
    for (int c = 0; c < cols; c++) row += binary ? le(r, 4) : lstr(std::to_string(r * 10 + c));
    s += pkt(seq++, row);
  }
  s += deprecate ? ok(seq++, 0, end_status, 0, 0xfe) : eof(seq++, end_status);
  return s;
}

// The compressed framing: each piece one compressed packet (zlib), or stored
// when `store`.
std::string compressed(uint8_t seq, std::string_view inner, bool store = false) {
  if (store) return le(inner.size(), 3) + static_cast<char>(seq) + le(0, 3) + std::string(inner);
  uLongf n = compressBound(inner.size());
  std::string z(n, '\0');
  compress(reinterpret_cast<Bytef*>(z.data()), &n, reinterpret_cast<const Bytef*>(inner.data()), inner.size());
  z.resize(n);
  return le(z.size(), 3) + static_cast<char>(seq) + le(inner.size(), 3) + z;
}

// ------------------------------------------------------------- traffic --

using Conn = tapwire::test::ConnOn<3306>;
using tapwire::test::Split;
using Result = tapwire::test::EngineRun;

Result run(const std::vector<Conn>& conns, Split split, uint32_t seed = 0, bool syn = true) {
  return tapwire::test::run_engine(conns, tapwire::test::run_options(4u << 20, split, seed, syn));
}

// Whole, byte by byte and at random splits: the same records.
Result run_all_ways(const std::vector<Conn>& conns, bool syn = true) {
  return tapwire::test::run_all_ways(conns, tapwire::test::run_options(4u << 20, Split::Whole, 0, syn),
                                     {.peak_limit = (4u << 20) + (64u << 10)});
}

std::vector<std::string> flags(const json& j) {
  std::vector<std::string> v;
  for (auto& f : j["flags"]) v.push_back(f.get<std::string>());
  return v;
}

// A whole classic session (no CLIENT_DEPRECATE_EOF).
Conn classic_session(uint16_t port) {
  Conn c;
  c.cport = port;
  c.s(greeting());
  c.c(handshake_response(kCaps, "app", "shop"));
  c.s(ok(2));
  c.c(cmd(0x03, "select c0, c1 from t"));
  c.s(result_set(2, 3, false));
  c.c(cmd(0x03, "SELECT * FROM missing"));
  c.s(err(1, 1146, "42S02", "Table 'shop.missing' doesn't exist"));
  c.c(cmd(0x02, "other"));
  c.s(ok(1));
  c.c(cmd(0x03, "update t set a=1"));
  c.s(ok(1, 7));
  c.c(cmd(0x0e, ""));
  c.s(ok(1));
  // Prepared: 1 parameter, 2 columns.
  c.c(cmd(0x16, "SELECT a, b FROM t WHERE id = ?"));
  c.s(pkt(1, std::string("\x00", 1) + le(5, 4) + le(2, 2) + le(1, 2) + std::string("\x00", 1) + le(0, 2)) +
      coldef(2, "?") + eof(3) + coldef(4, "a") + coldef(5, "b") + eof(6));
  c.c(cmd(0x17, le(5, 4) + std::string("\x00", 1) + le(1, 4) + std::string("\x00\x01\x03\x00", 4) + le(9, 4)));
  c.s(result_set(2, 4, false, 2, true));
  c.c(cmd(0x19, le(5, 4)));
  c.c(cmd(0x04, std::string("t\0", 2)));
  c.s(coldef(1, "a") + coldef(2, "b") + eof(3));
  c.c(cmd(0x01, ""));
  return c;
}

TEST(Mysql, ClassicSessionEveryCommand) {
  Result r = run_all_ways({classic_session(40001)});
  auto j = r.json_of(40001);
  ASSERT_EQ(j.size(), 11u);
  EXPECT_EQ(j[0]["request"]["command"], "connect");
  EXPECT_EQ(j[0]["request"]["user"], "app");
  EXPECT_EQ(j[0]["request"]["database"], "shop");
  EXPECT_EQ(j[0]["request"]["auth_plugin"], "mysql_native_password");
  EXPECT_FALSE(j[0]["request"].contains("auth_response"));
  EXPECT_EQ(r.records[0].find("PPPP"), std::string::npos) << "the auth response is never recorded";
  EXPECT_EQ(j[0]["response"]["server_version"], "10.11.6-MariaDB-0+deb12u1");
  EXPECT_EQ(j[0]["response"]["connection_id"], 42);
  EXPECT_EQ(r.of(40001)[0]->method, "connect");
  EXPECT_EQ(r.of(40001)[0]->status, 0);

  EXPECT_EQ(j[1]["request"]["command"], "COM_QUERY");
  EXPECT_EQ(j[1]["request"]["query"], "select c0, c1 from t");
  EXPECT_EQ(j[1]["response"]["rows"], 3);
  EXPECT_EQ(j[1]["response"]["columns"], 2);
  EXPECT_EQ(r.of(40001)[1]->method, "SELECT");
  EXPECT_EQ(r.of(40001)[1]->status, 0);

  EXPECT_EQ(j[2]["response"]["error"]["code"], 1146);
  EXPECT_EQ(j[2]["response"]["error"]["sqlstate"], "42S02");
  EXPECT_EQ(j[2]["response"]["error"]["message"], "Table 'shop.missing' doesn't exist");
  EXPECT_EQ(r.of(40001)[2]->status, 1146);

  EXPECT_EQ(j[3]["request"]["command"], "COM_INIT_DB");
  EXPECT_EQ(r.of(40001)[3]->path, "other");
  EXPECT_EQ(j[4]["response"]["affected_rows"], 7);
  EXPECT_EQ(r.of(40001)[4]->method, "UPDATE");
  EXPECT_EQ(j[5]["request"]["command"], "COM_PING");
  EXPECT_EQ(r.of(40001)[5]->method, "COM_PING");

  EXPECT_EQ(j[6]["request"]["command"], "COM_STMT_PREPARE");
  EXPECT_EQ(j[6]["response"]["statement_id"], 5);
  EXPECT_EQ(j[6]["response"]["params"], 1);
  EXPECT_EQ(j[6]["response"]["columns"], 2);
  EXPECT_EQ(j[7]["request"]["command"], "COM_STMT_EXECUTE");
  EXPECT_EQ(j[7]["request"]["statement_id"], 5);
  EXPECT_EQ(j[7]["request"]["query"], "SELECT a, b FROM t WHERE id = ?");
  EXPECT_EQ(j[7]["response"]["rows"], 4);
  EXPECT_EQ(r.of(40001)[7]->path, "5");
  EXPECT_EQ(j[8]["request"]["command"], "COM_STMT_CLOSE");
  EXPECT_TRUE(j[8]["response"].is_null());
  EXPECT_TRUE(flags(j[8]).empty());
  EXPECT_EQ(j[9]["request"]["command"], "COM_FIELD_LIST");
  EXPECT_EQ(j[9]["request"]["table"], "t");
  EXPECT_EQ(j[9]["response"]["columns"], 2);
  EXPECT_EQ(j[10]["request"]["command"], "COM_QUIT");
  for (size_t i = 0; i < j.size(); i++) EXPECT_TRUE(flags(j[i]).empty()) << i << " " << r.records[i];
}

TEST(Mysql, DeprecateEofMultiResultsAndLocalInfile) {
  Conn c;
  c.cport = 40002;
  c.s(greeting());
  c.c(handshake_response(kCaps | kDeprecateEof, "app", ""));
  c.s(ok(2));
  c.c(cmd(0x03, "select 1; select 2, 3; update t set a = 2"));
  c.s(result_set(1, 1, true, 2 | 8) + result_set(2, 2, true, 2 | 8, false, 4) + ok(8, 5));
  c.c(cmd(0x03, "select 1; select nope"));
  c.s(result_set(1, 1, true, 2 | 8) + err(4, 1054, "42S22", "Unknown column 'nope'"));
  c.c(cmd(0x03, "LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t"));
  c.s(pkt(1, "\xfb/tmp/x"));
  c.c(pkt(2, "1\n2\n3\n") + pkt(3, ""));
  c.s(ok(4, 3));
  c.c(cmd(0x16, "select ?"));
  c.s(pkt(1, std::string("\x00", 1) + le(1, 4) + le(1, 2) + le(1, 2) + std::string("\x00", 1) + le(0, 2)) +
      coldef(2, "?") + coldef(3, "?"));
  c.c(cmd(0x17, le(1, 4) + std::string("\x00", 1) + le(1, 4)));
  c.s(result_set(1, 2, true, 2, true));
  Result r = run_all_ways({c});
  auto j = r.json_of(40002);
  ASSERT_EQ(j.size(), 6u);
  EXPECT_EQ(j[1]["response"]["rows"], 3);
  EXPECT_EQ(j[1]["response"]["result_sets"], 2);
  EXPECT_EQ(j[1]["response"]["affected_rows"], 5);
  EXPECT_EQ(j[2]["response"]["rows"], 1);
  EXPECT_EQ(j[2]["response"]["error"]["code"], 1054);
  EXPECT_EQ(r.of(40002)[2]->status, 1054);
  EXPECT_EQ(j[3]["response"]["local_infile"], "/tmp/x");
  EXPECT_EQ(j[3]["response"]["affected_rows"], 3);
  EXPECT_EQ(j[4]["response"]["statement_id"], 1);
  EXPECT_EQ(j[5]["request"]["query"], "select ?");
  EXPECT_EQ(j[5]["response"]["rows"], 2);
  for (size_t i = 0; i < j.size(); i++) EXPECT_TRUE(flags(j[i]).empty()) << i << " " << r.records[i];
}

TEST(Mysql, CompressedProtocol) {
  Conn c;
  c.cport = 40003;
  c.s(greeting());
  c.c(handshake_response(kCaps | kCompress, "app", "shop"));
  c.s(ok(2));
  c.c(compressed(0, cmd(0x03, "select c0 from t")));
  // The answer in two compressed packets, cut inside a packet; then a stored one.
  const std::string rs = result_set(1, 50, false);
  c.s(compressed(1, rs.substr(0, 100)) + compressed(2, rs.substr(100)));
  c.c(compressed(0, cmd(0x03, "select nothing"), true));
  c.s(compressed(1, err(1, 1146, "42S02", "no"), true));
  Result r = run_all_ways({c});
  auto j = r.json_of(40003);
  ASSERT_EQ(j.size(), 3u);
  EXPECT_EQ(j[0]["request"]["compress"], true);
  EXPECT_EQ(j[1]["request"]["query"], "select c0 from t");
  EXPECT_EQ(j[1]["response"]["rows"], 50);
  EXPECT_EQ(j[2]["response"]["error"]["code"], 1146);
}

TEST(Mysql, TlsStopsCleanly) {
  Conn c;
  c.cport = 40004;
  c.s(greeting());
  c.c(pkt(1, le(kCaps | kSsl, 4) + le(1 << 24, 4) + "\x2d" + std::string(23, '\0')));
  c.c("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + std::string(500, 'x'));
  c.s("\x16\x03\x03\x00\x7a\x02" + std::string(300, 'y'));
  Result r = run_all_ways({c});
  auto j = r.json_of(40004);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["request"]["tls"], true);
  EXPECT_TRUE(flags(j[0]).empty());
  EXPECT_EQ(r.m.parse_errors_total(), 0u);
}

TEST(Mysql, JoinedMidConnection) {
  // No handshake seen (no SYN either): the client's command is the first
  // thing; then a result set whose end tells the EOF style.
  Conn c;
  c.cport = 40005;
  c.c(cmd(0x03, "SELECT c0, c1 FROM t"));
  c.s(result_set(2, 2, false));
  c.c(cmd(0x03, "insert into t values (1)"));
  c.s(ok(1, 1, 2, 77));
  Result r = run_all_ways({c}, false);
  auto j = r.json_of(40005);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["response"]["rows"], 2);
  EXPECT_EQ(j[1]["response"]["affected_rows"], 1);
  EXPECT_EQ(j[1]["response"]["last_insert_id"], 77);
  EXPECT_EQ(r.of(40005)[1]->method, "INSERT");
}

TEST(Mysql, JoinedMidResponseWaitsForTheNextCommand) {
  // The first bytes seen are the tail of a result set (the server's), then
  // a command: the tail is skipped, the command and its answer come out.
  Conn c;
  c.cport = 40006;
  c.s(result_set(1, 3, true).substr(30));
  c.c(cmd(0x03, "select 2"));
  c.s(result_set(1, 1, true));
  Result r = run({c}, Split::Whole, 0, false);
  auto j = r.json_of(40006);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["request"]["query"], "select 2");
  EXPECT_EQ(j[0]["response"]["rows"], 1);
}

TEST(Mysql, HostileInputStaysBoundedAndLaterCallsSurvive) {
  Conn c;
  c.cport = 40007;
  c.s(greeting());
  c.c(handshake_response(kCaps, "app", "shop"));
  c.s(ok(2));
  // A 20 MB query: a 0xffffff packet continued by another.
  std::string q = "select '" + std::string(20u << 20, 'a') + "'";
  std::string body = "\x03" + q;
  c.c(le(0xffffff, 3) + std::string(1, '\0') + body.substr(0, 0xffffff) + pkt(1, body.substr(0xffffff)));
  c.s(result_set(1, 1, false));
  // A result set claiming 2^40 columns, and rows of a 16 MB string.
  c.c(cmd(0x03, "select big"));
  c.s(pkt(1, lenenc(1ull << 40)) + coldef(2, "a"));
  c.c(cmd(0x03, "select 1"));  // the previous answer never ended: this one reads its packets
  c.s(result_set(1, 1, false));
  Conn after = classic_session(40008);
  Result r = run({c, after}, Split::Random, 7);
  auto j = r.json_of(40007);
  ASSERT_GE(j.size(), 2u);
  EXPECT_EQ(j[1]["request"]["query_size"], q.size());
  EXPECT_EQ(j[1]["request"]["query"].get<std::string>().size(), 64u << 10);
  EXPECT_NE(std::find(flags(j[1]).begin(), flags(j[1]).end(), "truncated"), flags(j[1]).end());
  EXPECT_EQ(j[1]["response"]["rows"], 1);
  EXPECT_LE(r.m.memory_peak_bytes, (4u << 20) + (64u << 10));
  auto later = r.json_of(40008);
  ASSERT_EQ(later.size(), 11u);
  for (auto& x : later) EXPECT_TRUE(flags(x).empty()) << x.dump();
}

TEST(Mysql, CompressionBombAndLiesStopTheDirection) {
  Conn c;
  c.cport = 40009;
  c.s(greeting());
  c.c(handshake_response(kCaps | kCompress, "app", "shop"));
  c.s(ok(2));
  c.c(compressed(0, cmd(0x03, "select 1")));
  // Inflates to 1 MiB of zeros but claims 100 bytes.
  std::string zeros(1 << 20, '\0');
  std::string bomb = compressed(1, zeros);
  bomb[4] = 100;
  bomb[5] = bomb[6] = 0;
  c.s(bomb);
  c.c(std::string(1000, '\x07'));  // garbage
  Conn after = classic_session(40010);
  Result r = run_all_ways({c, after});
  auto j = r.json_of(40009);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_NE(std::find(flags(j[1]).begin(), flags(j[1]).end(), "protocol_error"), flags(j[1]).end()) << j[1].dump();
  EXPECT_GE(r.m.parse_errors_total(), 1u);
  EXPECT_EQ(r.json_of(40010).size(), 11u);
}

TEST(Mysql, GarbageIsNotMysql) {
  proto::MysqlProtocol p;
  proto::FlowView v;
  auto det = [&](std::string_view s) {
    return p.detect(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()), 0, v);
  };
  EXPECT_TRUE(det(greeting()).matched);
  EXPECT_EQ(det(greeting()).client_side, 1);
  EXPECT_TRUE(det(greeting().substr(0, 12)).need_more);
  EXPECT_TRUE(det(cmd(0x03, "select 1")).matched);
  EXPECT_EQ(det(cmd(0x03, "select 1")).client_side, 0);
  EXPECT_TRUE(det(cmd(0x19, le(1, 4)) + cmd(0x03, "select 1")).matched);
  for (std::string_view s : {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                             "*1\r\n$4\r\nPING\r\n", "AMQP\x00\x00\x09\x01", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"}) {
    const auto d = det(s);
    EXPECT_FALSE(d.matched) << s;
    EXPECT_FALSE(d.need_more) << s;
  }
  // A MongoDB OP_MSG: int32 length (LE, its high byte 0) like a MySQL header.
  std::string mongo = le(41, 4) + le(1, 4) + le(0, 4) + le(2013, 4) + le(0, 4) + "\x00" + le(20, 4) + "\x10ping\x00" +
                      le(1, 4) + "\x00";
  EXPECT_FALSE(det(mongo).matched);
  EXPECT_FALSE(det(mongo).need_more);
  // PostgreSQL's startup message and a Kafka request.
  EXPECT_FALSE(det(le(0, 1) + "\x00\x00\x08\x04\xd2\x16\x2f").matched);
  EXPECT_FALSE(det(std::string("\x00\x00\x00\x14\x00\x12\x00\x03\x00\x00\x00\x01\x00\x06" "client", 20)).matched);
}

// ------------------------------------------------- the session on its own --

struct FakeCtx : proto::SessionContext {
  std::vector<proto::CallContent> calls;
  proto::ProtocolCounters counters_;
  proto::DissectLimits lim;
  uint64_t seq = 0;
  void emit(proto::CallContent&& c) override { calls.push_back(std::move(c)); }
  uint64_t next_seq() override { return ++seq; }
  uint64_t key_of(uint64_t, uint64_t) const override { return 0; }
  proto::ProtocolCounters& counters(std::string_view) override { return counters_; }
  bool enabled(std::string_view) const override { return true; }
  const proto::DissectLimits& limits() const override { return lim; }
};

std::span<const uint8_t> sp(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

TEST(Mysql, GapTimeoutAndClose) {
  FakeCtx ctx;
  proto::MysqlProtocol p;
  auto s = p.open(ctx);
  using proto::Dir;
  s->data(Dir::ServerToClient, sp(greeting()), 1);
  s->data(Dir::ClientToServer, sp(handshake_response(kCaps, "u", "d")), 2);
  s->data(Dir::ServerToClient, sp(ok(2)), 3);
  ASSERT_EQ(ctx.calls.size(), 1u);
  // A gap inside a result set: the call comes out flagged; the next command resynchronises.
  s->data(Dir::ClientToServer, sp(cmd(0x03, "select a")), 10);
  const std::string rs = result_set(1, 5, false);
  s->data(Dir::ServerToClient, sp(rs.substr(0, 40)), 11);
  s->gap(Dir::ServerToClient, 100);
  s->data(Dir::ServerToClient, sp(rs.substr(60)), 12);
  ASSERT_EQ(ctx.calls.size(), 2u);
  EXPECT_TRUE(ctx.calls[1].flags & proto::kFlagGap);
  s->data(Dir::ClientToServer, sp(cmd(0x03, "select b")), 20);
  s->data(Dir::ServerToClient, sp(result_set(1, 2, false)), 21);
  ASSERT_EQ(ctx.calls.size(), 3u);
  EXPECT_EQ(ctx.calls[2].resp<proto::MysqlResponse>()->rows, 2u);
  EXPECT_EQ(ctx.calls[2].flags, 0u);
  // A client gap: its next command after one that does not look like one.
  s->gap(Dir::ClientToServer, 5);
  s->data(Dir::ClientToServer, sp(std::string("tail of something")), 30);
  s->data(Dir::ClientToServer, sp(cmd(0x0e, "")), 31);
  s->data(Dir::ServerToClient, sp(ok(1)), 32);
  ASSERT_EQ(ctx.calls.size(), 4u);
  EXPECT_EQ(ctx.calls[3].method, "COM_PING");
  EXPECT_TRUE(ctx.calls[3].flags & proto::kFlagGap);
  // Timeout, then close.
  s->data(Dir::ClientToServer, sp(cmd(0x03, "select sleep(100)")), 40);
  s->expire(40 + ctx.lim.request_timeout_ns + 1);
  ASSERT_EQ(ctx.calls.size(), 5u);
  EXPECT_TRUE(ctx.calls[4].flags & proto::kFlagTimeout);
  s->data(Dir::ClientToServer, sp(cmd(0x03, "select 1")), 50);
  s->data(Dir::ServerToClient, sp(pkt(1, "\x01") + coldef(2, "x")), 51);
  s->close(proto::kFlagClosed, 60);
  ASSERT_EQ(ctx.calls.size(), 6u);
  EXPECT_TRUE(ctx.calls[5].flags & proto::kFlagClosed);
  EXPECT_TRUE(ctx.calls[5].flags & proto::kFlagIncomplete);
  EXPECT_LT(s->memory_bytes(), 300u << 10);
}

TEST(Mysql, Helpers) {
  EXPECT_EQ(proto::mysql::sql_verb("  /* hint */ select 1"), "SELECT");
  EXPECT_EQ(proto::mysql::sql_verb("-- c\nINSERT INTO t"), "INSERT");
  EXPECT_EQ(proto::mysql::sql_verb("(select 1)"), "SELECT");
  EXPECT_EQ(proto::mysql::sql_verb("123"), "");
  EXPECT_STREQ(proto::mysql::command_name(0x17), "COM_STMT_EXECUTE");
  EXPECT_EQ(proto::mysql::command_name(0x40), nullptr);
}

}  // namespace
