// PostgreSQL (userspace/protocols/postgres/) through the whole engine:
// synthetic TCP connections of protocol v3 messages built here as libpq and
// the server write them (startup with SSLRequest refused, password
// exchange, simple queries, a multi-statement query, errors, the extended
// protocol with unnamed and named statements, COPY in and out,
// asynchronous messages in between, CancelRequest), fed whole, byte by byte
// and at random split points (fixed seeds) with the same records; joined in
// the middle of a connection and of a message; SSL accepted (dissection
// stops); hostile input (a 2^31 length, a huge query, garbage, a flood of
// unanswered queries) bounded, flagged, and the calls after it dissected.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "dissector.hpp"
#include "engine_harness.hpp"
#include "postgres/postgres.hpp"
#include "postgres/session.hpp"

using namespace tapwire::dissect;
namespace proto = tapwire::proto;
using nlohmann::json;

namespace {

constexpr size_t kLimit = 1u << 20;
constexpr size_t kSlack = 64u << 10;

// ---------------------------------------------------------- messages --

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}
std::string be16(uint16_t v) { return {static_cast<char>(v >> 8), static_cast<char>(v)}; }
std::string cs(std::string_view s) { return std::string(s) + '\0'; }
std::string msg(char t, std::string_view body) { return std::string(1, t) + be32(uint32_t(body.size() + 4)) + std::string(body); }

std::string startup(std::string_view user, std::string_view db) {
  std::string b = be32(196608) + cs("user") + cs(user) + cs("database") + cs(db) + cs("application_name") + cs("psql") + '\0';
  return be32(uint32_t(b.size() + 4)) + b;
}
std::string ssl_request() { return be32(8) + be32(80877103); }
std::string cancel_request(uint32_t pid, uint32_t key) { return be32(16) + be32(80877102) + be32(pid) + be32(key); }

std::string Q(std::string_view q) { return msg('Q', cs(q)); }
std::string P(std::string_view name, std::string_view q) { return msg('P', cs(name) + cs(q) + be16(0)); }
std::string B(std::string_view portal, std::string_view stmt, const std::vector<std::string>& params, bool binary = false) {
  std::string b = cs(portal) + cs(stmt) + be16(binary ? 1 : 0) + (binary ? be16(1) : "") + be16(uint16_t(params.size()));
  for (const auto& p : params) b += p == "<null>" ? be32(0xffffffffu) : be32(uint32_t(p.size())) + p;
  return msg('B', b + be16(0));
}
std::string Dp() { return msg('D', "P" + cs("")); }
std::string E(std::string_view portal = "") { return msg('E', cs(portal) + be32(0)); }
std::string Sync() { return msg('S', ""); }
std::string pw(std::string_view s) { return msg('p', cs(s)); }

std::string auth(uint32_t code, std::string_view extra = "") { return msg('R', be32(code) + std::string(extra)); }
std::string param_status(std::string_view k, std::string_view v) { return msg('S', cs(k) + cs(v)); }
std::string key_data(uint32_t pid, uint32_t key) { return msg('K', be32(pid) + be32(key)); }
std::string ready(char s = 'I') { return msg('Z', std::string(1, s)); }
std::string row_desc(const std::vector<std::string>& cols) {
  std::string b = be16(uint16_t(cols.size()));
  for (const auto& c : cols) b += cs(c) + be32(0) + be16(0) + be32(23) + be16(4) + be32(0xffffffffu) + be16(0);
  return msg('T', b);
}
std::string data_row(const std::vector<std::string>& vals) {
  std::string b = be16(uint16_t(vals.size()));
  for (const auto& v : vals) b += be32(uint32_t(v.size())) + v;
  return msg('D', b);
}
std::string complete(std::string_view tag) { return msg('C', cs(tag)); }
std::string error(std::string_view code, std::string_view m, std::string_view sev = "ERROR") {
  return msg('E', "S" + cs(sev) + "V" + cs(sev) + "C" + cs(code) + "M" + cs(m) + '\0');
}
std::string notice(std::string_view m) {
  return msg('N', "S" + cs("NOTICE") + "V" + cs("NOTICE") + "C" + cs("00000") + "M" + cs(m) + '\0');
}
std::string s1() { return msg('1', ""); }
std::string s2() { return msg('2', ""); }

// ------------------------------------------------------------- traffic --

using Conn = tapwire::test::ConnOn<5432>;
using Result = tapwire::test::EngineRun;

Result run_all_ways(const std::vector<Conn>& conns, bool handshake = true) {
  return tapwire::test::run_all_ways(conns, tapwire::test::run_options(kLimit, tapwire::test::Split::Whole, 0, handshake),
                                     {.peak_limit = kLimit + kSlack});
}

std::vector<std::string> flags(const json& j) {
  std::vector<std::string> v;
  for (const auto& f : j["flags"]) v.push_back(f.get<std::string>());
  return v;
}

// A whole session as psql and pgbench make them.
Conn psql_session() {
  Conn c;
  c.cport = 40001;
  c.c(ssl_request());
  c.s("N");
  c.c(startup("alice", "shop"));
  c.s(auth(10, cs("SCRAM-SHA-256") + '\0'));
  c.c(pw("SCRAM-SHA-256\0secret-client-first"));
  c.s(auth(11, "r=nonce,s=salt,i=4096"));
  c.c(pw("c=biws,r=nonce,p=secretproof"));
  c.s(auth(12, "v=verifier") + auth(0) + param_status("server_version", "15.6") +
      param_status("client_encoding", "UTF8") + key_data(4242, 0xdeadbeef) + ready());
  // simple query with rows
  c.c(Q("SELECT id, name FROM items WHERE id < 3"));
  c.s(row_desc({"id", "name"}) + data_row({"1", "a"}) + data_row({"2", "b"}) + complete("SELECT 2") + ready());
  // multi-statement, a notice and a notification in the middle
  c.c(Q("BEGIN; INSERT INTO items VALUES (3, 'c'); COMMIT"));
  c.s(complete("BEGIN") + notice("hello") + msg('A', be32(99) + cs("chan") + cs("payload")) + complete("INSERT 0 1") +
      param_status("TimeZone", "UTC") + complete("COMMIT") + ready());
  // an error
  c.c(Q("SELEC 1"));
  c.s(error("42601", "syntax error at or near \"SELEC\"") + ready());
  // extended, unnamed statement, text and null params
  c.c(P("", "SELECT name FROM items WHERE id = $1 AND x = $2") + B("", "", {"2", "<null>"}) + Dp() + E() + Sync());
  c.s(s1() + s2() + row_desc({"name"}) + data_row({"b"}) + complete("SELECT 1") + ready());
  // named statement prepared once, executed twice (binary param)
  c.c(P("stmt_upd", "UPDATE items SET name = $1 WHERE id = $2") + Sync());
  c.s(s1() + ready());
  c.c(B("", "stmt_upd", {"zz", "1"}) + E() + Sync());
  c.s(s2() + complete("UPDATE 1") + ready());
  c.c(B("", "stmt_upd", {std::string("\x00\x01\x02", 3)}, true) + E() + Sync());
  c.s(s2() + complete("UPDATE 0") + ready());
  // extended error at Parse: the server skips to the Sync
  c.c(P("", "SELEKT 1") + B("", "", {}) + E() + Sync());
  c.s(error("42601", "syntax error at or near \"SELEKT\"") + ready());
  // COPY FROM STDIN
  c.c(Q("COPY items FROM STDIN"));
  c.s(msg('G', std::string(1, '\0') + be16(2) + be16(0) + be16(0)));
  c.c(msg('d', "4\td\n") + msg('d', "5\te\n") + msg('c', ""));
  c.s(complete("COPY 2") + ready());
  // COPY TO STDOUT
  c.c(Q("COPY items TO STDOUT"));
  c.s(msg('H', std::string(1, '\0') + be16(2) + be16(0) + be16(0)) + msg('d', "1\ta\n") + msg('d', "2\tb\n") +
      msg('c', "") + complete("COPY 2") + ready());
  c.c(msg('X', ""));
  return c;
}

TEST(Postgres, PsqlSessionAllWays) {
  Conn cancel;
  cancel.cport = 40002;
  cancel.c(cancel_request(4242, 0xdeadbeef));
  Result r = run_all_ways({psql_session(), cancel});
  auto v = r.j_of(40001);
  ASSERT_EQ(v.size(), 12u);
  for (const std::string& rec : r.records) {
    EXPECT_EQ(rec.find("secret"), std::string::npos) << rec;
    EXPECT_EQ(rec.find("3735928559"), std::string::npos) << "the cancel key is not recorded";
  }
  for (const Call& c : r.calls) EXPECT_STREQ(c.protocol, "postgres");
  const json& ssl = *v[0];
  EXPECT_EQ(ssl["request"]["kind"], "ssl_request");
  EXPECT_EQ(ssl["response"]["ssl"], "refused");
  EXPECT_EQ(r.calls[0].method, "SSLREQUEST");
  EXPECT_EQ(r.calls[0].status, 0);

  const json& st = *v[1];
  EXPECT_EQ(r.calls[1].method, "STARTUP");
  EXPECT_EQ(r.calls[1].path, "shop");
  EXPECT_EQ(st["request"]["user"], "alice");
  EXPECT_EQ(st["request"]["database"], "shop");
  EXPECT_EQ(st["request"]["protocol_version"], "3.0");
  EXPECT_EQ(st["response"]["authentication"],
            json::parse(R"(["sasl:SCRAM-SHA-256","sasl_continue","sasl_final","ok"])"));
  EXPECT_EQ(st["response"]["parameters"]["server_version"], "15.6");
  EXPECT_EQ(st["response"]["backend_pid"], 4242);

  const json& q1 = *v[2];
  EXPECT_EQ(r.calls[2].method, "SELECT");
  EXPECT_EQ(r.calls[2].path, "items");
  EXPECT_EQ(q1["request"]["query"], "SELECT id, name FROM items WHERE id < 3");
  EXPECT_EQ(q1["response"]["command_tag"], "SELECT 2");
  EXPECT_EQ(q1["response"]["rows"], 2);
  EXPECT_EQ(q1["response"]["columns"], json::parse(R"(["id","name"])"));
  EXPECT_EQ(q1["response"]["transaction_status"], "I");
  EXPECT_TRUE(flags(q1).empty());

  const json& multi = *v[3];
  EXPECT_EQ(r.calls[3].method, "BEGIN");
  EXPECT_EQ(multi["response"]["command_tag"], "COMMIT");
  EXPECT_EQ(multi["response"]["statements"].size(), 3u);
  EXPECT_EQ(multi["response"]["statements"][1]["command_tag"], "INSERT 0 1");
  EXPECT_EQ(multi["response"]["notices"], 1);

  const json& err = *v[4];
  EXPECT_EQ(r.calls[4].status, 1);
  EXPECT_EQ(err["response"]["error"]["severity"], "ERROR");
  EXPECT_EQ(err["response"]["error"]["sqlstate"], "42601");
  EXPECT_EQ(err["response"]["error"]["message"], "syntax error at or near \"SELEC\"");

  const json& ext = *v[5];
  EXPECT_EQ(ext["request"]["kind"], "extended");
  EXPECT_EQ(ext["request"]["query"], "SELECT name FROM items WHERE id = $1 AND x = $2");
  EXPECT_EQ(ext["request"]["statement"], "");
  EXPECT_EQ(ext["request"]["params"], json::parse(R"(["2",null])"));
  EXPECT_EQ(ext["response"]["command_tag"], "SELECT 1");
  EXPECT_EQ(ext["response"]["rows"], 1);
  EXPECT_EQ(r.calls[5].status, 0);

  const json& prep = *v[6];
  EXPECT_EQ(prep["request"]["kind"], "prepare");
  EXPECT_EQ(prep["request"]["statement"], "stmt_upd");
  EXPECT_EQ(r.calls[6].method, "UPDATE");
  EXPECT_EQ(r.calls[6].status, 0);

  const json& ex1 = *v[7];
  EXPECT_EQ(ex1["request"]["query"], "UPDATE items SET name = $1 WHERE id = $2");
  EXPECT_EQ(ex1["request"]["statement"], "stmt_upd");
  EXPECT_EQ(ex1["request"]["params"], json::parse(R"(["zz","1"])"));
  EXPECT_EQ(ex1["response"]["command_tag"], "UPDATE 1");
  EXPECT_EQ(r.calls[7].path, "items");
  const json& ex2 = *v[8];
  EXPECT_EQ(ex2["request"]["params"], json::parse(R"([{"size":3,"hex":"000102"}])"));
  EXPECT_EQ(ex2["response"]["command_tag"], "UPDATE 0");

  const json& perr = *v[9];
  EXPECT_EQ(perr["request"]["query"], "SELEKT 1");
  EXPECT_EQ(perr["response"]["error"]["sqlstate"], "42601");
  EXPECT_EQ(r.calls[9].status, 1);

  const json& cin = *v[10];
  EXPECT_EQ(r.calls[10].method, "COPY");
  EXPECT_EQ(r.calls[10].path, "items");
  EXPECT_EQ(cin["request"]["copy"]["messages"], 2);
  EXPECT_EQ(cin["request"]["copy"]["bytes"], 8);
  EXPECT_EQ(cin["request"]["copy"]["done"], true);
  EXPECT_EQ(cin["response"]["copy"]["direction"], "in");
  EXPECT_EQ(cin["response"]["command_tag"], "COPY 2");
  const json& cout = *v[11];
  EXPECT_EQ(cout["response"]["copy"]["direction"], "out");
  EXPECT_EQ(cout["response"]["copy"]["messages"], 2);
  EXPECT_EQ(cout["response"]["copy"]["bytes"], 8);

  auto cv = r.j_of(40002);
  ASSERT_EQ(cv.size(), 1u);
  EXPECT_EQ((*cv[0])["request"]["kind"], "cancel");
  EXPECT_EQ((*cv[0])["request"]["backend_pid"], 4242);
  EXPECT_TRUE((*cv[0])["response"].is_null());
  EXPECT_EQ(r.m.parse_errors_total(), 0u);
}

// Joined mid-connection: no startup seen, the client's first bytes the end
// of a message, then whole messages; and a connection seen from a query.
TEST(Postgres, JoinedMidConnection) {
  Conn a;
  a.cport = 40010;
  a.c(Q("SELECT 1"));
  a.s(row_desc({"?column?"}) + data_row({"1"}) + complete("SELECT 1") + ready());
  a.c(P("", "SELECT 2") + B("", "", {}) + E() + Sync());
  a.s(s1() + s2() + data_row({"2"}) + complete("SELECT 1") + ready());
  Conn b;
  b.cport = 40011;
  const std::string cut = Q("SELECT 'a long query whose start was not captured'");
  b.c(cut.substr(20) + Q("SELECT 3") + Q("SELECT 4"));
  b.s(complete("SELECT 0") + ready() + data_row({"3"}) + complete("SELECT 1") + ready() + complete("SELECT 0") +
      ready());
  Result r = run_all_ways({a, b}, false);
  auto va = r.j_of(40010);
  ASSERT_EQ(va.size(), 2u);
  EXPECT_EQ((*va[0])["request"]["query"], "SELECT 1");
  EXPECT_EQ((*va[0])["response"]["rows"], 1);
  EXPECT_EQ((*va[1])["request"]["query"], "SELECT 2");
  EXPECT_EQ((*va[1])["response"]["command_tag"], "SELECT 1");
  auto vb = r.j_of(40011);
  ASSERT_GE(vb.size(), 2u);
  // The queries seen are paired with their answers; the answer to the lost one is an orphan.
  const json& last = *vb.back();
  EXPECT_EQ(last["request"]["query"], "SELECT 4");
  EXPECT_EQ(last["response"]["command_tag"], "SELECT 0");
  const json& prev = *vb[vb.size() - 2];
  EXPECT_EQ(prev["request"]["query"], "SELECT 3");
  EXPECT_EQ(prev["response"]["rows"], 1);
}

// SSL accepted: one call saying so, and nothing of the encrypted bytes.
TEST(Postgres, SslAcceptedStops) {
  Conn c;
  c.cport = 40020;
  c.c(ssl_request());
  c.s("S");
  c.c(std::string("\x16\x03\x01\x00\x10", 5) + std::string(16, 'x'));
  c.s(std::string("\x16\x03\x03\x00\x10", 5) + std::string(16, 'y'));
  Result r = run_all_ways({c});
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.j[0]["response"]["ssl"], "accepted");
  EXPECT_EQ(r.j[0]["response"]["tls"], true);
  EXPECT_EQ(flags(r.j[0]), std::vector<std::string>{"upgrade"});
}

// Hostile: a 2^31 length, a query over --max-body, garbage, then ordinary
// calls; a flood of unanswered queries; other connections unaffected.
TEST(Postgres, HostileInputIsBoundedAndFlagged) {
  Conn big;
  big.cport = 40030;
  big.c(startup("bob", "db"));
  big.s(auth(0) + ready());
  std::string huge(3u << 20, 'x');
  big.c(Q("SELECT '" + huge + "'"));
  big.s(data_row({"x"}) + complete("SELECT 1") + ready());
  big.c(std::string("Q\x80\x00\x00\x00", 5) + "garbage garbage");  // 2^31: not a message
  big.c(Q("SELECT 5"));
  big.s(complete("SELECT 1") + ready());
  Conn flood;
  flood.cport = 40031;
  flood.c(startup("bob", "db"));
  flood.s(auth(0) + ready());
  std::string many;
  for (int i = 0; i < 2000; i++) many += Q("SELECT " + std::to_string(i));
  flood.c(many);
  Conn after;
  after.cport = 40032;
  after.c(Q("SELECT 6"));
  after.s(complete("SELECT 1") + ready());
  Result r = run_all_ways({big, flood, after});
  auto vb = r.j_of(40030);
  ASSERT_GE(vb.size(), 3u);
  const json& h = *vb[1];
  EXPECT_EQ(h["request"]["query"].get<std::string>().size(), 65536u);
  EXPECT_EQ(flags(h), std::vector<std::string>{"truncated"});
  EXPECT_EQ(h["response"]["rows"], 1);
  const json& last = *vb.back();
  EXPECT_EQ(last["request"]["query"], "SELECT 5");
  EXPECT_EQ(last["response"]["command_tag"], "SELECT 1");
  EXPECT_GT(r.m.parse_errors_total(), 0u);
  auto vf = r.j_of(40031);
  EXPECT_EQ(vf.size(), 2001u);  // every query comes out, unanswered
  EXPECT_EQ((*vf.back())["response"], nullptr);
  auto va = r.j_of(40032);
  ASSERT_EQ(va.size(), 1u);
  EXPECT_EQ((*va[0])["response"]["command_tag"], "SELECT 1");
}

// Not PostgreSQL: HTTP, TLS, a Kafka Metadata request (its api key and
// version read as the 3.0 code), DNS over TCP, random bytes.
TEST(Postgres, DetectionIsStrict) {
  proto::PostgresProtocol p;
  proto::FlowView fv;
  auto det = [&](std::string s) { return p.detect({reinterpret_cast<const uint8_t*>(s.data()), s.size()}, 0, fv); };
  EXPECT_TRUE(det(ssl_request()).matched);
  EXPECT_TRUE(det(startup("u", "d")).matched);
  EXPECT_TRUE(det(cancel_request(1, 2)).matched);
  EXPECT_TRUE(det(startup("u", "d").substr(0, 5)).need_more);
  EXPECT_TRUE(det(Q("SELECT 1")).matched);
  EXPECT_EQ(det(Q("SELECT 1")).client_side, 0);
  EXPECT_TRUE(det(P("", "SELECT 1") + B("", "", {}) + E() + Sync()).matched);
  proto::Detection s = det(complete("SELECT 1") + ready());
  EXPECT_TRUE(s.matched);
  EXPECT_EQ(s.client_side, 1);
  EXPECT_FALSE(det("GET / HTTP/1.1\r\nHost: x\r\n\r\n").matched);
  EXPECT_FALSE(det("HTTP/1.1 200 OK\r\n\r\n").matched);
  EXPECT_FALSE(det(std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11) + std::string(64, 'r')).matched);
  const std::string kafka = be32(0) + be16(3) + be16(0) + be32(1) + be16(7) + "rdkafka" + be32(0);
  EXPECT_FALSE(det(be32(uint32_t(kafka.size() - 4)) + kafka.substr(4)).matched);
  EXPECT_FALSE(det(std::string("\x00\x1c\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", 14) + "\x07" "example\x03" "com\x00\x00\x01\x00\x01").matched);
  EXPECT_FALSE(det("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").matched);
  EXPECT_FALSE(det(std::string("AMQP\x00\x00\x09\x01", 8)).matched);
  std::mt19937 rng(7);
  int claimed = 0;
  for (int i = 0; i < 2000; i++) {
    std::string b(64, '\0');
    for (char& c : b) c = static_cast<char>(rng());
    claimed += det(b).matched;
  }
  EXPECT_EQ(claimed, 0);
}

TEST(Postgres, SqlVerbAndTable) {
  EXPECT_EQ(proto::pg_sql_verb("  -- c\n /* x */ select 1"), "SELECT");
  EXPECT_EQ(proto::pg_sql_verb("(SELECT 1)"), "SELECT");
  EXPECT_EQ(proto::pg_sql_verb(""), "");
  EXPECT_EQ(proto::pg_sql_table("insert into public.t (a) values (1)"), "public.t");
  EXPECT_EQ(proto::pg_sql_table("UPDATE pgbench_accounts SET abalance = 1"), "pgbench_accounts");
  EXPECT_EQ(proto::pg_sql_table("DELETE FROM \"T\" WHERE 1"), "T");
  EXPECT_EQ(proto::pg_sql_table("SELECT (SELECT 1 FROM a) FROM b"), "b");
  EXPECT_EQ(proto::pg_sql_table("SELECT 1"), "");
  EXPECT_EQ(proto::pg_sql_table("COPY (SELECT 1) TO STDOUT"), "");
  EXPECT_EQ(proto::pg_sql_table("truncate table x"), "x");
}

}  // namespace
