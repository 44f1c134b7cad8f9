// The query language (userspace/serve/query.*, docs/QUERY.md): expressions
// run on a DB written by CallDb, hostile text, injection, error columns,
// `tapwire calls --filter`.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "call_db.hpp"
#include "dns/session.hpp"
#include "http1/session.hpp"
#include "json_out.hpp"
#include "query.hpp"
#include "temp_dir.hpp"

using namespace tapwire::dissect;
using tapwire::identity::EndpointIdentity;
using nlohmann::json;
namespace proto = tapwire::proto;
namespace serve = tapwire::serve;
namespace fs = std::filesystem;
using namespace std::string_literals;

namespace {

// 2026-01-01T00:00:00Z: call k starts k seconds after it.
constexpr uint64_t kT0 = 1767225600ull * 1000000000ull;
constexpr uint64_t kSec = 1000000000ull;
constexpr uint64_t kMs = 1000000ull;
constexpr uint64_t kUs = 1000ull;

// A record object as given: the message types of the protocols the test
// does not build through their own parsers (redis, grpc, http2, icmp).
struct JsonMessage final : proto::Message {
  std::string text;
  explicit JsonMessage(const json& j) : text(j.dump()) {}
  void write_json(tapwire::JsonOut& out) const override { out.raw(text); }
  size_t heap_bytes() const override { return sizeof *this + text.capacity(); }
};

Endpoint endpoint(const char* ip, uint16_t port, std::shared_ptr<const EndpointIdentity> id = nullptr) {
  Endpoint e;
  inet_pton(AF_INET, ip, e.addr);
  e.port = port;
  e.identity = std::move(id);
  return e;
}

std::shared_ptr<const EndpointIdentity> ident(const char* ns, const char* pod, const char* process, uint32_t pid = 0,
                                              const char* service = "", const char* kind = "", const char* workload = "") {
  auto id = std::make_shared<EndpointIdentity>();
  id->namespace_ = ns;
  id->pod = pod;
  id->process = process;
  id->pid = pid;
  id->service = service;
  id->workload_kind = kind;
  id->workload_name = workload;
  return id;
}

const auto kWeb1 = ident("shop", "web-1", "curl", 100, "", "Deployment", "web");
const auto kApi1 = ident("shop", "api-1", "nginx", 200, "api", "Deployment", "api");
const auto kApi2 = ident("shop", "api-2", "nginx", 201, "api", "Deployment", "api");
const auto kApi7 = ident("shop", "api-7", "nginx", 207);
const auto kCheckout1 = ident("pay", "checkout-1", "java", 300, "", "Deployment", "checkout");
const auto kProber1 = ident("monitoring", "prober-1", "prober", 400);
const auto kPayments1 = ident("pay", "payments-1", "payments", 500, "payments");
const auto kCatalog1 = ident("shop", "catalog-1", "catalog", 600, "catalog");
const auto kCoredns = ident("kube-system", "coredns-1", "coredns", 700, "kube-dns");
const auto kRedis0 = ident("shop", "redis-0", "redis-server", 800, "redis", "StatefulSet", "redis");
const auto kGreeter1 = ident("shop", "greeter-1", "greeter", 900, "greeter");

Call base(uint64_t key, const char* protocol, Endpoint src, Endpoint dst, uint64_t duration_ns) {
  Call c;
  c.protocol = protocol;
  c.key = key;
  c.ts_ns = kT0 + key * kSec;
  c.end_ns = duration_ns ? c.ts_ns + duration_ns : 0;
  c.src = std::move(src);
  c.dst = std::move(dst);
  return c;
}

// HTTP/1 through its own record type; status 0: no response.
Call http(uint64_t key, Endpoint src, Endpoint dst, const char* method, const char* target, int status,
          uint64_t duration_ns, const char* user_agent = "test/1") {
  Call c = base(key, "http", std::move(src), std::move(dst), duration_ns);
  proto::HttpMessage req;
  req.method = method;
  req.target = target;
  req.headers = {{"host", "svc"}, {"user-agent", user_agent}};
  c.method = method;
  c.path = target;
  c.request = std::make_shared<proto::HttpRecord>(std::move(req));
  if (status) {
    proto::HttpMessage resp;
    resp.is_request = false;
    resp.status = status;
    resp.reason = "R";
    resp.headers = {{"content-type", "application/json"}};
    resp.body_size = 12;
    c.status = status;
    c.response = std::make_shared<proto::HttpRecord>(std::move(resp));
  }
  return c;
}

Call dns(uint64_t key, Endpoint src, const char* qtype, uint16_t type, const char* name, uint8_t rcode,
         std::vector<std::pair<uint16_t, const char*>> answers, uint64_t duration_ns) {
  Call c = base(key, "dns", std::move(src), endpoint("10.96.0.10", 53, kCoredns), duration_ns);
  proto::DnsMessage q;
  q.id = static_cast<uint16_t>(key);
  q.questions = {{name, type, 1}};
  c.method = qtype;
  c.path = name;
  c.request = std::make_shared<proto::DnsRecord>(proto::DnsMessage(q));
  proto::DnsMessage r = q;
  r.is_response = true;
  r.rcode = rcode;
  for (auto& [t, data] : answers) {
    r.answers.push_back({});
    r.answers.back().type = t;
    r.answers.back().data = data;
  }
  c.status = rcode;
  c.response = std::make_shared<proto::DnsRecord>(std::move(r));
  return c;
}

// Any protocol from its record objects (null: none).
Call generic(uint64_t key, const char* protocol, Endpoint src, Endpoint dst, const char* method, const char* path,
             int status, uint64_t duration_ns, const json& req, const json& resp) {
  Call c = base(key, protocol, std::move(src), std::move(dst), duration_ns);
  c.method = method;
  c.path = path;
  c.status = status;
  if (!req.is_null()) c.request = std::make_shared<JsonMessage>(req);
  if (!resp.is_null()) c.response = std::make_shared<JsonMessage>(resp);
  return c;
}

Call redis(uint64_t key, const char* command, std::vector<std::string> args, int status, uint64_t duration_ns,
           const json& resp) {
  json req = {{"command", command}, {"args", args}, {"argc", args.size()}, {"size", 30}};
  const std::string path = args.empty() ? "" : args[0];
  return generic(key, "redis", endpoint("10.1.0.2", static_cast<uint16_t>(50000 + key), kApi1),
                 endpoint("10.1.0.9", 6379, kRedis0), command, path.c_str(), status, duration_ns, req, resp);
}

Call grpc(uint64_t key, const char* method, int stream_id, int grpc_status, const char* name, uint64_t duration_ns) {
  const std::string full = std::string("helloworld.Greeter/") + method;
  json req = {{"service", "helloworld.Greeter"},
              {"method", method},
              {"path", "/" + full},
              {"stream_id", stream_id},
              {"headers", {{"content-type", "application/grpc"}}}};
  json resp = grpc_status < 0 ? json(nullptr)
                              : json{{"status", 200}, {"grpc_status", grpc_status}, {"grpc_status_name", name}};
  return generic(key, "grpc", endpoint("10.1.0.1", static_cast<uint16_t>(50000 + key), kWeb1),
                 endpoint("10.1.0.5", 50051, kGreeter1), full.c_str(), ("/" + full).c_str(), grpc_status,
                 duration_ns, req, resp);
}

// The fixture: 20 calls, by key (their id is the key in 16 hex digits).
//   1 http  web-1 -> api-1 (svc api)          GET /api/items 200         50ms  curl
//   2 http  web-1 -> api-1                    GET /api/items?id=2 404   120ms  curl
//   3 http  checkout-1 (pay) -> api-2 (shop)  POST /api/orders 500      250ms
//   4 http  prober-1 (monitoring) -> payments-1 (pay) :80  GET /health 503  5ms
//   5 http2 api-1 -> catalog-1                GET /v2/items 502         300ms  pushed, stream 1
//   6 http  10.0.0.1 -> 10.0.0.2:80           GET /slow 200             1.5s   no identity, no node
//   7 http  10.0.0.1 -> 10.0.0.2:443          GET /orphan, no response       timeout, no node
//   8 dns   web-1 -> coredns  A example.com NOERROR (A 93.184.216.34)   2ms
//   9 dns   web-1 -> coredns  AAAA api.example.org NXDOMAIN              3ms
//  10 dns   api-1 -> coredns  A redis.shop.svc.cluster.local NOERROR     1ms
//  11 redis api-1 -> redis-0  GET user:1 -> "alice"                    200us
//  12 redis api-1 -> redis-0  SET user:1 alice -> OK                   300us
//  13 redis api-1 -> redis-0  GET missing -> null                      150us  gap
//  14 redis api-1 -> redis-0  HGET h f -> error                        100us
//  15 grpc  web-1 -> greeter-1  SayHello OK, stream 1                   20ms
//  16 grpc  web-1 -> greeter-1  SayGoodbye NOT_FOUND, stream 3          40ms
//  17 grpc  web-1 -> greeter-1  SayHello, no response, stream 5              reset
//  18 http  10.0.0.1 -> 10.0.0.2:80  GET /x" or 1=1 -- 200              10ms  no node
//  19 http  api-7 -> payments-1:80   GET /api/pay 200                  900ms  body_truncated
//  20 icmp  10.0.0.1 -> 10.0.0.9  echo, reply                           10ms  no node
std::vector<Call> fixture_calls() {
  std::vector<Call> v;
  v.push_back(http(1, endpoint("10.1.0.1", 50001, kWeb1), endpoint("10.1.0.2", 8080, kApi1), "GET", "/api/items", 200,
                   50 * kMs, "curl/8.1"));
  v.push_back(http(2, endpoint("10.1.0.1", 50002, kWeb1), endpoint("10.1.0.2", 8080, kApi1), "GET",
                   "/api/items?id=2", 404, 120 * kMs, "curl/8.1"));
  v.push_back(http(3, endpoint("10.2.0.1", 50003, kCheckout1), endpoint("10.1.0.3", 8080, kApi2), "POST",
                   "/api/orders", 500, 250 * kMs));
  v.push_back(http(4, endpoint("10.3.0.1", 50004, kProber1), endpoint("10.2.0.5", 80, kPayments1), "GET", "/health",
                   503, 5 * kMs));
  v.push_back(generic(5, "http2", endpoint("10.1.0.2", 50005, kApi1), endpoint("10.1.0.4", 8080, kCatalog1), "GET",
                      "/v2/items", 502, 300 * kMs,
                      {{"method", "GET"},
                       {"path", "/v2/items"},
                       {"version", "HTTP/2"},
                       {"stream_id", 1},
                       {"pushed", true},
                       {"headers", {{"user-agent", "Go-http-client/2.0"}}}},
                      {{"status", 502}, {"headers", json::object()}, {"body_size", 0}}));
  v.push_back(http(6, endpoint("10.0.0.1", 40000), endpoint("10.0.0.2", 80), "GET", "/slow", 200, 1500 * kMs));
  v.push_back(http(7, endpoint("10.0.0.1", 40001), endpoint("10.0.0.2", 443), "GET", "/orphan", 0, 0));
  v.back().flags = proto::kFlagTimeout;
  v.push_back(dns(8, endpoint("10.1.0.1", 53001, kWeb1), "A", 1, "example.com", 0, {{1, "93.184.216.34"}}, 2 * kMs));
  v.push_back(dns(9, endpoint("10.1.0.1", 53002, kWeb1), "AAAA", 28, "api.example.org", 3, {}, 3 * kMs));
  v.push_back(dns(10, endpoint("10.1.0.2", 53003, kApi1), "A", 1, "redis.shop.svc.cluster.local", 0, {{1, "10.1.0.9"}},
                  1 * kMs));
  v.push_back(redis(11, "GET", {"user:1"}, 0, 200 * kUs, {{"type", "bulk_string"}, {"value", "alice"}, {"size", 11}}));
  v.push_back(redis(12, "SET", {"user:1", "alice"}, 0, 300 * kUs, {{"type", "simple_string"}, {"value", "OK"}}));
  v.push_back(redis(13, "GET", {"missing"}, 0, 150 * kUs, {{"type", "null"}, {"value", nullptr}}));
  v.back().flags = proto::kFlagGap;
  v.push_back(redis(14, "HGET", {"h", "f"}, 1, 100 * kUs, {{"type", "error"}, {"error", "WRONGTYPE Operation"}}));
  v.push_back(grpc(15, "SayHello", 1, 0, "OK", 20 * kMs));
  v.push_back(grpc(16, "SayGoodbye", 3, 5, "NOT_FOUND", 40 * kMs));
  v.push_back(grpc(17, "SayHello", 5, -1, "", 0));
  v.back().flags = proto::kFlagReset;
  v.push_back(http(18, endpoint("10.0.0.1", 40018), endpoint("10.0.0.2", 80), "GET", "/x\" or 1=1 --", 200, 10 * kMs));
  v.push_back(http(19, endpoint("10.1.0.7", 50019, kApi7), endpoint("10.2.0.5", 80, kPayments1), "GET", "/api/pay",
                   200, 900 * kMs));
  v.back().flags = proto::kFlagBodyTruncated;
  v.push_back(generic(20, "icmp", endpoint("10.0.0.1", 0), endpoint("10.0.0.9", 0), "echo", "10.0.0.9", 0, 10 * kMs,
                      {{"version", "ICMP"}, {"type", 8}, {"code", 0}, {"type_name", "echo-request"}, {"id", 1}},
                      {{"version", "ICMP"}, {"type", 0}, {"code", 0}, {"type_name", "echo-reply"}, {"id", 1}}));
  for (auto& c : v)
    if (c.src.identity || c.dst.identity) c.node = "node-1";
  return v;
}

// Raw SQLite on the fixture DB, as a server would hold it.
class QueryDb {
 public:
  explicit QueryDb(const std::string& path) {
    EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
    EXPECT_EQ(serve::register_functions(db_), SQLITE_OK);
  }
  ~QueryDb() { sqlite3_close(db_); }
  sqlite3* db() { return db_; }

  // The keys of the calls (or ids of the flows) a compiled query selects;
  // `error` gets SQLite's message when it fails.
  std::set<uint64_t> keys(const serve::CompiledQuery& q, const char* table = "calls", std::string* error = nullptr) {
    std::set<uint64_t> out;
    const std::string sql = std::string("SELECT id FROM ") + table + " WHERE " + q.where;
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) {
      ADD_FAILURE() << sqlite3_errmsg(db_) << "\n" << sql;
      return out;
    }
    EXPECT_EQ(serve::bind(st, q), SQLITE_OK);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
      out.insert(std::stoull(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), nullptr, 16));
    if (rc != SQLITE_DONE) {
      if (error)
        *error = sqlite3_errmsg(db_);
      else
        ADD_FAILURE() << sqlite3_errmsg(db_) << "\n" << sql;
    }
    sqlite3_finalize(st);
    return out;
  }

  std::set<uint64_t> keys(const std::string& text, const serve::CompileOptions& base = {}) {
    serve::CompileOptions o = base;
    serve::detect_columns(db_, o);
    return keys(serve::compile(text, o), o.target == serve::Target::Calls ? "calls" : "flows");
  }

  int64_t count(const char* sql) {
    sqlite3_stmt* st = nullptr;
    int64_t n = -1;
    if (sqlite3_prepare_v2(db_, sql, -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
      n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
  }

 private:
  sqlite3* db_ = nullptr;
};

struct Fixture {
  tapwire::test_util::TempDir dir{"query"};
  std::string path = dir.path() + "/calls.db";
  Fixture() {
    CallDb w(path);
    for (const Call& c : fixture_calls()) w.insert(c);
  }
};

std::set<uint64_t> all_but(std::set<uint64_t> excluded) {
  std::set<uint64_t> out;
  for (uint64_t k = 1; k <= 20; k++)
    if (!excluded.count(k)) out.insert(k);
  return out;
}

std::string show(const std::set<uint64_t>& s) {
  std::string out = "{";
  for (uint64_t k : s) out += (out.size() > 1 ? "," : "") + std::to_string(k);
  return out + "}";
}

// The column of the QueryError `text` gives, and its message (0, "" when it compiles).
std::pair<size_t, std::string> error_of(const std::string& text, const serve::CompileOptions& o = {}) {
  try {
    serve::compile(text, o);
  } catch (const serve::QueryError& e) {
    return {e.column(), e.message()};
  }
  return {0, ""};
}

}  // namespace

// ------------------------------------------------------- on a real DB --

TEST(QueryDb, ExpressionsSelectExactlyTheCallsExpected) {
  Fixture f;
  QueryDb db(f.path);
  ASSERT_EQ(db.count("SELECT count(*) FROM calls"), 20);
  // Each expected set is read off the fixture table above, by hand.
  const std::vector<std::pair<std::string, std::set<uint64_t>>> cases = {
      // The examples of the brief.
      {R"(http and response.status >= 500 and dst.namespace == "shop")", {3, 5}},
      {R"(redis and request.command == "GET")", {11, 13}},
      {R"(src.pod matches "^api-" and duration > 200ms)", {5, 19}},
      {R"(dns and request.qname contains "example")", {8, 9}},
      {R"(not (protocol == "http"))", {5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 20}},
      {R"(response == null)", {7, 17}},
      {R"(response != null)", all_but({7, 17})},
      {R"(request == null)", {}},
      {R"(flags contains "gap")", {13}},
      {R"(src.ip == "10.0.0.1")", {6, 7, 18, 20}},
      {R"(dst.port in [80, 443])", {4, 6, 7, 18, 19}},
      {R"((redis or dns) and src.pod == "api-1")", {10, 11, 12, 13, 14}},
      // Bare protocol names: http is HTTP/1 and HTTP/2; gRPC is its own.
      {"http", {1, 2, 3, 4, 5, 6, 7, 18, 19}},
      {R"(protocol == "http")", {1, 2, 3, 4, 6, 7, 18, 19}},
      {"http2", {5}},
      {"grpc", {15, 16, 17}},
      {"icmp", {20}},
      {"ws or kafka or amqp or mongodb or postgres or mysql", {}},
      {"websocket", {}},
      // Flags are names, not substrings.
      {R"(flags contains "truncated")", {}},
      {R"(flags contains "body_truncated")", {19}},
      {R"(flags not contains "gap")", all_but({13})},
      {R"(flags == "")", all_but({7, 13, 17, 19})},
      // Summary columns.
      {R"(method == "GET")", {1, 2, 4, 5, 6, 7, 11, 13, 18, 19}},
      {R"(path endswith "items")", {1, 5}},
      {"status != 0", {1, 2, 3, 4, 5, 6, 9, 14, 16, 18, 19}},
      {"status == null", {7, 17}},
      // A field the call lacks: every operator is false; only not makes it true.
      {"response.status != 200", {2, 3, 4, 5}},
      {"not (response.status == 200)", all_but({1, 6, 15, 16, 18, 19})},
      {R"(src.pod not contains "api")", {1, 2, 3, 4, 8, 9, 15, 16, 17}},
      {R"(not src.pod contains "api")", {1, 2, 3, 4, 6, 7, 8, 9, 15, 16, 17, 18, 20}},
      {"dst.port not in [80, 443, 53]", {1, 2, 3, 5, 11, 12, 13, 14, 15, 16, 17, 20}},
      {R"(http and (response.status == 404 or response.status == 503) and not src.namespace == "monitoring")", {2}},
      // Identity.
      {R"(dst.service == "api")", {1, 2, 3}},
      {"src.namespace == dst.namespace", {1, 2, 5, 11, 12, 13, 14, 15, 16, 17}},
      {R"(src.workload.kind == "Deployment")", {1, 2, 3, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17}},
      {R"(dst.workload == "redis")", {11, 12, 13, 14}},
      {"src.process.pid == 100", {1, 2, 8, 9, 15, 16, 17}},
      {"src.pid == 100", {1, 2, 8, 9, 15, 16, 17}},
      {R"(dst.process == "redis-server")", {11, 12, 13, 14}},
      {"node == null", {6, 7, 18, 20}},
      {R"(node == "node-1")", all_but({6, 7, 18, 20})},
      {R"(src.pod matches "(?i)^WEB-")", {1, 2, 8, 9, 15, 16, 17}},
      {R"(src.ip startswith "10.1.")", {1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19}},
      {"src.port >= 50011 and src.port <= 50015", {11, 12, 13, 14, 15}},
      {R"(dst.ip == "10.96.0.10" and request.qtype == "AAAA")", {9}},
      // Durations against duration_us, in any unit.
      {"duration >= 1s", {6}},
      {"duration > 0.9s", {6}},
      {"duration >= 900ms", {6, 19}},
      {"duration < 1ms", {11, 12, 13, 14}},
      {"duration == 300us", {12}},
      {"duration == 300000ns", {12}},
      {"duration == 0.3ms", {12}},
      {"duration_us == 300", {12}},
      {"duration > 1m", {}},
      {"duration == null", {7, 17}},
      // Times.
      {R"(ts >= "2026-01-01T00:00:15Z")", {15, 16, 17, 18, 19, 20}},
      {R"(ts < "2026-01-01T00:00:03.5Z")", {1, 2, 3}},
      {R"(ts >= "2026-01-01T01:00:05+01:00" and ts <= "2026-01-01T00:00:06Z")", {5, 6}},
      // Inside the record: any protocol's fields.
      {R"(request.path startswith "/api/")", {1, 2, 3, 19}},
      {R"(request.headers.user-agent contains "curl")", {1, 2}},
      {R"(request.headers.User-Agent contains "curl")", {1, 2}},
      {R"(response.answers contains "93.184")", {8}},
      {R"(request.args[0] == "user:1")", {11, 12}},
      {R"(request.args[-1] == "alice")", {12}},
      {R"(request.args contains "miss")", {13}},
      {R"(dns and response.rcode == "NXDOMAIN")", {9}},
      {R"(icmp and response.type_name == "echo-reply")", {20}},
      {R"(redis and response.type == "error")", {14}},
      {R"(redis and request.command in ["SET", "HGET"])", {12, 14}},
      {R"(response.value == "alice")", {11}},
      {R"(grpc and response.grpc_status_name == "NOT_FOUND")", {16}},
      {"response.grpc_status > 0", {16}},
      {R"(request.service == "helloworld.Greeter" and request.method == "SayHello")", {15, 17}},
      {"request.stream_id == 1", {5, 15}},
      {"request.pushed == true", {5}},
      {"request.pushed == false", {}},
      {R"(request.path == "/x\" or 1=1 --")", {18}},
      {R"(request.path == '/x" or 1=1 --')", {18}},
      {R"(request.path matches r'^/x" or \d=\d')", {18}},  // raw: \d is the regex's
      {"upgrade_id == null", all_but({})},
      {R"(request.nonexistent == "x")", {}},
      {"request.nonexistent == null", all_but({})},
  };
  for (const auto& [text, want] : cases) {
    SCOPED_TRACE(text);
    std::set<uint64_t> got;
    try {
      got = db.keys(text);
    } catch (const serve::QueryError& e) {
      ADD_FAILURE() << "does not compile: " << e.what();
      continue;
    }
    EXPECT_EQ(show(got), show(want));
  }
}

TEST(QueryDb, RelativeTimesCountFromNow) {
  Fixture f;
  QueryDb db(f.path);
  serve::CompileOptions o;
  o.now_ns = kT0 + 20 * kSec;
  EXPECT_EQ(show(db.keys(R"(ts > "-10s")", o)), show({11, 12, 13, 14, 15, 16, 17, 18, 19, 20}));
  EXPECT_EQ(show(db.keys(R"(ts > "-2s" and ts <= "now")", o)), show({19, 20}));
}

TEST(QueryDb, ThroughCallDbQueryWithItsOwnFilters) {
  Fixture f;
  CallDb db(f.path, true);
  ASSERT_EQ(serve::register_functions(db.handle()), SQLITE_OK);
  serve::CompileOptions o;
  serve::detect_columns(db.handle(), o);
  o.first_param = CallDb::kFirstExtraParam;
  auto q = std::make_shared<serve::CompiledQuery>(serve::compile(R"(src.pod matches "^api-" or dns)", o));
  CallDb::Query cq;
  cq.namespace_ = "shop";  // ?7, with the filter's parameters after ?100
  cq.protocol = "dns";
  cq.extra_where = q->where;
  cq.bind_extra = [q](sqlite3_stmt* st) { serve::bind(st, *q); };
  std::vector<std::string> ids;
  for (auto& c : db.query(cq)) ids.push_back(c["id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{key_hex(8), key_hex(9), key_hex(10)}));
}

TEST(QueryDb, ABacktrackingRegexFailsTheQueryInsteadOfRunningForever) {
  Fixture f;
  QueryDb db(f.path);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db.db(), "SELECT tw_regexp(?1, ?2)", -1, &st, nullptr), SQLITE_OK);
  const std::string subject = std::string(40, 'a') + "!";
  sqlite3_bind_text(st, 1, "^(a|aa)+$", -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, subject.c_str(), -1, SQLITE_STATIC);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(sqlite3_step(st), SQLITE_ERROR);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_NE(std::string(sqlite3_errmsg(db.db())).find("backtracks too much"), std::string::npos)
      << sqlite3_errmsg(db.db());
  sqlite3_finalize(st);
  // The same query with a sane pattern, and NULL for a NULL value.
  ASSERT_EQ(sqlite3_prepare_v2(db.db(), "SELECT tw_regexp('^a+!$', ?1), tw_regexp('a', NULL)", -1, &st, nullptr),
            SQLITE_OK);
  sqlite3_bind_text(st, 1, subject.c_str(), -1, SQLITE_STATIC);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 1);
  EXPECT_EQ(sqlite3_column_type(st, 1), SQLITE_NULL);
  sqlite3_finalize(st);
  // A value that is not UTF-8 (a process name is bytes) still matches.
  ASSERT_EQ(sqlite3_prepare_v2(db.db(), "SELECT tw_regexp('^ab', ?1)", -1, &st, nullptr), SQLITE_OK);
  sqlite3_bind_text(st, 1, "ab\xff\xfe", 4, SQLITE_STATIC);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 1);
  sqlite3_finalize(st);
}

// The largest queries the bounds let through are still within SQLite's own
// limits (expression depth 1000, parameters 32766).
TEST(QueryDb, TheLargestQueriesAllowedStillRun) {
  Fixture f;
  QueryDb db(f.path);
  std::string chain = "src.pod startswith \"api-1\"";
  for (int i = 1; i < 255; i++) chain += " or dns";
  std::string deep = chain;
  for (int i = 0; i < 31; i++) deep = "not (" + deep + ")";  // 62 levels, then 2 more below
  deep += " and dst.port in [0";  // the 256th condition, with 1024 values
  for (int i = 1; i < 1024; i++) deep += "," + std::to_string(i);
  deep += "]";
  EXPECT_EQ(show(db.keys(chain)), show({5, 8, 9, 10, 11, 12, 13, 14}));
  EXPECT_EQ(show(db.keys(deep)), show({4, 6, 7, 18, 19, 20}));  // not the chain, and a port below 1024
  EXPECT_EQ(show(db.keys("not (" + deep + ")")), show(all_but({4, 6, 7, 18, 19, 20})));
}

// Rows of schemas 1-3 have no request/response JSON but HTTP and DNS
// columns: the request.* / response.* fields read those.
TEST(QueryDb, RowsBeforeTheRecordColumnsReadThroughTheirOwnColumns) {
  Fixture f;
  QueryDb db(f.path);
  char* err = nullptr;
  ASSERT_EQ(sqlite3_exec(db.db(),
                         "INSERT INTO calls (id, protocol, ts_ns, duration_us, src_ip, src_port, dst_ip, dst_port, "
                         "has_request, has_response, method, path, version, status, reason, flags) VALUES "
                         "('0000000000000015', 'http', 1, 10, '10.9.0.1', 1, '10.9.0.2', 80, 1, 1, 'GET', '/old', "
                         "'HTTP/1.1', 404, 'Not Found', '');"
                         "INSERT INTO calls (id, protocol, ts_ns, duration_us, src_ip, src_port, dst_ip, dst_port, "
                         "has_request, has_response, dns_id, qname, qtype, rcode, answers, flags) VALUES "
                         "('0000000000000016', 'dns', 2, 10, '10.9.0.1', 2, '10.9.0.2', 53, 1, 1, 7, "
                         "'legacy.example', 'A', 'NXDOMAIN', '', '')",
                         nullptr, nullptr, &err),
            SQLITE_OK)
      << (err ? err : "");
  EXPECT_EQ(show(db.keys("response.status == 404")), show({2, 0x15}));
  EXPECT_EQ(show(db.keys(R"(request.version == "HTTP/1.1")")), show({1, 2, 3, 4, 6, 7, 18, 19, 0x15}));
  EXPECT_EQ(show(db.keys(R"(dns and request.qname contains "example")")), show({8, 9, 0x16}));
  EXPECT_EQ(show(db.keys(R"(response.rcode == "NXDOMAIN")")), show({9, 0x16}));
  // A row of schema 4 without a request (an ICMP error) has summary
  // columns but no request: they do not stand in for it.
  ASSERT_EQ(sqlite3_exec(db.db(),
                         "INSERT INTO calls (id, protocol, ts_ns, src_ip, src_port, dst_ip, dst_port, has_request, "
                         "has_response, method, path, status, flags, response) VALUES ('0000000000000017', 'icmp', 3, "
                         "'10.9.0.1', 3, '10.9.0.2', 9, 0, 1, 'destination-unreachable', 'port-unreachable', 303, '', "
                         "'{\"type\": 3, \"code\": 3}')",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  EXPECT_EQ(show(db.keys(R"(icmp and (request.method == "destination-unreachable" or request.path != ""))")), show({}));
  EXPECT_EQ(show(db.keys(R"(method == "destination-unreachable" and status == 303 and response.code == 3)")),
            show({0x17}));
  EXPECT_EQ(show(db.keys("response.status == 303")), show({}));
}

// A DB of schema 1 read as it is: identity and record fields read as NULL.
TEST(QueryDb, ASchemaOneDbHasNoIdentityAndNoRecordColumns) {
  tapwire::test_util::TempDir dir("query");
  const std::string path = dir.path() + "/v1.db";
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &raw), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(raw,
                         "CREATE TABLE calls (id TEXT NOT NULL, protocol TEXT NOT NULL, ts_ns INTEGER NOT NULL, "
                         "duration_us INTEGER, src_ip TEXT NOT NULL, src_port INTEGER NOT NULL, dst_ip TEXT NOT NULL, "
                         "dst_port INTEGER NOT NULL, has_request INTEGER NOT NULL, has_response INTEGER NOT NULL, "
                         "method TEXT, path TEXT, version TEXT, req_headers TEXT, req_body_size INTEGER, status INTEGER, "
                         "reason TEXT, resp_headers TEXT, resp_body_size INTEGER, dns_id INTEGER, qname TEXT, qtype TEXT, "
                         "rcode TEXT, answers TEXT, flags TEXT NOT NULL);"
                         "INSERT INTO calls VALUES ('0000000000000001', 'dns', 1, 5, '10.0.0.1', 1, '10.0.0.2', 53, 1, 1, "
                         "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 9, 'a.example', 'A', 'NOERROR', '', '')",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(raw);
  QueryDb db(path);
  serve::CompileOptions o;
  serve::detect_columns(db.db(), o);
  EXPECT_FALSE(o.identity_columns);
  EXPECT_FALSE(o.record_columns);
  EXPECT_EQ(show(db.keys(R"(src.pod == "x" or node == "n" or upgrade_id == "u")")), show({}));
  EXPECT_EQ(show(db.keys("src.pod == null and request.grpc_status == null")), show({1}));
  EXPECT_EQ(show(db.keys(R"(request.qname endswith ".example" and request.id == 9)")), show({1}));
  EXPECT_EQ(show(db.keys(R"(request.args contains "a")")), show({}));
}

// ----------------------------------------------------------- flows --

TEST(QueryDb, FlowsHaveTheirOwnFields) {
  tapwire::test_util::TempDir dir("query");
  const std::string path = dir.path() + "/flows.db";
  {
    CallDb w(path);
    auto flow = [&](int n, const char* protocol, const char* server_ip, int server_port, uint64_t first_s,
                    uint64_t last_s, const char* state, double rtt_us, uint64_t retrans, json flags, json names) {
      CallDb::FlowRow f;
      f.id = key_hex(static_cast<uint64_t>(n));
      f.protocol = protocol;
      f.first_ns = kT0 + first_s * kSec;
      f.last_ns = kT0 + last_s * kSec;
      f.client_ip = "10.1.0.1";
      f.client_port = 40000 + n;
      f.server_ip = server_ip;
      f.server_port = server_port;
      f.client_namespace = n == 3 ? "" : "shop";
      f.client_pod = n == 3 ? "" : "web-1";
      f.state = state;
      f.end = std::string(state) == "established" ? "" : "fin";
      f.packets = 10u * static_cast<uint64_t>(n);
      f.bytes = 1000u * static_cast<uint64_t>(n);
      f.retransmissions = retrans;
      f.rtt_us = rtt_us;
      f.node = "node-1";
      f.record = json{{"id", f.id}, {"flags", flags}, {"server", {{"ip", server_ip}, {"names", names}}}}.dump();
      w.upsert_flow(f);
    };
    flow(1, "tcp", "140.82.112.6", 443, 0, 3, "closed", 57.5, 1, {"retransmitting"}, {"api.github.com"});
    flow(2, "tcp", "10.1.0.2", 8080, 1, 2, "reset", 120, 0, {"reset"}, json::array());
    flow(3, "udp", "10.96.0.10", 53, 2, 2, "ended", -1, 0, json::array(), json::array());
    flow(4, "tcp", "10.1.0.2", 8080, 5, 70, "established", 30, 0, json::array(), json::array());
  }
  QueryDb db(path);
  serve::CompileOptions o;
  o.target = serve::Target::Flows;
  const std::vector<std::pair<std::string, std::set<uint64_t>>> cases = {
      {"tcp", {1, 2, 4}},
      {"udp", {3}},
      {"tcp and server.port == 443", {1}},
      {R"(flags contains "reset")", {2}},
      {R"(flags not contains "reset")", {1, 3, 4}},
      {"duration > 1s", {1, 4}},
      {"duration > 1m", {4}},
      {"rtt > 100us", {2}},
      {"rtt < 60us", {1, 4}},
      {"rtt == null", {3}},
      {R"(src.namespace == "shop" and dst.port == 8080)", {2, 4}},
      {R"(client.pod == null)", {3}},
      {R"(server.names contains "github")", {1}},
      {R"(state in ["reset", "refused"])", {2}},
      {"end == null", {4}},
      {"retransmissions > 0 or bytes >= 3000", {1, 3, 4}},
      {R"(first_seen >= "2026-01-01T00:00:02Z")", {3, 4}},
      {R"(record.server.ip == "10.96.0.10")", {3}},
  };
  for (const auto& [text, want] : cases) {
    SCOPED_TRACE(text);
    try {
      EXPECT_EQ(show(db.keys(text, o)), show(want));
    } catch (const serve::QueryError& e) {
      ADD_FAILURE() << "does not compile: " << e.what();
    }
  }
  EXPECT_NE(error_of("http", o).second.find("unknown protocol \"http\""), std::string::npos) << error_of("http", o).second;
  EXPECT_EQ(error_of("response.status == 1", o).first, 1u);
}

// ---------------------------------------------------------- injection --

TEST(QueryInjection, ValuesAreBoundNeverSpliced) {
  Fixture f;
  QueryDb db(f.path);
  const std::vector<std::string> hostile = {
      "x\" or 1=1 --",
      "x' OR '1'='1",
      "'; DROP TABLE calls; --",
      "%",
      "*",
      "') OR 1=1 --",
      "\\\"",
  };
  for (const std::string& value : hostile) {
    SCOPED_TRACE(value);
    // As a query language string: escape \ and ".
    std::string lit;
    for (char c : value) {
      if (c == '\\' || c == '"') lit += '\\';
      lit += c;
    }
    for (const char* field : {"request.path", "path", "src.pod", "dst.namespace"}) {
      for (const char* op : {" == ", " contains ", " startswith ", " endswith "}) {
        const std::string text = std::string(field) + op + "\"" + lit + "\"";
        serve::CompiledQuery q = serve::compile(text);
        EXPECT_EQ(q.where.find(value), std::string::npos) << q.where;
        EXPECT_EQ(q.where.find("1=1"), std::string::npos) << q.where;
        EXPECT_EQ(q.where.find("DROP"), std::string::npos) << q.where;
        bool bound = false;
        for (auto& p : q.params)
          if (auto* s = std::get_if<std::string>(&p); s && s->find(value) != std::string::npos) bound = true;
        EXPECT_TRUE(bound) << text;
        // Only call 18's path holds one of them: `/x" or 1=1 --`.
        const bool in_18 = value == "x\" or 1=1 --" && std::string(field).find("path") != std::string::npos &&
                           (std::string(op) == " contains " || std::string(op) == " endswith ");
        EXPECT_EQ(show(db.keys(q)), in_18 ? "{18}" : "{}") << text;
      }
    }
  }
  EXPECT_EQ(db.count("SELECT count(*) FROM calls"), 20);
  // The brief's attempt: matches nothing, while the call whose path it
  // resembles is found by its exact text.
  EXPECT_EQ(show(db.keys(R"(request.path == "x\" or 1=1 --")")), "{}");
  EXPECT_EQ(show(db.keys(R"(request.path == "/x\" or 1=1 --")")), "{18}");
  // What cannot be a value never reaches SQL: an error.
  for (const char* text : {R"(request.path == "x" or 1=1 --")", "request.path == x; DROP TABLE calls",
                           "request.path == 'x' --", R"(request.path == "x"; select 1)"}) {
    SCOPED_TRACE(text);
    EXPECT_THROW(serve::compile(text), serve::QueryError);
  }
}

TEST(QueryInjection, FieldNamesGoThroughTheTableOrStrictPaths) {
  // A hand-built AST (what a server could be given) reaches the compiler
  // without the tokenizer: the compiler checks names again.
  for (const char* name : {"request.x') OR 1=1 --", "request.a\"b", "request.a'b", "src.pod; DROP", "request.",
                           "request..a", "request.a[", "request.a[x]", "request.a]", "1abc", "request.a b", ""}) {
    SCOPED_TRACE(name);
    serve::Expr e;
    e.kind = serve::Expr::Kind::Compare;
    e.field = name;
    e.field_column = 1;
    e.op = serve::Op::Eq;
    e.value.kind = serve::Literal::Kind::String;
    e.value.s = "v";
    EXPECT_THROW(serve::compile(e), serve::QueryError);
  }
  serve::Expr bare;
  bare.kind = serve::Expr::Kind::Bare;
  bare.field = "http' OR '1'='1";
  EXPECT_THROW(serve::compile(bare), serve::QueryError);
  // JSON paths are made of [A-Za-z0-9_-] and indexes only, quoted.
  serve::CompiledQuery q = serve::compile("request.headers.x-forwarded-for[0] == \"1\"");
  EXPECT_NE(q.where.find("'$.\"headers\".\"x-forwarded-for\"[0]'"), std::string::npos) << q.where;
  q = serve::compile("request.args[-1] == \"1\"");
  EXPECT_NE(q.where.find("'$.\"args\"[#-1]'"), std::string::npos) << q.where;
}

// -------------------------------------------------------- hostile text --

TEST(QueryErrors, HostileInputGivesAClearErrorAtItsColumn) {
  struct Case {
    std::string text;
    size_t column;
    std::string message;  // a part of it
  };
  const std::vector<Case> cases = {
      {"", 1, "empty query"},
      {"   ", 1, "empty query"},
      {R"(src.pod == "abc)", 12, "unterminated string"},
      {R"(src.pod == 'abc)", 12, "unterminated string"},
      {R"(src.pod == "abc\)", 12, "unterminated string"},
      {"http; drop table calls", 5, "';'"},
      {"http -- comment", 6, "'--'"},
      {"http\0and dns"s.substr(0, 12), 5, "NUL byte"},
      {"src.pod == \"\xff\"", 13, "invalid UTF-8 (byte 0xff)"},
      {"src.pod == \"\xc0\xaf\"", 13, "invalid UTF-8"},  // overlong '/'
      {"src.pod == \"\xed\xa0\x80\"", 13, "invalid UTF-8"},  // a surrogate
      {"src.port == 99999999999999999999", 13, "number out of range"},
      {"src.port == -99999999999999999999", 13, "number out of range"},
      {"response.status > 1e999", 19, "number out of range"},
      {"duration > 99999999999h", 12, "duration out of range"},
      {"duration > -5ms", 12, "cannot be negative"},
      {"src.ip == 10.0.0.1", 11, "put an address in quotes"},
      {R"(dst.namespace = "shop")", 15, "compare with =="},
      {R"(src.pod == "x" && dns)", 16, "with and"},
      {R"(src.pod == "x" || dns)", 16, "with or"},
      {"!dns", 1, "negate with not"},
      {"http and", 9, "found the end of the query"},
      {"(http", 6, "to close the '(' of column 1"},
      {"http)", 5, "expected 'and', 'or' or the end"},
      {"and http", 1, "expected a field"},
      {"dst.port in []", 13, "empty list"},
      {"dst.port in [80,", 17, "expected a value"},
      {"dst.port in [80 443]", 17, "expected ',' or ']'"},
      {"dst.port in 80", 13, "expected '['"},
      {R"(src.pod == "\d")", 13, "unknown escape \\d"},
      {R"(src.pod == "\u12")", 13, "four hex digits"},
      {R"(src.pod == "\u0000")", 13, "NUL"},
      {R"(src.pod == "\ud800")", 13, "surrogate"},
      {"src.pod", 1, "is a field"},
      {"src.pod \"x\"", 9, "expected an operator"},
      {"src.pod not == \"x\"", 13, "after 'not'"},
      {"src.pod == ", 12, "expected a value"},
      {"src.pod == @", 12, "unexpected character '@'"},
      {"src.pod == \"a\" and src.pod == \xc3\xa9", 31, "unexpected character '\xc3\xa9'"},
      {"response.status > null", 19, "null compares with == and != only"},
      {"request == 5", 9, "is an object"},
      {R"(request contains "x")", 9, "is an object"},
      {"response < null", 10, "is an object"},
      {"response", 1, "is a field"},
      {R"(src.port == "80")", 13, "is a number"},
      {"dst.namespace == 5", 18, "is text"},
      {"duration > 200", 12, "give a unit"},
      {"duration > 200xs", 15, "unknown unit \"xs\""},
      {"duration > 5d", 13, "unknown unit"},
      {R"(duration > "5s")", 12, "give a unit"},
      {"src.port > 5ms", 12, "is a number, not a duration"},
      {"request.size > 5ms", 16, "a duration compares with duration fields"},
      {"ts > 5", 6, "is a time"},
      {R"(ts > "yesterday")", 6, "bad time"},
      {R"(src.pod matches "(")", 17, "bad regex"},
      {"src.pod matches 5", 17, "takes a string"},
      {"src.port contains \"8\"", 10, "works on text"},
      {R"(flags contains "gpa")", 16, "unknown flag \"gpa\" (did you mean \"gap\"?)"},
      {R"(flags startswith "g" and flags contains "nope")", 41, "unknown flag"},
      {"htp", 1, "unknown protocol \"htp\" (did you mean \"http\"?)"},
      {"respnse.status >= 500", 1, "unknown field \"respnse.status\" (did you mean \"response.status\"?)"},
      {"http and respnse.status >= 500", 10, "unknown field \"respnse.status\" (did you mean \"response.status\"?)"},
      {"src.nmespace == \"shop\"", 1, "(did you mean \"src.namespace\"?)"},
      {"dst.namespace == src.prot", 18, "(did you mean \"src.port\"?)"},
      {"dst.namespace == src.port", 18, "do not compare"},
      {"dst.port in [80, null]", 18, "null in a list"},
      {"src.pod == \"x\" and src.pod == \"\xc3\xa9\" and bogus == 1", 39, "unknown field \"bogus\""},
      {"request.a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q == 1", 38, "field path too long"},
      {"request.x[9999999] == 1", 11, "array index out of range"},
      {"response.status == 200 200", 24, "expected 'and', 'or'"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    auto [column, message] = error_of(c.text);
    EXPECT_EQ(column, c.column) << message;
    EXPECT_NE(message.find(c.message), std::string::npos) << message;
  }
}

TEST(QueryErrors, WhatSaysTheColumnFirst) {
  try {
    serve::compile("http and respnse.status >= 500");
    FAIL();
  } catch (const serve::QueryError& e) {
    EXPECT_STREQ(e.what(), "column 10: unknown field \"respnse.status\" (did you mean \"response.status\"?)");
  }
}

TEST(QueryErrors, BoundsOnSizeDepthAndCount) {
  // 64 levels of parentheses are fine; the 65th is an error at its column.
  std::string ok = std::string(64, '(') + "http" + std::string(64, ')');
  EXPECT_NO_THROW(serve::compile(ok));
  std::string deep = std::string(65, '(') + "http" + std::string(65, ')');
  EXPECT_EQ(error_of(deep).first, 65u);
  EXPECT_NE(error_of(deep).second.find("nested too deeply"), std::string::npos);
  std::string nots;
  for (int i = 0; i < 65; i++) nots += "not ";
  EXPECT_EQ(error_of(nots + "http").first, 64u * 4 + 1);
  // A million opening parentheses: the depth bound, not the stack.
  EXPECT_EQ(error_of(std::string(60000, '(')).first, 65u);

  // 1 MB: refused before anything, at the first byte past the bound.
  std::string big = "src.pod == \"" + std::string(1 << 20, 'a') + "\"";
  auto [column, message] = error_of(big);
  EXPECT_EQ(column, serve::kMaxQueryBytes + 1);
  EXPECT_NE(message.find("too long (1048589 bytes; at most 65536)"), std::string::npos) << message;
  // Just under the bound: a long value is fine.
  std::string fits = "src.pod == \"" + std::string(serve::kMaxQueryBytes - 13, 'a') + "\"";
  ASSERT_EQ(fits.size(), serve::kMaxQueryBytes);
  EXPECT_NO_THROW(serve::compile(fits));

  // Conditions: 256, and the 257th is refused (SQLite's expression depth stays far from its limit).
  std::string many = "http";
  for (int i = 1; i < 256; i++) many += " or dns";
  EXPECT_NO_THROW(serve::compile(many));
  many += " or redis";
  EXPECT_EQ(error_of(many).first, many.size() - 4);
  EXPECT_NE(error_of(many).second.find("too many conditions"), std::string::npos);

  // Lists: 1024 values.
  std::string list = "dst.port in [0";
  for (int i = 1; i < 1024; i++) list += "," + std::to_string(i);
  EXPECT_NO_THROW(serve::compile(list + "]"));
  EXPECT_NE(error_of(list + ",1024]").second.find("list too long"), std::string::npos);

  // Values: 4096 in all (SQLite binds at most 32766 parameters).
  std::string lists = list + "]";
  for (int i = 0; i < 3; i++) lists += " or " + list + "]";
  EXPECT_NO_THROW(serve::compile(lists));
  const size_t last = lists.size();
  lists += " or dst.port == 1";
  EXPECT_EQ(error_of(lists).first, last + 17);  // the "1"
  EXPECT_NE(error_of(lists).second.find("too many values"), std::string::npos);

  // Regexes: 1 KiB.
  EXPECT_NO_THROW(serve::compile("src.pod matches \"" + std::string(1024, 'a') + "\""));
  EXPECT_NE(error_of("src.pod matches \"" + std::string(1025, 'a') + "\"").second.find("regex too long"),
            std::string::npos);
}

TEST(QueryErrors, RandomBytesNeverCrashAndNeverCompileToUserText) {
  // Garbage of every kind: each either compiles or fails with a QueryError
  // whose column is within the text.
  uint64_t x = 0x9E3779B97F4A7C15ull;
  const std::string alphabet = "abcdnotrsp.=!<>()[]\"'\\ ,0123456789-msu\xc3\xa9\xff\x01";
  for (int round = 0; round < 3000; round++) {
    std::string text;
    const int n = static_cast<int>(x % 40);
    for (int i = 0; i < n; i++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      text += alphabet[x % alphabet.size()];
    }
    try {
      serve::compile(text);
    } catch (const serve::QueryError& e) {
      EXPECT_GE(e.column(), 1u) << text;
      EXPECT_LE(e.column(), text.size() + 1) << text;
    }
  }
}

// ------------------------------------------------------------- parser --

namespace {

// The AST as a compact string: (and a b), (or ...), (not x), [field op value].
std::string tree(const serve::Expr& e) {
  switch (e.kind) {
    case serve::Expr::Kind::And:
    case serve::Expr::Kind::Or: {
      std::string out = e.kind == serve::Expr::Kind::And ? "(and" : "(or";
      for (auto& c : e.children) out += " " + tree(*c);
      return out + ")";
    }
    case serve::Expr::Kind::Not: return "(not " + tree(*e.children[0]) + ")";
    case serve::Expr::Kind::Bare: return e.field;
    case serve::Expr::Kind::Compare: {
      static const char* kOps[] = {"==", "!=", "<", "<=", ">", ">=", "contains", "startswith", "endswith", "matches",
                                   "in"};
      std::string out = "[" + e.field + (e.negated ? " not " : " ") + kOps[static_cast<int>(e.op)] + " ";
      auto lit = [](const serve::Literal& l) -> std::string {
        switch (l.kind) {
          case serve::Literal::Kind::Null: return "null";
          case serve::Literal::Kind::Bool: return l.b ? "true" : "false";
          case serve::Literal::Kind::Integer: return std::to_string(l.i);
          case serve::Literal::Kind::Real: return std::to_string(l.r);
          case serve::Literal::Kind::String: return "'" + l.s + "'";
          case serve::Literal::Kind::Duration: return std::to_string(l.i) + "ns";
        }
        return "?";
      };
      if (!e.other_field.empty()) {
        out += e.other_field;
      } else if (e.op == serve::Op::In) {
        for (size_t i = 0; i < e.list.size(); i++) out += (i ? "," : "") + lit(e.list[i]);
      } else {
        out += lit(e.value);
      }
      return out + "]";
    }
  }
  return "?";
}

}  // namespace

TEST(QueryParse, PrecedenceAndShapes) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"a == 1 and b == 2 or c == 3", "(or (and [a == 1] [b == 2]) [c == 3])"},
      {"a == 1 or b == 2 and c == 3", "(or [a == 1] (and [b == 2] [c == 3]))"},
      {"(a == 1 or b == 2) and c == 3", "(and (or [a == 1] [b == 2]) [c == 3])"},
      {"not a == 1 and b == 2", "(and (not [a == 1]) [b == 2])"},
      {"not (a == 1 and b == 2)", "(not (and [a == 1] [b == 2]))"},
      {"not not http", "(not (not http))"},
      {"a == 1 and b == 2 and c == 3", "(and [a == 1] [b == 2] [c == 3])"},
      {"http AND dns OR Not redis", "(or (and http dns) (not redis))"},
      {"x not in [1, 2,]", "[x not in 1,2]"},
      {"x not contains \"y\"", "[x not contains 'y']"},
      {"x startswith 'a' or x endswith \"b\" or x matches r\"\\d+\"",
       "(or [x startswith 'a'] [x endswith 'b'] [x matches '\\d+'])"},
      {"request.args[0] == -3", "[request.args[0] == -3]"},
      {"request.args [ -1 ] != 2.5", "[request.args[-1] != 2.500000]"},
      {"duration > 1.5s", "[duration > 1500000000ns]"},
      {"duration > 200ms or duration < 30us or duration == 2m", "(or [duration > 200000000ns] [duration < 30000ns] "
                                                                "[duration == 120000000000ns])"},
      {"duration < 30\xc2\xb5s", "[duration < 30000ns]"},
      {"x == true or x == FALSE or x == null", "(or [x == true] [x == false] [x == null])"},
      {"src.namespace == dst.namespace", "[src.namespace == dst.namespace]"},
      {"x == \"tab\\there \\\"q\\\" \\\\ \\u00e9 \\ud83d\\ude00\"", "[x == 'tab\there \"q\" \\ \xc3\xa9 \xf0\x9f\x98\x80']"},
      {"x == 'it\\'s'", "[x == 'it's']"},
      {"x == 1e3", "[x == 1000.000000]"},
      {"request.headers.content-type contains 'json'", "[request.headers.content-type contains 'json']"},
      {"\thttp\n and\r\n dns ", "(and http dns)"},
  };
  for (const auto& [text, want] : cases) {
    SCOPED_TRACE(text);
    try {
      EXPECT_EQ(tree(*serve::parse(text)), want);
    } catch (const serve::QueryError& e) {
      ADD_FAILURE() << e.what();
    }
  }
}

TEST(QueryParse, ColumnsOfTheNodes) {
  auto e = serve::parse("http and  src.pod   not in [\"a\", \"b\"]");
  ASSERT_EQ(e->kind, serve::Expr::Kind::And);
  const serve::Expr& c = *e->children[1];
  EXPECT_EQ(c.field_column, 11u);
  EXPECT_EQ(c.op_column, 21u);
  ASSERT_EQ(c.list.size(), 2u);
  EXPECT_EQ(c.list[0].column, 29u);
  EXPECT_EQ(c.list[1].column, 34u);
  EXPECT_EQ(e->children[0]->column, 1u);
}

TEST(QueryParse, CompiledSqlIsParameterised) {
  serve::CompileOptions o;
  o.first_param = 101;
  serve::CompiledQuery q = serve::compile(R"(http and response.status >= 500 and dst.namespace == "shop")", o);
  EXPECT_EQ(q.where,
            "((protocol IN (?101, ?102)) AND (CASE WHEN response IS NULL AND has_response THEN status ELSE "
            "json_extract(response, '$.\"status\"') END >= ?103) AND (dst_namespace = ?104))");
  ASSERT_EQ(q.params.size(), 4u);
  EXPECT_EQ(std::get<std::string>(q.params[0]), "http");
  EXPECT_EQ(std::get<std::string>(q.params[1]), "http2");
  EXPECT_EQ(std::get<int64_t>(q.params[2]), 500);
  EXPECT_EQ(std::get<std::string>(q.params[3]), "shop");
  // Durations bind in the column's unit.
  q = serve::compile("duration > 200ms and duration < 1500ns");
  EXPECT_EQ(q.where, "((duration_us > ?1) AND (duration_us < ?2))");
  EXPECT_EQ(std::get<int64_t>(q.params[0]), 200000);
  EXPECT_DOUBLE_EQ(std::get<double>(q.params[1]), 1.5);
  // not: two-valued.
  q = serve::compile("not src.pod == \"x\"");
  EXPECT_EQ(q.where, "((src_pod = ?1) IS NOT 1)");
}

// --------------------------------------------------- tapwire calls --filter

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
  char out_path[] = "/tmp/tw-query-out-XXXXXX", err_path[] = "/tmp/tw-query-err-XXXXXX";
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

std::vector<std::string> ids_of(const std::string& jsonl) {
  std::vector<std::string> out;
  std::stringstream ss(jsonl);
  for (std::string line; std::getline(ss, line);) out.push_back(json::parse(line)["id"]);
  return out;
}

}  // namespace

class QueryCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(std::string(TW_BUILD_DIR) + "/tapwire"))
      FAIL() << TW_BUILD_DIR "/tapwire not built: build the 'tapwire' target first";
  }
};

TEST_F(QueryCli, CallsFilterSelectsAndCombinesWithTheOtherOptions) {
  Fixture f;
  CliRun r = run_tapwire(
      {"calls", "--db", f.path, "--json", "--filter", R"(http and response.status >= 500 and dst.namespace == "shop")"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(ids_of(r.out), (std::vector<std::string>{key_hex(3), key_hex(5)}));
  // With --protocol and --limit (AND), and a regex.
  r = run_tapwire({"calls", "--db", f.path, "--json", "--protocol", "redis", "--limit", "1", "--filter",
                   R"(src.pod matches "^api-")"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(ids_of(r.out), (std::vector<std::string>{key_hex(11)}));
  // Plain lines too.
  r = run_tapwire({"calls", "--db", f.path, "--filter", "duration > 1s"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("GET /slow"), std::string::npos) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1);
}

TEST_F(QueryCli, ABadFilterIsOneLineWithItsColumn) {
  Fixture f;
  CliRun r = run_tapwire({"calls", "--db", f.path, "--filter", "http and respnse.status >= 500"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  EXPECT_NE(r.err.find("bad --filter: http and respnse.status >= 500: column 10: unknown field \"respnse.status\" "
                       "(did you mean \"response.status\"?)"),
            std::string::npos)
      << r.err;
  r = run_tapwire({"calls", "--db", f.path, "--filter", "src.pod == \"a\nb"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  EXPECT_NE(r.err.find("column 12: unterminated string"), std::string::npos) << r.err;
  r = run_tapwire({"calls", "--help"});
  EXPECT_NE(r.out.find("--filter"), std::string::npos) << r.out;
}
