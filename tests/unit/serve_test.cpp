// tapwire serve (userspace/serve/, docs/API.md): the server in this process
// on 127.0.0.1 and a free port, over a temporary data directory whose DB is
// written by CallDb, asked with cpp-httplib's client. Answers are checked
// against CallDb and the query language asked directly, and statistics
// against numbers worked out by hand from the fixture.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "call_db.hpp"
#include "query.hpp"
#include "serve_fixture.hpp"
#include "server.hpp"
#include "temp_dir.hpp"

TEST_F(ServeTest, CallsWithAFilterAreWhatTheDbSelectsNewestFirst) {
  start();
  for (const std::string filter : {"", "http", "http and response.status >= 400", "dns or redis",
                                   "src.pod matches \"^web-\" and duration > 15ms", "response == null",
                                   "request.path startswith \"/api/items\""}) {
    const json j = get_ok("/api/v1/calls?format=full&limit=1000&filter=" + enc(filter));
    const std::vector<json> want = direct(filter);
    ASSERT_EQ(j["calls"].size(), want.size()) << filter;
    for (size_t i = 0; i < want.size(); i++) {
      json w = want[i];
      if (!w.contains("node")) w["node"] = "test-node";  // the serving node when the record has none
      EXPECT_EQ(j["calls"][i], w) << filter << " #" << i;
    }
    EXPECT_EQ(j["node"], "test-node");
    EXPECT_TRUE(j["next_cursor"].is_null());
  }
  // Newest first, and the compact form: the summary without headers or bodies.
  const json j = get_ok("/api/v1/calls?filter=http");
  EXPECT_EQ(ids(j["calls"]), (std::vector<std::string>{hex_id(10), hex_id(5), hex_id(4), hex_id(3), hex_id(2), hex_id(1)}));
  const json& c = j["calls"][0];
  EXPECT_EQ(c["method"], "GET");
  EXPECT_EQ(c["path"], "/api/items?id=10");
  EXPECT_EQ(c["status"], 200);
  EXPECT_EQ(c["duration_us"], 50000);
  EXPECT_EQ(c["ts_ns"], kT0 + 10 * kSec);
  EXPECT_EQ(c["node"], "node-1");
  EXPECT_EQ(c["src"]["pod"], "web-1");
  EXPECT_FALSE(c.contains("request"));
  EXPECT_TRUE(j["calls"][1]["status"].is_null());  // no response
  // The time window.
  const json w = get_ok("/api/v1/calls?start=2026-01-01T00:00:03Z&end=1767225607");
  EXPECT_EQ(ids(w["calls"]), (std::vector<std::string>{hex_id(7), hex_id(6), hex_id(5), hex_id(4), hex_id(3)}));
}

TEST_F(ServeTest, TheCursorPagesThroughEveryCallOnce) {
  start();
  std::vector<std::string> seen;
  std::string cursor;
  int pages = 0;
  do {
    const json j = get_ok("/api/v1/calls?limit=3" + (cursor.empty() ? "" : "&cursor=" + cursor));
    for (auto& id : ids(j["calls"])) seen.push_back(id);
    cursor = j["next_cursor"].is_null() ? "" : j["next_cursor"].get<std::string>();
    // A call added meanwhile (newer) does not shift the pages.
    if (pages == 0) {
      CallDb w(data + "/dissection.db");
      w.insert(http(11, "GET", "/late", 200, kMs));
    }
    ASSERT_LT(++pages, 10);
  } while (!cursor.empty());
  std::vector<std::string> want;
  for (uint64_t k = 10; k >= 1; k--) want.push_back(hex_id(k));
  EXPECT_EQ(seen, want);
  EXPECT_EQ(pages, 4);
  int st = 0;
  EXPECT_TRUE(get("/api/v1/calls?cursor=abc", &st).contains("error"));
  EXPECT_EQ(st, 400);
}

TEST_F(ServeTest, OneCallWholeWithItsBody) {
  start();
  const json j = get_ok("/api/v1/calls/" + hex_id(10));
  CallDb::Query q;
  q.id = hex_id(10);
  const auto want = CallDb(data + "/dissection.db", true).query(q);
  ASSERT_EQ(want.size(), 1u);
  EXPECT_EQ(j["call"], want[0]);
  EXPECT_EQ(j["call"]["response"]["body"], "{\"items\":[1,2,3]}");
  EXPECT_EQ(j["call"]["request"]["headers"]["user-agent"], "curl/8.1");
  int st = 0;
  EXPECT_EQ(get("/api/v1/calls/" + hex_id(99), &st)["error"].get<std::string>().substr(0, 7), "no call");
  EXPECT_EQ(st, 404);
  get("/api/v1/calls/xyz", &st);
  EXPECT_EQ(st, 400);
}

TEST_F(ServeTest, StatsAreTheNumbersWorkedOutByHand) {
  start();
  const json j = get_ok("/api/v1/stats?group_by=protocol");
  ASSERT_EQ(j["groups"].size(), 3u);
  // http: 6 calls, 5 answered: 10, 20, 30, 40, 50 ms. Nearest rank: p50 is
  // the 3rd (30 ms), p90 the 5th (ceil 4.5), p99 the 5th. Errors: the 500.
  const json& h = j["groups"][0];
  EXPECT_EQ(h["key"], (json{{"protocol", "http"}}));
  EXPECT_EQ(h["calls"], 6);
  EXPECT_EQ(h["responses"], 5);
  EXPECT_EQ(h["errors"], 1);
  EXPECT_EQ(h["duration_us"]["p50"], 30000);
  EXPECT_EQ(h["duration_us"]["p90"], 50000);
  EXPECT_EQ(h["duration_us"]["p99"], 50000);
  EXPECT_EQ(h["duration_us"]["min"], 10000);
  EXPECT_EQ(h["duration_us"]["max"], 50000);
  EXPECT_DOUBLE_EQ(h["duration_us"]["mean"].get<double>(), 30000.0);
  // dns: 2 ms and 4 ms; NXDOMAIN (rcode 3) is an error. redis: 1 and 3 ms, the error reply.
  for (const json& g : {j["groups"][1], j["groups"][2]}) {
    EXPECT_EQ(g["calls"], 2);
    EXPECT_EQ(g["errors"], 1);
    EXPECT_DOUBLE_EQ(g["error_rate"].get<double>(), 0.5);
  }
  const json& d = j["groups"][1]["key"]["protocol"] == "dns" ? j["groups"][1] : j["groups"][2];
  EXPECT_EQ(d["duration_us"]["p50"], 2000);
  EXPECT_EQ(d["duration_us"]["p90"], 4000);
  // Total: 10 calls, 9 answered: 1 2 3 4 10 20 30 40 50 ms; p50 the 5th (10 ms), p90 the 9th (ceil 8.1), p99 the 9th.
  EXPECT_EQ(j["total"]["calls"], 10);
  EXPECT_EQ(j["total"]["errors"], 3);
  EXPECT_EQ(j["total"]["duration_us"]["p50"], 10000);
  EXPECT_EQ(j["total"]["duration_us"]["p90"], 50000);

  // Endpoints: HTTP paths without their query string.
  const json e = get_ok("/api/v1/stats?group_by=endpoint&filter=http");
  ASSERT_GE(e["groups"].size(), 1u);
  EXPECT_EQ(e["groups"][0]["key"], (json{{"protocol", "http"}, {"method", "GET"}, {"path", "/api/items"}}));
  EXPECT_EQ(e["groups"][0]["calls"], 4);  // 1, 2, 4 and 10: 10, 20, 40, 50 ms
  EXPECT_EQ(e["groups"][0]["duration_us"]["p50"], 20000);
  // Workloads served, and a status breakdown.
  const json wl = get_ok("/api/v1/stats?group_by=workload");
  EXPECT_EQ(wl["groups"][0]["key"], (json{{"namespace", "shop"}, {"kind", "Deployment"}, {"name", "api"}}));
  EXPECT_EQ(wl["groups"][0]["calls"], 6);
  const json st = get_ok("/api/v1/stats?group_by=status&filter=http");
  EXPECT_EQ(st["groups"][0]["key"], (json{{"protocol", "http"}, {"status", 200}}));
  EXPECT_EQ(st["groups"][0]["calls"], 3);
  int code = 0;
  get("/api/v1/stats?group_by=colour", &code);
  EXPECT_EQ(code, 400);
}

TEST_F(ServeTest, ABadFilterIs400WithItsColumn) {
  start();
  int st = 0;
  json j = get("/api/v1/calls?filter=" + enc("http and respnse.status >= 500"), &st);
  EXPECT_EQ(st, 400);
  EXPECT_EQ(j["column"], 10);
  EXPECT_NE(j["error"].get<std::string>().find("respnse.status"), std::string::npos) << j;
  j = get("/api/v1/stats?filter=" + enc("status = 200"), &st);
  EXPECT_EQ(st, 400);
  EXPECT_EQ(j["column"], 8);
  j = get("/api/v1/stream?filter=" + enc("((http"), &st);
  EXPECT_EQ(st, 400);
  EXPECT_TRUE(j.contains("column"));
  for (const char* bad : {"limit=0", "limit=10001", "limit=-1", "limit=x", "format=xml", "start=yesterday"}) {
    j = get(std::string("/api/v1/calls?") + bad, &st);
    EXPECT_EQ(st, 400) << bad;
    EXPECT_TRUE(j.contains("error")) << bad;
  }
  EXPECT_EQ(get_ok("/api/v1/calls?limit=10000")["calls"].size(), 10u);
}

TEST_F(ServeTest, NamesInRequestsCannotLeaveTheDataDirectory) {
  // A real DB outside DATA_DIR, and ways of pointing at it from inside.
  tapwire::test_util::TempDir outside{"serve-outside"};
  { CallDb w(outside.path() + "/secret.db"); }
  ::mkdir((data + "/snapshots").c_str(), 0750);
  ::mkdir((data + "/snapshots/s1").c_str(), 0750);
  ::mkdir((data + "/snapshots/s1/dissections").c_str(), 0750);
  ASSERT_EQ(::symlink((outside.path() + "/secret.db").c_str(), (data + "/snapshots/s1/dissections/evil.db").c_str()), 0);
  ASSERT_EQ(::symlink(outside.path().c_str(), (data + "/snapshots/out").c_str()), 0);
  { CallDb w(data + "/snapshots/s1/dissections/d1.db"); w.insert(http(1, "GET", "/in-snapshot", 200, kMs)); }
  start();
  int st = 0;
  EXPECT_EQ(get_ok("/api/v1/calls?db=s1/d1")["calls"].size(), 1u);
  for (const std::string db : {"../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                                "s1/../../../etc/passwd", "/etc/passwd", "s1/evil", "out/secret", "..%2fsecret",
                                "s1/d1%00", ".hidden/d1", "s1/.d1", "s1/d1/x", "s1%2fd1%2f..%2fd1"}) {
    json j = get("/api/v1/calls?db=" + db, &st);
    EXPECT_TRUE(st == 400 || st == 404) << db << ": " << st << " " << j;
    EXPECT_TRUE(j.contains("error")) << db;
  }
  // Snapshot names with '/' (plain or encoded), "..", and the symlink out.
  for (const std::string path :
       {"/api/v1/snapshots/..%2F..%2Fetc/pcap", "/api/v1/snapshots/a%2Fb/pcap", "/api/v1/snapshots/../dissections",
        "/api/v1/snapshots/%2e%2e/dissections", "/api/v1/snapshots/out/dissections", "/api/v1/snapshots/s1%00/pcap",
        "/api/v1/workloads?snapshot=../..", "/api/v1/flows?snapshot=%2e%2e", "/api/v1/map?snapshot=a/b",
        "/api/v1/snapshots/s1/dissections/..%2F..%2Fd1"}) {
    auto c = client();
    auto r = c.Get(path.c_str());
    ASSERT_TRUE(r) << path;
    EXPECT_TRUE(r->status == 400 || r->status == 404) << path << ": " << r->status << " " << r->body;
  }
  auto c = client();
  auto r = c.Post("/api/v1/snapshots/..%2F..%2Ftmp/dissections", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->status == 400 || r->status == 404) << r->status;
  r = c.Delete("/api/v1/snapshots/..");
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->status == 400 || r->status == 404) << r->status;
  EXPECT_TRUE(std::filesystem::exists(outside.path() + "/secret.db"));
}

TEST(ServeAccess, TheTokenRule) {
  const std::string token = "0123456789abcdef-token";
  // No token configured: everyone (the server then listens on loopback only).
  EXPECT_TRUE(serve::access_allowed("10.0.0.5", "", "", false));
  // A token: other hosts must send it.
  EXPECT_FALSE(serve::access_allowed("10.0.0.5", "", token, false));
  EXPECT_FALSE(serve::access_allowed("10.0.0.5", "Bearer wrong-token-0123456789", token, false));
  EXPECT_FALSE(serve::access_allowed("10.0.0.5", "Basic " + token, token, false));
  EXPECT_FALSE(serve::access_allowed("10.0.0.5", "Bearer " + token + "x", token, false));
  EXPECT_FALSE(serve::access_allowed("10.0.0.5", "Bearer " + token.substr(1), token, false));
  EXPECT_TRUE(serve::access_allowed("10.0.0.5", "Bearer " + token, token, false));
  EXPECT_TRUE(serve::access_allowed("fd00::5", "bearer " + token, token, false));
  EXPECT_FALSE(serve::access_allowed("::ffff:10.0.0.5", "", token, false));
  // Loopback clients may omit it, unless told otherwise; a wrong one is refused all the same.
  for (const char* lo : {"127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"}) {
    EXPECT_TRUE(serve::is_loopback(lo)) << lo;
    EXPECT_TRUE(serve::access_allowed(lo, "", token, false)) << lo;
    EXPECT_FALSE(serve::access_allowed(lo, "", token, true)) << lo;
    EXPECT_FALSE(serve::access_allowed(lo, "Bearer nope", token, false)) << lo;
  }
  for (const char* not_lo : {"10.0.0.1", "128.0.0.1", "::2", "::ffff:10.0.0.1", "fe80::1", "127.0.0.1.evil"})
    EXPECT_FALSE(serve::is_loopback(not_lo)) << not_lo;
  // Listening beyond loopback needs a token, and a real one.
  serve::ServeOptions o;
  o.node = "n";
  o.host = "0.0.0.0";
  EXPECT_NE(serve::options_error(o).find("needs a token"), std::string::npos);
  o.token = "short";
  EXPECT_NE(serve::options_error(o).find("too short"), std::string::npos);
  o.token = token;
  EXPECT_EQ(serve::options_error(o), "");
  o.host = "127.0.0.1";
  o.token = "";
  EXPECT_EQ(serve::options_error(o), "");
  serve::ServeOptions wide;
  wide.host = "10.1.2.3";
  wide.node = "n";
  EXPECT_THROW(serve::Server{wide}, std::invalid_argument);
}

TEST(ServeAccess, HostHeadersAndNames) {
  const std::vector<std::string> names = {"node-1"};
  for (const char* ok : {"127.0.0.1:8899", "localhost:8899", "LOCALHOST", "[::1]:8899", "10.0.0.1", "node-1:80", ""})
    EXPECT_TRUE(serve::host_allowed(ok, names)) << ok;
  for (const char* bad : {"evil.com", "evil.com:8899", "node-1.evil.com", "[::1"})
    EXPECT_FALSE(serve::host_allowed(bad, names)) << bad;
  for (const char* ok : {"incident-42", "snap-20260101T000000Z", "d1", "a.b_c-d"})
    EXPECT_TRUE(serve::valid_name(ok)) << ok;
  for (const std::string& bad : std::vector<std::string>{"", ".", "..", ".hidden", "a/b", "a\\b", "x.tmp",
                                                         std::string("a\0b", 3), "a b", std::string(129, 'a'),
                                                         "caf\xc3\xa9"})
    EXPECT_FALSE(serve::valid_name(bad)) << bad;
}

TEST_F(ServeTest, TheTokenIsRequiredWhereTheRuleSays) {
  const std::string token = "0123456789abcdef-token";
  serve::ServeOptions o;
  o.token = token;
  o.loopback_needs_token = true;  // this client is on loopback: make it count as another host
  start(o);
  int st = 0;
  json j = get("/api/v1/calls", &st);
  EXPECT_EQ(st, 401);
  EXPECT_TRUE(j.contains("error"));
  get("/api/v1/calls", &st, {{"Authorization", "Bearer not-the-token-at-all"}});
  EXPECT_EQ(st, 401);
  get("/api/v1/calls", &st, {{"Authorization", "Bearer " + token}});
  EXPECT_EQ(st, 200);
  // Every endpoint, the stream and the OpenAPI document included.
  for (const char* p : {"/api/v1/stream", "/api/v1/openapi.json", "/api/v1/snapshots", "/api/v1/nowhere"}) {
    auto c = client();
    auto r = c.Get(p);
    ASSERT_TRUE(r) << p;
    EXPECT_EQ(r->status, 401) << p;
    EXPECT_EQ(r->get_header_value("WWW-Authenticate"), "Bearer realm=\"tapwire\"");
  }
  stop();
  o.loopback_needs_token = false;
  start(o);
  get("/api/v1/calls", &st);
  EXPECT_EQ(st, 200);
  get("/api/v1/calls", &st, {{"Authorization", "Bearer wrong-but-sent-0123"}});
  EXPECT_EQ(st, 401);
  get("/api/v1/calls", &st, {{"Host", "attacker.example:8899"}});
  EXPECT_EQ(st, 403);
}

TEST_F(ServeTest, TheStreamSendsCallsWrittenAfterConnecting) {
  start();
  std::atomic<bool> done{false};
  std::string received;
  std::mutex m;
  std::thread listener([&] {
    auto c = client();
    c.Get("/api/v1/stream?filter=dns", [&](const char* data, size_t n) {
      std::lock_guard lock(m);
      received.append(data, n);
      return !done && received.find(hex_id(21)) == std::string::npos;
    });
  });
  // Connected (its opening comment arrived), then two new calls: only the DNS one matches.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    {
      std::lock_guard lock(m);
      if (received.find(": tapwire stream") != std::string::npos) break;
    }
    ASSERT_LT(std::chrono::steady_clock::now(), deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(150));  // the hub has placed the client at the end
  {
    CallDb w(data + "/dissection.db");
    w.insert(http(20, "GET", "/not-dns", 200, kMs));
    w.insert(dns(21, "new.example", 0, kMs));
  }
  bool got = false;
  while (std::chrono::steady_clock::now() < deadline + std::chrono::seconds(2)) {
    {
      std::lock_guard lock(m);
      if (received.find(hex_id(21)) != std::string::npos) {
        got = true;
        break;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  done = true;
  listener.join();
  EXPECT_TRUE(got) << received;
  EXPECT_EQ(received.find(hex_id(20)), std::string::npos) << "the filter let the HTTP call through";
  EXPECT_EQ(received.find(hex_id(6)), std::string::npos) << "a call from before connecting was sent";
  // One SSE event: id (the rowid), event, data (the record).
  const auto at = received.find("event: call\ndata: ");
  ASSERT_NE(at, std::string::npos);
  const auto end = received.find("\n\n", at);
  const json ev = json::parse(received.substr(at + 18, end - at - 18));
  EXPECT_EQ(ev["id"], hex_id(21));
  EXPECT_EQ(ev["request"]["qname"], "new.example");
  EXPECT_EQ(received.substr(0, 2), ": ");
  EXPECT_NE(received.find("\nid: 12\n"), std::string::npos) << received;
}

TEST_F(ServeTest, StreamClientsAreBounded) {
  serve::ServeOptions o;
  o.max_stream_clients = 1;
  start(o);
  std::atomic<bool> done{false};
  std::atomic<bool> open{false};
  std::thread first([&] {
    auto c = client();
    c.Get("/api/v1/stream", [&](const char*, size_t) {
      open = true;
      return !done.load();
    });
  });
  while (!open) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  int st = 0;
  json j = get("/api/v1/stream", &st);
  EXPECT_EQ(st, 503);
  EXPECT_NE(j["error"].get<std::string>().find("too many"), std::string::npos);
  done = true;
  first.join();
}

TEST_F(ServeTest, EndpointsThatNeedWhatIsNotThere) {
  start();
  int st = 0;
  // No sensor: its switch is unreachable.
  json j = get("/api/v1/dissection", &st);
  EXPECT_EQ(st, 503);
  auto c = client();
  auto r = c.Post("/api/v1/dissection/enable", "", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  // No snapshot of that name; destructive operations off.
  get("/api/v1/snapshots/none", &st);
  EXPECT_EQ(st, 404);
  r = c.Post("/api/v1/snapshots/none/dissections", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  ::mkdir((data + "/snapshots").c_str(), 0750);
  ::mkdir((data + "/snapshots/kept").c_str(), 0750);
  r = c.Delete("/api/v1/snapshots/kept");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403);
  EXPECT_TRUE(std::filesystem::exists(data + "/snapshots/kept"));
  // Bodies are JSON or nothing, and small.
  r = c.Post("/api/v1/snapshots", "name=x", "application/x-www-form-urlencoded");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 415);
  r = c.Post("/api/v1/snapshots", std::string(100 * 1024, ' '), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  r = c.Post("/api/v1/snapshots", "{\"name\": \"a/b\"}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  // No segments to snapshot.
  r = c.Post("/api/v1/snapshots", "{\"name\": \"s\"}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404) << r->body;
  // No identity stream, no flows: clear errors, not crashes.
  get("/api/v1/workloads", &st);
  EXPECT_EQ(st, 404);
  j = get("/api/v1/boundaries", &st);
  EXPECT_EQ(st, 200);
  EXPECT_EQ(j["dbs"][0]["db"], "live");
  EXPECT_EQ(j["dbs"][0]["calls"], 10);
  EXPECT_EQ(j["dbs"][0]["first"], "2026-01-01T00:00:01.000000000Z");
  EXPECT_TRUE(j["segments"].is_null());
  j = get("/api/v1/flows", &st);
  EXPECT_EQ(st, 200) << j;  // the live DB's (empty) flows table stands in for the missing stream
  EXPECT_EQ(j["flows"].size(), 0u);
}

TEST_F(ServeTest, TheOpenApiDocumentIsServedAndNamesEveryRoute) {
  start();
  const json doc = get_ok("/api/v1/openapi.json");
  std::ifstream in(std::string(TW_SOURCE_DIR) + "/docs/openapi.json");
  EXPECT_EQ(doc, json::parse(in));
  EXPECT_EQ(doc["openapi"], "3.1.0");
  for (const char* p : {"/calls", "/calls/{id}", "/stats", "/stream", "/flows", "/map", "/workloads", "/ips",
                        "/boundaries", "/snapshots", "/snapshots/{name}", "/snapshots/{name}/pcap",
                        "/snapshots/{name}/dissections", "/snapshots/{name}/dissections/{id}", "/pcap", "/dissection",
                        "/dissection/enable", "/dissection/disable", "/openapi.json"})
    EXPECT_TRUE(doc["paths"].contains(p)) << p;
}

TEST(ServePrivileges, NoCapabilityIsLeft) {
  // In a child: the test process keeps its own.
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    try {
      serve::drop_privileges({});
    } catch (...) {
      _exit(2);
    }
    _exit(serve::has_capabilities() ? 1 : 0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}
