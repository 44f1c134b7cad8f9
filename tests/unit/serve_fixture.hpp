// The fixture of tapwire serve's tests (serve_test.cpp, mcp_test.cpp): a
// dissection DB of ten calls written by CallDb in a temporary data
// directory, the server in this process on 127.0.0.1 and a free port, and
// what CallDb and the query language select when asked directly.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "call_db.hpp"
#include "dns/session.hpp"
#include "http1/session.hpp"
#include "json_out.hpp"
#include "query.hpp"
#include "server.hpp"
#include "temp_dir.hpp"

using namespace tapwire::dissect;
using nlohmann::json;
namespace proto = tapwire::proto;
namespace serve = tapwire::serve;
using tapwire::identity::EndpointIdentity;

// Internal to each test file that includes it.
namespace {

constexpr uint64_t kT0 = 1767225600ull * 1000000000ull;  // 2026-01-01T00:00:00Z
constexpr uint64_t kSec = 1000000000ull;
constexpr uint64_t kMs = 1000000ull;

struct JsonMessage final : proto::Message {
  std::string text;
  explicit JsonMessage(const json& j) : text(j.dump()) {}
  void write_json(tapwire::JsonOut& out) const override { out.raw(text); }
  size_t heap_bytes() const override { return sizeof *this + text.capacity(); }
};

inline Endpoint endpoint(const char* ip, uint16_t port, const char* ns = "", const char* pod = "",
                  const char* workload = "") {
  Endpoint e;
  inet_pton(AF_INET, ip, e.addr);
  e.port = port;
  if (*ns) {
    auto id = std::make_shared<EndpointIdentity>();
    id->namespace_ = ns;
    id->pod = pod;
    id->workload_kind = *workload ? "Deployment" : "";
    id->workload_name = workload;
    e.identity = id;
  }
  return e;
}

// key k: the call k seconds after kT0, its id the key in hex.
inline Call http(uint64_t key, const char* method, const char* target, int status, uint64_t duration_ns,
          const char* body = "") {
  Call c;
  c.protocol = "http";
  c.key = key;
  c.ts_ns = kT0 + key * kSec;
  c.end_ns = status ? c.ts_ns + duration_ns : 0;
  c.src = endpoint("10.1.0.1", static_cast<uint16_t>(50000 + key), "shop", "web-1", "web");
  c.dst = endpoint("10.1.0.2", 8080, "shop", "api-1", "api");
  c.node = "node-1";
  proto::HttpMessage req;
  req.method = method;
  req.target = target;
  req.headers = {{"host", "api"}, {"user-agent", "curl/8.1"}};
  c.method = method;
  c.path = target;
  c.request = std::make_shared<proto::HttpRecord>(std::move(req));
  if (status) {
    proto::HttpMessage resp;
    resp.is_request = false;
    resp.status = status;
    resp.reason = "R";
    resp.headers = {{"content-type", "application/json"}};
    resp.body = body;
    resp.body_size = std::string(body).size();
    c.status = status;
    c.response = std::make_shared<proto::HttpRecord>(std::move(resp));
  }
  return c;
}

inline Call dns(uint64_t key, const char* name, uint8_t rcode, uint64_t duration_ns) {
  Call c;
  c.protocol = "dns";
  c.key = key;
  c.ts_ns = kT0 + key * kSec;
  c.end_ns = c.ts_ns + duration_ns;
  c.src = endpoint("10.1.0.1", static_cast<uint16_t>(53000 + key), "shop", "web-1", "web");
  c.dst = endpoint("10.96.0.10", 53, "kube-system", "coredns-1", "coredns");
  c.node = "node-1";
  proto::DnsMessage q;
  q.id = static_cast<uint16_t>(key);
  q.questions = {{name, 1, 1}};
  c.method = "A";
  c.path = name;
  c.request = std::make_shared<proto::DnsRecord>(proto::DnsMessage(q));
  proto::DnsMessage r = q;
  r.is_response = true;
  r.rcode = rcode;
  c.status = rcode;
  c.response = std::make_shared<proto::DnsRecord>(std::move(r));
  return c;
}

inline Call redis(uint64_t key, const char* command, int status, uint64_t duration_ns) {
  Call c;
  c.protocol = "redis";
  c.key = key;
  c.ts_ns = kT0 + key * kSec;
  c.end_ns = c.ts_ns + duration_ns;
  c.src = endpoint("10.1.0.2", static_cast<uint16_t>(40000 + key), "shop", "api-1", "api");
  c.dst = endpoint("10.1.0.9", 6379, "data", "redis-0", "redis");
  c.method = command;
  c.path = "k";
  c.status = status;
  c.request = std::make_shared<JsonMessage>(json{{"command", command}, {"args", {"k"}}});
  c.response = std::make_shared<JsonMessage>(json{{"type", status ? "error" : "simple_string"}});
  return c;
}

// The fixture (durations in ms unless said):
//   1 http GET /api/items 200  10     6 dns example.com NOERROR 2
//   2 http GET /api/items?id=2 404 20  7 dns nx.example NXDOMAIN 4
//   3 http POST /api/orders 500 30     8 redis GET 0     1
//   4 http GET /api/items 200  40      9 redis SET 1     3
//   5 http GET /slow (no response)    10 http GET /api/items?id=10 200 50 (body)
inline std::vector<Call> fixture() {
  std::vector<Call> v;
  v.push_back(http(1, "GET", "/api/items", 200, 10 * kMs));
  v.push_back(http(2, "GET", "/api/items?id=2", 404, 20 * kMs));
  v.push_back(http(3, "POST", "/api/orders", 500, 30 * kMs));
  v.push_back(http(4, "GET", "/api/items", 200, 40 * kMs));
  v.push_back(http(5, "GET", "/slow", 0, 0));
  v.push_back(dns(6, "example.com", 0, 2 * kMs));
  v.push_back(dns(7, "nx.example", 3, 4 * kMs));
  v.push_back(redis(8, "GET", 0, 1 * kMs));
  v.push_back(redis(9, "SET", 1, 3 * kMs));
  v.push_back(http(10, "GET", "/api/items?id=10", 200, 50 * kMs, "{\"items\":[1,2,3]}"));
  return v;
}

// Percent-encodes a query parameter's value.
inline std::string enc(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char b[4];
      std::snprintf(b, sizeof b, "%%%02X", c);
      out += b;
    }
  }
  return out;
}

inline std::string hex_id(uint64_t key) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(key));
  return b;
}

class ServeTest : public ::testing::Test {
 protected:
  tapwire::test_util::TempDir dir{"serve"};
  std::string data = dir.path();
  std::unique_ptr<serve::Server> server;
  std::thread thread;
  int port = 0;

  void SetUp() override {
    CallDb w(data + "/dissection.db");
    for (const Call& c : fixture()) w.insert(c);
  }
  void TearDown() override { stop(); }

  void start(serve::ServeOptions o = {}) {
    o.data_dir = data;
    o.host = "127.0.0.1";
    o.port = 0;
    if (o.node.empty()) o.node = "test-node";
    o.stream_poll = std::chrono::milliseconds(50);
    o.heartbeat = std::chrono::milliseconds(300);
    o.control_socket = data + "/no-sensor.sock";
    server = std::make_unique<serve::Server>(o);
    port = server->bind();
    thread = std::thread([this] { server->run(); });
  }
  void stop() {
    if (server) server->stop();
    if (thread.joinable()) thread.join();
    server.reset();
  }

  httplib::Client client() {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(10, 0);
    return c;
  }
  // GET and parse; `status` gets the HTTP status.
  json get(const std::string& path, int* status = nullptr, const httplib::Headers& h = {}) {
    auto c = client();
    auto r = c.Get(path.c_str(), h);
    if (!r) {
      ADD_FAILURE() << "no answer to " << path;
      return nullptr;
    }
    if (status) *status = r->status;
    EXPECT_EQ(r->get_header_value("Content-Type"), "application/json") << path;
    auto j = json::parse(r->body, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << path << ": " << r->body;
    return j;
  }
  json get_ok(const std::string& path) {
    int st = 0;
    json j = get(path, &st);
    EXPECT_EQ(st, 200) << path << ": " << j.dump();
    return j;
  }

  // What CallDb and the query language select, newest first.
  std::vector<json> direct(const std::string& filter) {
    CallDb db(data + "/dissection.db", true);
    CallDb::Query q;
    q.newest_first = true;
    std::shared_ptr<serve::CompiledQuery> cq;
    if (!filter.empty()) {
      serve::CompileOptions co;
      serve::detect_columns(db.handle(), co);
      co.first_param = CallDb::kFirstExtraParam;
      cq = std::make_shared<serve::CompiledQuery>(serve::compile(filter, co));
      serve::register_functions(db.handle());
      q.extra_where = cq->where;
      q.bind_extra = [cq](sqlite3_stmt* st) { serve::bind(st, *cq); };
    }
    return db.query(q);
  }
};

inline std::vector<std::string> ids(const json& calls) {
  std::vector<std::string> out;
  for (auto& c : calls) out.push_back(c["id"].get<std::string>());
  return out;
}

}  // namespace
