// Workload identity in the call record, the dissection DB (schema 2, the
// migration from schema 1, the identity filters) and `tapwire calls`.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "call_db.hpp"
#include "dns/session.hpp"
#include "http1/session.hpp"

using namespace tapwire::dissect;
using tapwire::identity::EndpointIdentity;
using nlohmann::json;
namespace fs = std::filesystem;
using namespace std::string_literals;
namespace proto = tapwire::proto;

namespace {

constexpr uint64_t kT0 = 1'795'000'000'123'456'789ull;

Endpoint endpoint(const char* ip, uint16_t port, std::shared_ptr<const EndpointIdentity> id = nullptr) {
  Endpoint e;
  if (std::strchr(ip, ':')) {
    e.ip_version = 6;
    inet_pton(AF_INET6, ip, e.addr);
  } else {
    inet_pton(AF_INET, ip, e.addr);
  }
  e.port = port;
  e.identity = std::move(id);
  return e;
}

Call http_call(uint64_t key, const std::string& path, int status) {
  Call c;
  c.protocol = "http";
  c.key = key;
  c.ts_ns = kT0 + key * 1000;
  c.end_ns = c.ts_ns + 412'000;
  c.src = endpoint("10.244.1.7", 51234);
  c.dst = endpoint("10.244.2.9", 8080);
  proto::HttpMessage req;
  req.method = "GET";
  req.target = path;
  req.headers = {{"host", "api"}, {"accept", "*/*"}};
  c.method = req.method;
  c.path = req.target;
  c.request = std::make_shared<proto::HttpRecord>(std::move(req));
  if (status) {
    proto::HttpMessage resp;
    resp.is_request = false;
    resp.status = status;
    resp.reason = "OK";
    resp.headers = {{"content-type", "application/json"}};
    resp.body_size = 12;
    c.status = resp.status;
    c.response = std::make_shared<proto::HttpRecord>(std::move(resp));
  }
  return c;
}

Call dns_call(uint64_t key) {
  Call c;
  c.protocol = "dns";
  c.key = key;
  c.ts_ns = kT0 + key * 1000;
  c.end_ns = c.ts_ns + 90'000;
  c.src = endpoint("fd00::7", 40000);
  c.dst = endpoint("fd00::a", 53);
  proto::DnsMessage q;
  q.id = 0x1234;
  q.questions = {{"api.shop.svc.cluster.local", 1, 1}};
  c.method = "A";
  c.path = q.questions[0].name;
  c.request = std::make_shared<proto::DnsRecord>(proto::DnsMessage(q));
  proto::DnsMessage r = q;
  r.is_response = true;
  r.answers.push_back({});
  r.answers.back().type = 1;
  r.answers.back().data = "10.96.0.12";
  c.status = 0;
  c.response = std::make_shared<proto::DnsRecord>(std::move(r));
  return c;
}

std::shared_ptr<const EndpointIdentity> full_identity() {
  auto id = std::make_shared<EndpointIdentity>();
  id->pid = 4242;
  id->process = "curl";
  id->exe = "/usr/bin/curl";
  id->container = "main";
  id->container_id = std::string(64, 'a');
  id->pod = "web-5d8f-x1";
  id->namespace_ = "shop";
  id->workload_kind = "Deployment";
  id->workload_name = "web";
  id->service = "web";
  id->node = "node-1";
  return id;
}

// A fresh path for a DB; removes the DB and its WAL files when it goes.
struct TempDb {
  std::string path;
  TempDb() {
    char tmpl[] = "/tmp/tw-identity-db-XXXXXX";
    int fd = mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    close(fd);
    unlink(tmpl);
    path = tmpl;
  }
  ~TempDb() {
    for (const char* suffix : {"", "-wal", "-shm"}) unlink((path + suffix).c_str());
  }
};

std::vector<json> roundtrip(const std::vector<Call>& calls) {
  TempDb t;
  {
    CallDb db(t.path);
    for (auto& c : calls) db.insert(c);
  }
  CallDb db(t.path, true);
  CallDb::Query q;
  q.by_rowid = true;
  return db.query(q);
}

// Raw SQLite on a DB file, for what CallDb does not expose.
struct Sql {
  sqlite3* db = nullptr;
  explicit Sql(const std::string& path) { EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK); }
  ~Sql() { sqlite3_close(db); }
  void exec(const std::string& sql) {
    char* err = nullptr;
    ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "") << "\n" << sql;
  }
  // Every row's columns joined with '|', rows with '\n'.
  std::string rows(const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    std::string out;
    while (st && sqlite3_step(st) == SQLITE_ROW) {
      for (int i = 0; i < sqlite3_column_count(st); i++) {
        auto* t = sqlite3_column_text(st, i);
        out += (i ? "|" : "") + std::string(t ? reinterpret_cast<const char*>(t) : "NULL");
      }
      out += "\n";
    }
    sqlite3_finalize(st);
    return out;
  }
};

}  // namespace

// ---------------------------------------------------------------- to_json

TEST(CallIdentityJson, WithoutIdentityTheRecordIsUnchanged) {
  Call c = http_call(1, "/a?b=1", 200);
  // The record as tapwire wrote it before identity existed, byte for byte.
  EXPECT_EQ(to_json(c).dump(),
            R"({"dst":{"ip":"10.244.2.9","port":8080},"duration_us":412,"flags":[],"id":"0000000000000001",)"
            R"("protocol":"http","request":{"body_size":0,"headers":{"accept":"*/*","host":"api"},"method":"GET",)"
            R"("path":"/a?b=1","version":"HTTP/1.1"},"response":{"body_size":12,"headers":{"content-type":)"
            R"("application/json"},"reason":"OK","status":200},"src":{"ip":"10.244.1.7","port":51234},)"
            R"("ts":"2026-11-18T11:06:40.123457789Z"})");
  // An identity that knows nothing adds nothing either.
  Call e = c;
  e.src.identity = std::make_shared<const EndpointIdentity>();
  e.dst.identity = std::make_shared<const EndpointIdentity>();
  EXPECT_EQ(to_json(e).dump(), to_json(c).dump());
}

TEST(CallIdentityJson, FullIdentity) {
  Call c = http_call(2, "/", 200);
  c.src.identity = full_identity();
  c.node = "node-1";
  json j = to_json(c);
  EXPECT_EQ(j["src"], json::parse(R"({"ip":"10.244.1.7","port":51234,
      "process":{"pid":4242,"name":"curl","exe":"/usr/bin/curl"},
      "container":"main","container_id":")" + std::string(64, 'a') + R"(",
      "pod":"web-5d8f-x1","namespace":"shop","workload":{"kind":"Deployment","name":"web"},
      "service":"web","node":"node-1"})"));
  EXPECT_EQ(j["dst"], json::parse(R"({"ip":"10.244.2.9","port":8080})"));
  EXPECT_EQ(j["node"], "node-1");
}

TEST(CallIdentityJson, PartialIdentityHasOnlyTheKnownFields) {
  Call c = dns_call(3);
  auto src = std::make_shared<EndpointIdentity>();
  src->process = "coredns";  // no pid, no exe
  src->workload_kind = "DaemonSet";  // no name
  c.src.identity = src;
  auto dst = std::make_shared<EndpointIdentity>();
  dst->pid = 7;  // pid alone
  dst->namespace_ = "kube-system";
  c.dst.identity = dst;
  json j = to_json(c);
  EXPECT_EQ(j["src"], json::parse(R"({"ip":"fd00::7","port":40000,"process":{"name":"coredns"},
      "workload":{"kind":"DaemonSet"}})"));
  EXPECT_EQ(j["dst"], json::parse(R"({"ip":"fd00::a","port":53,"process":{"pid":7},"namespace":"kube-system"})"));
  EXPECT_FALSE(j.contains("node"));
}

// The hand-written formatting of addresses and ids (they run for every
// call stored) prints exactly what inet_ntop and printf print.
TEST(CallIdentityJson, AddressAndIdTextAsInetNtopAndPrintf) {
  uint64_t x = 0x9e3779b97f4a7c15ull;
  auto next = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  std::vector<uint64_t> keys = {0, 1, 0xf, 0x10, 0xffffffffffffffffull, 0x8000000000000000ull};
  std::vector<uint32_t> addrs = {0, 0xffffffffu, 0x0a000001u, 0x0a640009u, 0x7f000001u, 0x01020304u, 0x646464c8u};
  for (int i = 0; i < 20000; i++) {
    keys.push_back(next());
    addrs.push_back(static_cast<uint32_t>(next()));
  }
  for (uint64_t k : keys) {
    Call c;
    c.key = k;
    char want[17];
    std::snprintf(want, sizeof want, "%016" PRIx64, k);
    ASSERT_EQ(c.id(), want);
  }
  for (uint32_t a : addrs) {
    Endpoint e;
    uint32_t be = htonl(a);
    std::memcpy(e.addr, &be, 4);
    char want[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, e.addr, want, sizeof want);
    ASSERT_EQ(e.ip(), want);
  }
  Endpoint v6 = endpoint("fd00::1:a", 1);
  EXPECT_EQ(v6.ip(), "fd00::1:a");
}

// ------------------------------------------------------------ DB round trip

TEST(CallIdentityDb, RowsReadBackAsToJsonWithAndWithoutIdentity) {
  std::vector<Call> calls;
  calls.push_back(http_call(1, "/none", 200));  // no identity at all
  Call full = http_call(2, "/full", 503);
  full.src.identity = full_identity();
  auto server = std::make_shared<EndpointIdentity>(*full_identity());
  server->pid = 1;
  server->process = "nginx";
  server->exe = "";
  server->pod = "api-0";
  server->workload_kind = "StatefulSet";
  server->workload_name = "api";
  server->service = "api";
  full.dst.identity = server;
  full.node = "node-1";
  calls.push_back(full);
  Call partial = dns_call(3);
  auto p = std::make_shared<EndpointIdentity>();
  p->process = "coredns";
  p->workload_kind = "DaemonSet";
  partial.dst.identity = p;
  calls.push_back(partial);
  Call orphan = http_call(4, "/orphan", 0);  // no response
  orphan.src.identity = full_identity();
  calls.push_back(orphan);
  Call only_node = dns_call(5);  // capturing node, ends unknown
  only_node.node = "node-2";
  calls.push_back(only_node);

  auto rows = roundtrip(calls);
  ASSERT_EQ(rows.size(), calls.size());
  for (size_t i = 0; i < calls.size(); i++) {
    EXPECT_EQ(rows[i], to_json(calls[i])) << rows[i].dump();
    EXPECT_EQ(rows[i].dump(), to_json(calls[i]).dump());
  }
}

TEST(CallIdentityDb, UnknownFieldsAreNullColumns) {
  TempDb t;
  {
    CallDb db(t.path);
    Call c = http_call(1, "/", 200);
    auto id = std::make_shared<EndpointIdentity>();
    id->pod = "web-1";
    c.src.identity = id;
    db.insert(c);
  }
  Sql s(t.path);
  EXPECT_EQ(s.rows("SELECT node, src_pid, src_process, src_pod, src_namespace, dst_pod FROM calls"),
            "NULL|NULL|NULL|web-1|NULL|NULL\n");
  EXPECT_EQ(s.rows("SELECT value FROM meta WHERE key = 'schema_version'"), "4\n");
}

// ------------------------------------------------------------- migration

namespace {

// The schema-1 DDL exactly as tapwire wrote it before identity.
const char* kSchemaV1 = R"sql(
CREATE TABLE IF NOT EXISTS calls (
  id             TEXT NOT NULL,
  protocol       TEXT NOT NULL,
  ts_ns          INTEGER NOT NULL,
  duration_us    INTEGER,
  src_ip         TEXT NOT NULL,
  src_port       INTEGER NOT NULL,
  dst_ip         TEXT NOT NULL,
  dst_port       INTEGER NOT NULL,
  has_request    INTEGER NOT NULL,
  has_response   INTEGER NOT NULL,
  method         TEXT,
  path           TEXT,
  version        TEXT,
  req_headers    TEXT,
  req_body_size  INTEGER,
  status         INTEGER,
  reason         TEXT,
  resp_headers   TEXT,
  resp_body_size INTEGER,
  dns_id         INTEGER,
  qname          TEXT,
  qtype          TEXT,
  rcode          TEXT,
  answers        TEXT,
  flags          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_ts ON calls(ts_ns);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
)sql";

void make_v1(const std::string& path) {
  Sql s(path);
  s.exec("PRAGMA journal_mode=WAL");
  s.exec(kSchemaV1);
  s.exec("INSERT INTO meta VALUES ('schema_version', '1'), ('checkpoint', 'seg 7 off 4096')");
  // The row a schema-1 tapwire wrote for http_call(1, "/v1", 200).
  s.exec("INSERT INTO calls VALUES ('0000000000000001', 'http', " + std::to_string(kT0 + 1000) +
         ", 412, '10.244.1.7', 51234, '10.244.2.9', 8080, 1, 1, 'GET', '/v1', 'HTTP/1.1', "
         "'host: api\naccept: */*\n', 0, 200, 'OK', 'content-type: application/json\n', 12, "
         "NULL, NULL, NULL, NULL, NULL, '')");
}

std::string table_columns(const std::string& path) {
  Sql s(path);
  return s.rows("SELECT name, type FROM pragma_table_info('calls')");
}

}  // namespace

TEST(CallIdentityDb, SchemaOneIsMigratedInPlaceAndKeepsItsRows) {
  TempDb v1, fresh;
  make_v1(v1.path);
  const json old_row = to_json(http_call(1, "/v1", 200));

  // Read-only: no migration, the row reads as a call without identity and
  // identity filters match nothing (the columns do not exist).
  auto reader = std::make_unique<CallDb>(v1.path, true);
  {
    auto rows = reader->query({});
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0], old_row);
    CallDb::Query q;
    q.namespace_ = "shop";
    EXPECT_TRUE(reader->query(q).empty());
    q = {};
    q.pod_regex = ".";
    EXPECT_TRUE(reader->query(q).empty());
    EXPECT_EQ(Sql(v1.path).rows("SELECT value FROM meta WHERE key = 'schema_version'"), "1\n");
  }

  Call with_identity = http_call(2, "/v2", 200);
  with_identity.src.identity = full_identity();
  with_identity.node = "node-1";
  {
    CallDb db(v1.path);  // writing: migrates (to schema 3: identity, then bodies)
    EXPECT_EQ(db.meta("schema_version"), "4");
    EXPECT_EQ(db.meta("checkpoint"), "seg 7 off 4096");
    db.insert(with_identity);
  }
  { CallDb db(fresh.path); }
  // Same columns in the same order as a DB created at schema 3 (tapwire
  // dissect merges DBs column by column).
  EXPECT_EQ(table_columns(v1.path), table_columns(fresh.path));
  Sql s(v1.path);
  EXPECT_EQ(s.rows("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'calls_%' ORDER BY name"),
            "calls_dst_namespace\ncalls_src_namespace\ncalls_ts\n");

  // The reader opened before the migration sees the identity now.
  auto rows = reader->query({});
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0], old_row);
  EXPECT_EQ(rows[1], to_json(with_identity));
  CallDb::Query q;
  q.namespace_ = "shop";
  ASSERT_EQ(reader->query(q).size(), 1u);
  EXPECT_EQ(reader->query(q)[0]["request"]["path"], "/v2");

  // Opening again changes nothing more.
  { CallDb db(v1.path); }
  EXPECT_EQ(table_columns(v1.path), table_columns(fresh.path));
}

TEST(CallIdentityDb, RefusesAnUnknownSchema) {
  TempDb t;
  make_v1(t.path);
  Sql(t.path).exec("UPDATE meta SET value = '5' WHERE key = 'schema_version'");
  try {
    CallDb db(t.path);
    FAIL() << "schema 5 accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("schema 5"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
  // ...and leaves it as it was: no column added.
  EXPECT_EQ(table_columns(t.path).find("node"), std::string::npos);
}

// ---------------------------------------------------------------- filters

namespace {

std::shared_ptr<const EndpointIdentity> ident(const std::string& ns, const std::string& pod, const std::string& proc,
                                              const std::string& service = "", const std::string& node = "") {
  auto id = std::make_shared<EndpointIdentity>();
  id->namespace_ = ns;
  id->pod = pod;
  id->process = proc;
  id->service = service;
  id->node = node;
  return id;
}

// The calls of the filter tests, by path:
//   /a  shop/web-1 (curl)      -> shop/api-1 (nginx) svc api      captured on node-1
//   /b  pay/checkout-1 (java)  -> shop/api-2 (nginx) svc api      captured on node-1
//   /c  10.0.0.5 (sshd, node node-3) -> nothing known             captured on node-1
//   /d  nothing known                                              captured on node-2
//   /e  nothing known, nowhere
struct FilterDb {
  TempDb t;
  std::unique_ptr<CallDb> db;
  FilterDb() {
    std::vector<Call> calls;
    Call a = http_call(1, "/a", 200);
    a.src.identity = ident("shop", "web-1", "curl");
    a.dst.identity = ident("shop", "api-1", "nginx", "api");
    a.node = "node-1";
    Call b = http_call(2, "/b", 200);
    b.src.identity = ident("pay", "checkout-1", "java");
    b.dst.identity = ident("shop", "api-2", "nginx", "api");
    b.node = "node-1";
    Call c = http_call(3, "/c", 200);
    c.src.identity = ident("", "", "sshd", "", "node-3");
    c.node = "node-1";
    Call d = http_call(4, "/d", 200);
    d.node = "node-2";
    Call e = http_call(5, "/e", 200);
    {
      CallDb w(t.path);
      for (auto* x : {&a, &b, &c, &d, &e}) w.insert(*x);
    }
    db = std::make_unique<CallDb>(t.path, true);
  }
  std::string paths(const CallDb::Query& q) {
    std::string out;
    for (auto& r : db->query(q)) out += r["request"]["path"].get<std::string>();
    return out;
  }
};

CallDb::Query with(void (*set)(CallDb::Query&)) {
  CallDb::Query q;
  set(q);
  return q;
}

}  // namespace

TEST(CallIdentityFilter, NamespaceMatchesEitherEnd) {
  FilterDb f;
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.namespace_ = "shop"; })), "/a/b");
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.namespace_ = "pay"; })), "/b");  // the client's
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.namespace_ = "sho"; })), "");  // exact, not a prefix
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.namespace_ = "sh%"; })), "");  // bound, not LIKE
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.namespace_ = "x' OR '1'='1"; })), "");
  EXPECT_EQ(f.paths({}), "/a/b/c/d/e");
}

TEST(CallIdentityFilter, PodRegexMatchesEitherEnd) {
  FilterDb f;
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.pod_regex = "^api-"; })), "/a/b");
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.pod_regex = "checkout"; })), "/b");
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.pod_regex = "^web-[0-9]+$"; })), "/a");
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.pod_regex = "(web|checkout)-1"; })), "/a/b");  // extended syntax
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.pod_regex = "^pi-"; })), "");
  // The same pattern again (compiled-pattern cache) and another one after it.
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.pod_regex = "^api-"; })), "/a/b");
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.pod_regex = "-2$"; })), "/b");
}

TEST(CallIdentityFilter, BadPodRegexIsAnError) {
  FilterDb f;
  EXPECT_NE(CallDb::regex_error("(web"), "");
  EXPECT_NE(CallDb::regex_error("a\0b"s), "");
  EXPECT_EQ(CallDb::regex_error("^api-[0-9]+$"), "");
  CallDb::Query q;
  q.pod_regex = "(web";
  try {
    f.db->query(q);
    FAIL() << "bad regex accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("(web"), std::string::npos) << e.what();
  }
}

TEST(CallIdentityFilter, ServiceProcessAndNode) {
  FilterDb f;
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.service = "api"; })), "/a/b");
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.service = "web"; })), "");
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.process = "nginx"; })), "/a/b");  // server end
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.process = "java"; })), "/b");  // client end
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.process = "sshd"; })), "/c");
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.node = "node-1"; })), "/a/b/c");  // captured there
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.node = "node-2"; })), "/d");
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) { q.node = "node-3"; })), "/c");  // an end on it
  // Filters combine with AND, with each other and with the others.
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) {
              q.namespace_ = "shop";
              q.process = "java";
            })),
            "/b");
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) {
              q.service = "api";
              q.pod_regex = "^web";
              q.node = "node-1";
              q.status = 200;
            })),
            "/a");
  EXPECT_EQ(f.paths(with([](CallDb::Query& q) {
              q.service = "api";
              q.protocol = "dns";
            })),
            "");
}

TEST(CallIdentityFilter, NamespaceFilterUsesItsIndexes) {
  FilterDb f;
  Sql s(f.t.path);
  // The shape of CallDb::query's namespace filter.
  std::string plan = s.rows(
      "EXPLAIN QUERY PLAN SELECT * FROM calls WHERE 1=1 AND protocol = 'http' AND (src_namespace = ?7 OR "
      "dst_namespace = ?7) ORDER BY ts_ns, rowid");
  EXPECT_NE(plan.find("calls_src_namespace"), std::string::npos) << plan;
  EXPECT_NE(plan.find("calls_dst_namespace"), std::string::npos) << plan;
  // A call without identity has no entry in them.
  EXPECT_EQ(s.rows("SELECT count(*) FROM calls INDEXED BY calls_src_namespace WHERE src_namespace IS NOT NULL"),
            "2\n");
  EXPECT_EQ(s.rows("SELECT count(*) FROM calls INDEXED BY calls_dst_namespace WHERE dst_namespace IS NOT NULL"),
            "2\n");
}

// ---------------------------------------------------------- hostile strings

TEST(CallIdentityDb, HostileStringsAreStoredAndReturnedIntact) {
  const std::string big(1 << 20, 'x');
  const std::string nasty[] = {
      "it's \"quoted\"", "100%_done", "new\nline\r\ttab", "%", "_", "'; DROP TABLE calls; --", "nul\0byte"s,
      "\xff\xfe not utf-8", big + "tail",
  };
  std::vector<Call> calls;
  uint64_t key = 1;
  for (const auto& s : nasty) {
    Call c = http_call(key++, "/", 200);
    auto id = std::make_shared<EndpointIdentity>();
    id->process = s;
    id->exe = s;
    id->container = s;
    id->container_id = s;
    id->pod = s;
    id->namespace_ = s;
    id->workload_kind = s;
    id->workload_name = s;
    id->service = s;
    id->node = s;
    c.src.identity = id;
    c.dst.identity = id;
    c.node = s;
    calls.push_back(c);
  }
  TempDb t;
  {
    CallDb db(t.path);
    for (auto& c : calls) db.insert(c);
  }
  CallDb db(t.path, true);
  auto rows = db.query({});
  ASSERT_EQ(rows.size(), calls.size());
  for (size_t i = 0; i < calls.size(); i++) {
    EXPECT_EQ(rows[i], to_json(calls[i])) << i;
    EXPECT_EQ(rows[i]["src"]["namespace"].get<std::string>(), nasty[i]) << i;
  }
  // Each one finds exactly its own call, by every exact filter.
  for (size_t i = 0; i < calls.size(); i++) {
    CallDb::Query q;
    q.namespace_ = nasty[i];
    q.service = nasty[i];
    q.process = nasty[i];
    q.node = nasty[i];
    auto got = db.query(q);
    ASSERT_EQ(got.size(), 1u) << i;
    EXPECT_EQ(got[0]["id"], to_json(calls[i])["id"]) << i;
  }
  // The regex sees the whole value, NUL bytes included.
  CallDb::Query q;
  q.pod_regex = "byte$";
  ASSERT_EQ(db.query(q).size(), 1u);
  q.pod_regex = "^x{1000}";
  EXPECT_EQ(db.query(q).size(), 1u);
}

// ------------------------------------------------------------ tapwire calls

namespace {

struct CliRun {
  int status = -1;
  std::string out, err;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

CliRun run_tapwire(const std::vector<std::string>& args) {
  const std::string bin = std::string(TW_BUILD_DIR) + "/tapwire";
  char out_path[] = "/tmp/tw-identity-out-XXXXXX", err_path[] = "/tmp/tw-identity-err-XXXXXX";
  int out_fd = mkstemp(out_path), err_fd = mkstemp(err_path);
  CliRun r;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    std::vector<char*> argv{const_cast<char*>(bin.c_str())};
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  close(out_fd);
  close(err_fd);
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  unlink(out_path);
  unlink(err_path);
  return r;
}

}  // namespace

class TapwireCalls : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(std::string(TW_BUILD_DIR) + "/tapwire"))
      FAIL() << TW_BUILD_DIR "/tapwire not built: build the 'tapwire' target first";
  }
};

TEST_F(TapwireCalls, LinesNameTheEndsAndFiltersApply) {
  FilterDb f;
  CliRun r = run_tapwire({"calls", "--db", f.t.path, "--namespace", "shop"});
  ASSERT_EQ(r.status, 0) << r.err;
  std::vector<std::string> lines;
  std::stringstream ss(r.out);
  for (std::string l; std::getline(ss, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 2u) << r.out;
  EXPECT_NE(lines[0].find(" shop/web-1 (curl) -> shop/api-1 (nginx)  GET /a  200  412us"), std::string::npos)
      << lines[0];
  EXPECT_NE(lines[1].find(" pay/checkout-1 (java) -> shop/api-2 (nginx)  GET /b"), std::string::npos) << lines[1];

  // No pod: ip:port, with the process when known; nothing known: ip:port.
  r = run_tapwire({"calls", "--db", f.t.path, "--node", "node-1", "--process", "sshd"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find(" 10.244.1.7:51234 (sshd) -> 10.244.2.9:8080  GET /c"), std::string::npos) << r.out;
  r = run_tapwire({"calls", "--db", f.t.path, "--node", "node-2"});
  EXPECT_NE(r.out.find(" 10.244.1.7:51234 -> 10.244.2.9:8080  GET /d"), std::string::npos) << r.out;

  r = run_tapwire({"calls", "--db", f.t.path, "--pod", "^api-", "--service", "api", "--process", "java", "--json"});
  ASSERT_EQ(r.status, 0) << r.err;
  json rec = json::parse(r.out);
  EXPECT_EQ(rec["src"]["pod"], "checkout-1");
  EXPECT_EQ(rec["dst"]["service"], "api");
  EXPECT_EQ(rec["node"], "node-1");
}

TEST_F(TapwireCalls, BadPodRegexIsOneLine) {
  FilterDb f;
  CliRun r = run_tapwire({"calls", "--db", f.t.path, "--pod", "(web\n"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  EXPECT_NE(r.err.find("bad --pod: (web\\x0a: "), std::string::npos) << r.err;
}

TEST_F(TapwireCalls, HelpListsTheIdentityFilters) {
  CliRun r = run_tapwire({"calls", "--help"});
  EXPECT_EQ(r.status, 0);
  for (const char* opt : {"--namespace", "--pod", "--service", "--process", "--node"})
    EXPECT_NE(r.out.find(opt), std::string::npos) << opt << "\n" << r.out;
}

TEST_F(TapwireCalls, ControlBytesInIdentityStayOnOneLine) {
  TempDb t;
  {
    CallDb db(t.path);
    Call c = http_call(1, "/", 200);
    c.src.identity = ident("ns\n", "pod\x1b[31m", "p\r");
    db.insert(c);
  }
  CliRun r = run_tapwire({"calls", "--db", t.path});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << r.out;
  EXPECT_NE(r.out.find(" ns\\x0a/pod\\x1b[31m (p\\x0d) -> "), std::string::npos) << r.out;
}

// tap.capture.dbMaxSize: the oldest calls go, the newest stay, and the pages
// in use never exceed the bound after a commit.
TEST(CallDbBound, DeletesOldestCallsToStayWithinMaxSize) {
  const std::string path = ::testing::TempDir() + "tw-bound-" + std::to_string(getpid()) + ".db";
  fs::remove(path);
  constexpr uint64_t kMax = 1ull << 20;
  uint64_t deleted = 0;
  {
    CallDb db(path);
    db.set_auto_commit(false);
    db.set_max_size(kMax);
    for (uint64_t k = 1; k <= 20000; k++) {
      db.insert(http_call(k, "/item/" + std::to_string(k) + std::string(100, 'x'), 200));
      if (k % 500 == 0) {
        db.commit();
        const auto s = db.size_stats();
        ASSERT_LE(s.bytes, kMax) << "after " << k << " calls";
        EXPECT_EQ(s.max_bytes, kMax);
      }
    }
    db.commit();
    const auto s = db.size_stats();
    deleted = s.calls_deleted;
    EXPECT_GT(deleted, 0u);
    EXPECT_EQ(db.count() + deleted, 20000u);
    // The file stops growing: freed pages are reused.
    EXPECT_LE(s.file_bytes, kMax + (kMax / 4));
    CallDb::Query q;
    q.by_rowid = true;
    auto rows = db.query(q);
    ASSERT_FALSE(rows.empty());
    EXPECT_EQ(rows.back()["request"]["path"], "/item/20000" + std::string(100, 'x'));
    EXPECT_NE(rows.front()["request"]["path"], "/item/1" + std::string(100, 'x'));
  }
  // The count survives a reopen (it is in the DB's meta table).
  CallDb again(path);
  EXPECT_EQ(again.size_stats().calls_deleted, deleted);
  fs::remove(path);
  fs::remove(path + "-wal");
  fs::remove(path + "-shm");
}
