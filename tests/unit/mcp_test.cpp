// MCP (userspace/serve/mcp.{hpp,cpp}, docs/MCP.md): JSON-RPC as the spec
// has it (versions, errors, batches), the tools' schemas, and every tool's
// answer against the HTTP API's for the same parameters, on the fixture of
// serve_test.cpp; both transports (stdio through pipes, POST /mcp).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "api.hpp"
#include "mcp.hpp"
#include "serve_fixture.hpp"

namespace {

json request(int id, const std::string& method, json params = json::object()) {
  return {{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", std::move(params)}};
}

class McpTest : public ServeTest {
 protected:
  std::unique_ptr<serve::Ctx> ctx;
  std::unique_ptr<serve::McpServer> mcp;

  void TearDown() override {
    mcp.reset();
    ctx.reset();
    ServeTest::TearDown();
  }

  // The MCP server over the same data directory and options as start() gives the HTTP server.
  void open_mcp(bool allow_destructive = false) {
    serve::ServeOptions o;
    o.data_dir = data;
    o.node = "test-node";
    o.control_socket = data + "/no-sensor.sock";
    o.allow_destructive = allow_destructive;
    mcp.reset();
    ctx = serve::make_mcp_context(o);
    mcp = std::make_unique<serve::McpServer>(*ctx);
  }

  json rpc(const json& msg, serve::McpSession& s) {
    auto r = mcp->handle(msg, s);
    EXPECT_TRUE(r.has_value()) << msg;
    return r ? *r : json();
  }
  json rpc(const json& msg) {
    serve::McpSession s;
    s.version = "2025-06-18";
    return rpc(msg, s);
  }

  // A tool's result, checked for its shape: the JSON text in content equals structuredContent.
  json call(const std::string& tool, const json& args, bool want_error = false) {
    const json r = rpc(request(7, "tools/call", {{"name", tool}, {"arguments", args}}));
    EXPECT_TRUE(r.contains("result")) << r;
    const json& res = r["result"];
    EXPECT_EQ(res.value("isError", false), want_error) << tool << " " << args << ": " << res;
    EXPECT_TRUE(res["content"].is_array() && res["content"].size() == 1) << res;
    EXPECT_EQ(res["content"][0]["type"], "text");
    if (!want_error) {
      EXPECT_EQ(json::parse(res["content"][0]["text"].get<std::string>()), res["structuredContent"]);
    }
    return res;
  }
};

const std::set<std::string> kTools = {"list_api_calls",
                                      "get_api_call",
                                      "get_api_stats",
                                      "list_l4_flows",
                                      "get_l4_flow_summary",
                                      "get_service_map",
                                      "list_workloads",
                                      "list_ips",
                                      "get_data_boundaries",
                                      "create_snapshot",
                                      "list_snapshots",
                                      "export_snapshot_pcap",
                                      "start_snapshot_dissection",
                                      "get_snapshot_dissection_status",
                                      "list_snapshot_dissections",
                                      "get_dissection_status",
                                      "enable_dissection",
                                      "disable_dissection"};

}  // namespace

TEST_F(McpTest, InitializeAgreesOnAVersion) {
  open_mcp();
  serve::McpSession s;
  json r = rpc(request(1, "initialize",
                       {{"protocolVersion", "2025-06-18"},
                        {"capabilities", json::object()},
                        {"clientInfo", {{"name", "t"}, {"version", "1"}}}}),
               s);
  EXPECT_EQ(r["jsonrpc"], "2.0");
  EXPECT_EQ(r["id"], 1);
  EXPECT_EQ(r["result"]["protocolVersion"], "2025-06-18");
  EXPECT_EQ(r["result"]["serverInfo"]["name"], "tapwire");
  EXPECT_TRUE(r["result"]["capabilities"]["tools"].is_object());
  EXPECT_TRUE(r["result"]["capabilities"]["prompts"].is_object());
  EXPECT_TRUE(r["result"]["instructions"].is_string());
  EXPECT_EQ(s.version, "2025-06-18");
  // An older version it speaks is agreed on; one it does not know gets its newest.
  serve::McpSession old;
  EXPECT_EQ(rpc(request(2, "initialize", {{"protocolVersion", "2025-03-26"}}), old)["result"]["protocolVersion"],
            "2025-03-26");
  serve::McpSession other;
  EXPECT_EQ(rpc(request(3, "initialize", {{"protocolVersion", "1999-01-01"}}), other)["result"]["protocolVersion"],
            "2025-06-18");
  EXPECT_EQ(rpc(request(4, "initialize", json::object()))["error"]["code"], serve::kInvalidParams);
  // initialized is a notification: no answer.
  EXPECT_FALSE(mcp->handle({{"jsonrpc", "2.0"}, {"method", "notifications/initialized"}}, s).has_value());
  EXPECT_TRUE(s.initialized);
  EXPECT_EQ(rpc(request(5, "ping"))["result"], json::object());
}

TEST_F(McpTest, EveryToolHasASchemaAnAssistantCanUse) {
  open_mcp();
  const json tools = rpc(request(1, "tools/list"))["result"]["tools"];
  std::set<std::string> names;
  const std::set<std::string> types = {"string", "integer", "number", "boolean", "array", "object"};
  const std::set<std::string> keywords = {"type", "description", "enum", "minimum", "maximum", "pattern", "items"};
  for (const json& t : tools) {
    const std::string name = t["name"];
    names.insert(name);
    EXPECT_GT(t["description"].get<std::string>().size(), 40u) << name;
    const json& s = t["inputSchema"];
    ASSERT_TRUE(s.is_object()) << name;
    EXPECT_EQ(s["type"], "object") << name;
    ASSERT_TRUE(s["properties"].is_object()) << name;
    EXPECT_EQ(s["additionalProperties"], false) << name;
    for (const auto& [prop, schema] : s["properties"].items()) {
      EXPECT_TRUE(types.count(schema.value("type", ""))) << name << "." << prop;
      EXPECT_FALSE(schema.value("description", "").empty()) << name << "." << prop;
      for (const auto& [k, v] : schema.items()) EXPECT_TRUE(keywords.count(k)) << name << "." << prop << ": " << k;
      if (schema.contains("enum")) {
        EXPECT_TRUE(schema["enum"].is_array() && !schema["enum"].empty());
        for (const json& v : schema["enum"]) EXPECT_TRUE(v.is_string());
      }
      if (schema.contains("pattern")) {
        EXPECT_NO_THROW(std::regex re(schema["pattern"].get<std::string>())) << name << "." << prop;
      }
    }
    if (s.contains("required")) {
      for (const json& r : s["required"]) EXPECT_TRUE(s["properties"].contains(r.get<std::string>())) << name << ": " << r;
    }
    const json& a = t["annotations"];
    EXPECT_TRUE(a["readOnlyHint"].is_boolean()) << name;
    EXPECT_EQ(a["destructiveHint"], false) << name;
  }
  EXPECT_EQ(names, kTools);
  EXPECT_EQ(tools.size(), kTools.size());
  for (const json& t : tools) {
    const bool writes = t["name"] == "create_snapshot" || t["name"] == "export_snapshot_pcap" ||
                        t["name"] == "start_snapshot_dissection" || t["name"] == "enable_dissection" ||
                        t["name"] == "disable_dissection";
    EXPECT_EQ(t["annotations"]["readOnlyHint"], !writes) << t["name"];
  }
}

TEST_F(McpTest, DestructiveToolsAreOfferedOnlyWhenAllowed) {
  ::mkdir((data + "/snapshots").c_str(), 0750);
  ::mkdir((data + "/snapshots/kept").c_str(), 0750);
  open_mcp(false);
  for (const json& t : mcp->tools()) EXPECT_NE(t["name"], "delete_snapshot");
  json r = rpc(request(1, "tools/call", {{"name", "delete_snapshot"}, {"arguments", {{"name", "kept"}}}}));
  EXPECT_EQ(r["error"]["code"], serve::kInvalidParams);
  EXPECT_NE(r["error"]["message"].get<std::string>().find("--allow-destructive"), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(data + "/snapshots/kept"));

  open_mcp(true);
  bool offered = false;
  for (const json& t : mcp->tools())
    if (t["name"] == "delete_snapshot") {
      offered = true;
      EXPECT_EQ(t["annotations"]["destructiveHint"], true);
      EXPECT_EQ(t["annotations"]["readOnlyHint"], false);
      EXPECT_EQ(t["inputSchema"]["required"], json::array({"name"}));
    }
  EXPECT_TRUE(offered);
  // Named names only, as DELETE /snapshots/{name} takes them.
  const json e = call("delete_snapshot", {{"name", "../kept"}}, true);
  EXPECT_EQ(e["structuredContent"]["status"], 400);
}

TEST_F(McpTest, JsonRpcErrorsAsTheSpecNumbersThem) {
  open_mcp();
  serve::McpSession s;
  s.version = "2025-06-18";
  auto text = [&](const std::string& t) { return *mcp->handle_text(t, s); };
  json r = text("{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"tools/list\"");  // cut short
  EXPECT_EQ(r["error"]["code"], serve::kParseError);
  EXPECT_TRUE(r["id"].is_null());
  EXPECT_EQ(text("not json at all")["error"]["code"], -32700);
  r = text(R"({"jsonrpc": "2.0", "id": "a-1", "method": "resources/list"})");
  EXPECT_EQ(r["error"]["code"], serve::kMethodNotFound);
  EXPECT_EQ(r["id"], "a-1");
  EXPECT_EQ(text(R"({"jsonrpc": "1.0", "id": 2, "method": "ping"})")["error"]["code"], serve::kInvalidRequest);
  EXPECT_EQ(text(R"({"id": 2, "method": "ping"})")["error"]["code"], serve::kInvalidRequest);
  EXPECT_EQ(text(R"({"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"})")["error"]["code"], serve::kInvalidRequest);
  EXPECT_EQ(text(R"({"jsonrpc": "2.0", "id": 3, "method": 42})")["error"]["code"], serve::kInvalidRequest);
  EXPECT_EQ(text(R"({"jsonrpc": "2.0", "id": 3, "method": "ping", "params": [1]})")["error"]["code"],
            serve::kInvalidParams);
  EXPECT_EQ(text("42")["error"]["code"], serve::kInvalidRequest);
  // Notifications and responses get no answer, known or not.
  EXPECT_FALSE(mcp->handle_text(R"({"jsonrpc": "2.0", "method": "notifications/cancelled"})", s));
  EXPECT_FALSE(mcp->handle_text(R"({"jsonrpc": "2.0", "method": "no/such/notification"})", s));
  EXPECT_FALSE(mcp->handle_text(R"({"jsonrpc": "2.0", "id": 9, "result": {}})", s));
  // tools/call: a tool that is not there, arguments that are not an object.
  r = rpc(request(4, "tools/call", {{"name", "drop_tables"}}));
  EXPECT_EQ(r["error"]["code"], serve::kInvalidParams);
  EXPECT_EQ(rpc(request(5, "tools/call", {{"name", "list_api_calls"}, {"arguments", "limit=5"}}))["error"]["code"],
            serve::kInvalidParams);
  EXPECT_EQ(rpc(request(6, "tools/call", json::object()))["error"]["code"], serve::kInvalidParams);

  // Batches: 2025-06-18 has none; 2025-03-26 answers each request in one array.
  const std::string batch = R"([{"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                                {"jsonrpc": "2.0", "id": 2, "method": "nope"}])";
  r = text(batch);
  EXPECT_EQ(r["error"]["code"], serve::kInvalidRequest) << r;
  serve::McpSession old;
  old.version = "2025-03-26";
  r = *mcp->handle_text(batch, old);
  ASSERT_TRUE(r.is_array()) << r;
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0]["id"], 1);
  EXPECT_EQ(r[0]["result"], json::object());
  EXPECT_EQ(r[1]["error"]["code"], serve::kMethodNotFound);
  EXPECT_EQ((*mcp->handle_text("[]", old))["error"]["code"], serve::kInvalidRequest);
  r = *mcp->handle_text(R"([{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-03-26"}}])", old);
  EXPECT_EQ(r[0]["error"]["code"], serve::kInvalidRequest);
  EXPECT_FALSE(mcp->handle_text(R"([{"jsonrpc": "2.0", "method": "notifications/initialized"}])", old));
  serve::McpSession fresh;  // no version yet: no batch
  EXPECT_EQ((*mcp->handle_text(batch, fresh))["error"]["code"], serve::kInvalidRequest);
}

TEST_F(McpTest, ToolsAnswerWhatTheHttpApiAnswers) {
  start();
  open_mcp();
  struct Case {
    std::string tool;
    json args;
    std::string path;
  };
  const std::vector<Case> cases = {
      {"list_api_calls", json::object(), "/api/v1/calls"},
      {"list_api_calls", {{"filter", "http and response.status >= 400"}, {"limit", 2}, {"format", "full"}},
       "/api/v1/calls?limit=2&format=full&filter=" + enc("http and response.status >= 400")},
      {"list_api_calls", {{"start", "2026-01-01T00:00:03Z"}, {"end", 1767225607}},
       "/api/v1/calls?start=2026-01-01T00:00:03Z&end=1767225607"},
      {"list_api_calls", {{"filter", "dns or redis"}, {"limit", 3}, {"db", "live"}},
       "/api/v1/calls?limit=3&db=live&filter=" + enc("dns or redis")},
      {"get_api_call", {{"id", hex_id(10)}}, "/api/v1/calls/" + hex_id(10)},
      {"get_api_call", {{"id", hex_id(7)}, {"db", "live"}}, "/api/v1/calls/" + hex_id(7) + "?db=live"},
      {"get_api_stats", json::object(), "/api/v1/stats"},
      {"get_api_stats", {{"group_by", "endpoint"}, {"filter", "http"}}, "/api/v1/stats?group_by=endpoint&filter=http"},
      {"get_api_stats", {{"group_by", "workload"}, {"start", "1767225603"}, {"limit", 1}},
       "/api/v1/stats?group_by=workload&start=1767225603&limit=1"},
      {"list_l4_flows", json::object(), "/api/v1/flows"},
      {"get_data_boundaries", json::object(), "/api/v1/boundaries"},
      {"list_snapshots", json::object(), "/api/v1/snapshots"},
  };
  for (const Case& c : cases) {
    const json want = get_ok(c.path);
    const json got = call(c.tool, c.args);
    EXPECT_EQ(got["structuredContent"], want) << c.tool << " " << c.args;
  }
  // The cursor of one answer pages the other.
  const json page = call("list_api_calls", {{"limit", 4}})["structuredContent"];
  ASSERT_TRUE(page["next_cursor"].is_string());
  EXPECT_EQ(call("list_api_calls", {{"limit", 4}, {"cursor", page["next_cursor"]}})["structuredContent"],
            get_ok("/api/v1/calls?limit=4&cursor=" + page["next_cursor"].get<std::string>()));
  // The summary of no flows is zeros, not an error.
  const json sum = call("get_l4_flow_summary", json::object())["structuredContent"];
  EXPECT_EQ(sum["totals"]["flows"], 0);
  EXPECT_EQ(sum["matched"], 0);
  EXPECT_EQ(sum["top_talkers"], json::array());
  // What needs the sensor, or a stream that is not there, fails as the API does.
  for (const char* t : {"get_dissection_status", "enable_dissection", "disable_dissection"})
    EXPECT_EQ(call(t, json::object(), true)["structuredContent"]["status"], 503) << t;
  EXPECT_EQ(call("list_workloads", json::object(), true)["structuredContent"]["status"], 404);
  EXPECT_EQ(call("list_snapshot_dissections", {{"name", "none"}}, true)["structuredContent"]["status"], 404);
}

TEST_F(McpTest, HostileArgumentsAreToolErrorsThatSayWhatIsWrong) {
  open_mcp();
  auto error_text = [&](const std::string& tool, const json& args) {
    const json r = call(tool, args, true);
    return r["content"][0]["text"].get<std::string>();
  };
  // A bad filter: the column, as the HTTP API's 400 gives it.
  json r = call("list_api_calls", {{"filter", "http and respnse.status >= 500"}}, true);
  EXPECT_EQ(r["structuredContent"]["column"], 10);
  EXPECT_EQ(r["structuredContent"]["status"], 400);
  const std::string t = r["content"][0]["text"];
  EXPECT_NE(t.find("respnse.status"), std::string::npos) << t;
  EXPECT_NE(t.find("column 10"), std::string::npos) << t;
  EXPECT_EQ(call("get_api_stats", {{"filter", "status = 200"}}, true)["structuredContent"]["column"], 8);
  EXPECT_NE(error_text("get_api_call", {{"id", std::string(4096, 'f')}}).find("16 hex digits"), std::string::npos);
  EXPECT_NE(error_text("get_api_call", {{"id", 18446744073709551615ull}}).find("16 hex digits"), std::string::npos);
  EXPECT_NE(error_text("get_api_call", {{"id", hex_id(99)}}).find("no call"), std::string::npos);
  EXPECT_NE(error_text("get_api_call", json::object()).find("missing argument 'id'"), std::string::npos);
  EXPECT_NE(error_text("list_api_calls", {{"limit", 100000}}).find("limit"), std::string::npos);
  EXPECT_NE(error_text("list_api_calls", {{"limit", -1}}).find("limit"), std::string::npos);
  EXPECT_NE(error_text("list_api_calls", {{"limit", 2.5}}).find("limit"), std::string::npos);
  EXPECT_NE(error_text("list_api_calls", {{"format", "xml"}}).find("format"), std::string::npos);
  EXPECT_NE(error_text("list_api_calls", {{"start", "yesterday"}}).find("start"), std::string::npos);
  EXPECT_NE(error_text("list_api_calls", {{"limt", 5}}).find("unknown argument 'limt'"), std::string::npos);
  EXPECT_NE(error_text("list_api_calls", {{"filter", {{"sql", "1=1"}}}}).find("filter"), std::string::npos);
  EXPECT_NE(error_text("get_api_stats", {{"group_by", "colour"}}).find("group_by"), std::string::npos);
  for (const char* db : {"../../etc/passwd", "/etc/passwd", "s1/../../x", "s1/d1%00", ".hidden/d1"})
    EXPECT_FALSE(error_text("list_api_calls", {{"db", db}}).empty()) << db;
  for (const char* name : {"../x", "a/b", ".", "..", ""}) {
    call("list_snapshot_dissections", {{"name", name}}, true);
    call("export_snapshot_pcap", {{"name", name}}, true);
    call("start_snapshot_dissection", {{"name", name}}, true);
  }
  call("get_snapshot_dissection_status", {{"name", "x"}, {"id", "../../d"}}, true);
  call("create_snapshot", {{"name", "../escape"}}, true);
  EXPECT_FALSE(std::filesystem::exists(data + "/../escape"));
  EXPECT_NE(error_text("get_l4_flow_summary", {{"top", 0}}).find("top"), std::string::npos);
  EXPECT_NE(error_text("list_l4_flows", {{"sort", "size"}}).find("sort"), std::string::npos);
}

TEST_F(McpTest, PromptsTellWhichToolsToCall) {
  open_mcp();
  const json list = rpc(request(1, "prompts/list"))["result"]["prompts"];
  std::set<std::string> names;
  for (const json& p : list) {
    names.insert(p["name"]);
    EXPECT_TRUE(p["arguments"].is_array());
  }
  EXPECT_EQ(names, (std::set<std::string>{"find_errors", "latency_analysis", "show_topology"}));
  json r = rpc(request(2, "prompts/get", {{"name", "find_errors"}, {"arguments", {{"namespace", "sh\"op"}, {"window", "-2h"}}}}));
  const json& m = r["result"]["messages"];
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0]["role"], "user");
  const std::string text = m[0]["content"]["text"];
  for (const char* tool : {"get_data_boundaries", "get_api_stats", "list_api_calls", "get_api_call"})
    EXPECT_NE(text.find(tool), std::string::npos) << tool;
  EXPECT_NE(text.find("-2h"), std::string::npos);
  EXPECT_NE(text.find("sh\\\"op"), std::string::npos) << text;  // quoted for the query language
  const std::string lat =
      rpc(request(3, "prompts/get", {{"name", "latency_analysis"}, {"arguments", {{"threshold", "250ms"}}}}))
          ["result"]["messages"][0]["content"]["text"];
  EXPECT_NE(lat.find("duration > 250ms"), std::string::npos) << lat;
  const std::string topo = rpc(request(4, "prompts/get", {{"name", "show_topology"}}))["result"]["messages"][0]["content"]["text"];
  EXPECT_NE(topo.find("get_service_map"), std::string::npos);
  EXPECT_EQ(rpc(request(5, "prompts/get", {{"name", "nope"}}))["error"]["code"], serve::kInvalidParams);
  EXPECT_EQ(rpc(request(6, "prompts/get", {{"name", "latency_analysis"}, {"arguments", {{"threshold", "1; drop"}}}}))
                ["error"]["code"],
            serve::kInvalidParams);
  EXPECT_EQ(rpc(request(7, "prompts/get", {{"name", "find_errors"}, {"arguments", {{"colour", "red"}}}}))["error"]["code"],
            serve::kInvalidParams);
}

TEST_F(McpTest, TheStdioTransportAnswersLineByLine) {
  open_mcp();
  int in[2], out[2];
  ASSERT_EQ(::pipe(in), 0);
  ASSERT_EQ(::pipe(out), 0);
  std::thread loop([&] {
    serve::run_mcp_stdio(*mcp, in[0], out[1]);
    ::close(out[1]);
  });
  const std::string input =
      request(1, "initialize", {{"protocolVersion", "2025-06-18"}}).dump() + "\n" +
      R"({"jsonrpc": "2.0", "method": "notifications/initialized"})" + "\n" + "\n" + "   \n" +
      request(2, "tools/list").dump() + "\r\n" + "{broken\n" + request(3, "tools/call", {{"name", "list_api_calls"}, {"arguments", {{"limit", 1}}}}).dump() +
      "\n" + std::string(5u << 20, 'x') + "\n" + request(4, "ping").dump();  // the last line without its newline
  std::thread writer([&] {
    size_t off = 0;
    while (off < input.size()) {
      const ssize_t n = ::write(in[1], input.data() + off, std::min<size_t>(input.size() - off, 7000));
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    ::close(in[1]);
  });
  std::string output;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(out[0], buf, sizeof buf)) > 0) output.append(buf, static_cast<size_t>(n));
  writer.join();
  loop.join();
  ::close(in[0]);
  ::close(out[0]);
  std::vector<json> lines;
  size_t start = 0;
  for (size_t nl; (nl = output.find('\n', start)) != std::string::npos; start = nl + 1)
    lines.push_back(json::parse(output.substr(start, nl - start)));
  EXPECT_EQ(start, output.size()) << "every answer ends its line";
  // initialize, tools/list, the parse error, tools/call, the line too long. The
  // ping without a newline is not a complete message.
  ASSERT_EQ(lines.size(), 5u) << output.substr(0, 2000);
  EXPECT_EQ(lines[0]["result"]["protocolVersion"], "2025-06-18");
  EXPECT_EQ(lines[1]["result"]["tools"].size(), kTools.size());
  EXPECT_EQ(lines[2]["error"]["code"], serve::kParseError);
  EXPECT_EQ(lines[3]["id"], 3);
  EXPECT_EQ(lines[3]["result"]["structuredContent"]["calls"][0]["id"], hex_id(10));
  EXPECT_EQ(lines[4]["error"]["code"], serve::kInvalidRequest);
}

TEST_F(McpTest, TheHttpTransportUnderTheApisRules) {
  start();
  auto c = client();
  auto post = [&](const json& body, const httplib::Headers& h = {}) {
    auto r = c.Post("/mcp", h, body.dump(), "application/json");
    EXPECT_TRUE(r);
    return r;
  };
  auto r = post(request(1, "initialize", {{"protocolVersion", "2025-06-18"}, {"capabilities", json::object()}}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
  const std::string sid = r->get_header_value("Mcp-Session-Id");
  ASSERT_EQ(sid.size(), 32u);
  EXPECT_EQ(json::parse(r->body)["result"]["protocolVersion"], "2025-06-18");
  const httplib::Headers session = {{"Mcp-Session-Id", sid}, {"MCP-Protocol-Version", "2025-06-18"}};
  r = post({{"jsonrpc", "2.0"}, {"method", "notifications/initialized"}}, session);
  EXPECT_EQ(r->status, 202);
  EXPECT_TRUE(r->body.empty());
  // A tool over HTTP: the same answer as GET.
  r = post(request(2, "tools/call", {{"name", "get_api_stats"}, {"arguments", {{"group_by", "endpoint"}}}}), session);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["result"]["structuredContent"], get_ok("/api/v1/stats?group_by=endpoint"));
  // The session's version has no batches.
  r = post(json::array({request(3, "ping"), request(4, "ping")}), session);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], serve::kInvalidRequest);
  // Without a session, the version header decides (2025-03-26 has batches).
  r = post(json::array({request(3, "ping"), request(4, "ping")}), {{"MCP-Protocol-Version", "2025-03-26"}});
  EXPECT_EQ(json::parse(r->body).size(), 2u);
  r = post(request(5, "ping"), {{"MCP-Protocol-Version", "2031-01-01"}});
  EXPECT_EQ(r->status, 400);
  r = post(request(5, "ping"), {{"Mcp-Session-Id", "0123456789abcdef0123456789abcdef"}});
  EXPECT_EQ(r->status, 404);
  auto raw = c.Post("/mcp", "{\"jsonrpc\": ", "application/json");
  ASSERT_TRUE(raw);
  EXPECT_EQ(raw->status, 400);
  EXPECT_EQ(json::parse(raw->body)["error"]["code"], serve::kParseError);
  raw = c.Post("/mcp", request(6, "ping").dump(), "text/plain");
  ASSERT_TRUE(raw);
  EXPECT_EQ(raw->status, 415);
  r = post(request(7, "ping"), {{"Origin", "https://evil.example"}});
  EXPECT_EQ(r->status, 403);
  r = post(request(7, "ping"), {{"Origin", "http://localhost:8899"}});
  EXPECT_EQ(r->status, 200);
  auto g = c.Get("/mcp");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->status, 405);
  // A session ends with DELETE; then it is unknown.
  auto d = c.Delete("/mcp", session);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->status, 204);
  r = post(request(8, "ping"), session);
  EXPECT_EQ(r->status, 404);
  stop();

  // The token rule, as for every endpoint.
  serve::ServeOptions o;
  o.token = "0123456789abcdef-token";
  o.loopback_needs_token = true;
  start(o);
  auto c2 = client();
  auto denied = c2.Post("/mcp", request(1, "ping").dump(), "application/json");
  ASSERT_TRUE(denied);
  EXPECT_EQ(denied->status, 401);
  auto allowed = c2.Post("/mcp", {{"Authorization", "Bearer 0123456789abcdef-token"}}, request(1, "ping").dump(),
                         "application/json");
  ASSERT_TRUE(allowed);
  EXPECT_EQ(allowed->status, 200);
}
