// MCP for tapwire (mcp.hpp, docs/MCP.md): JSON-RPC 2.0 with initialize,
// ping, tools/list, tools/call, prompts/list and prompts/get; the tools'
// table; the stdio transport of `tapwire mcp` and the Streamable HTTP one of
// `tapwire serve` (POST /mcp).
#include "mcp.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <random>

#include "api.hpp"
#include "commands.hpp"
#include "snapshot.hpp"

namespace tapwire::serve {

using nlohmann::json;

bool mcp_version_has_batches(const std::string& version) {
  return version == "2025-03-26" || version == "2024-11-05";
}

namespace {

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json rpc_error(const json& id, int code, const std::string& message) {
  return {{"jsonrpc", "2.0"}, {"id", id}, {"error", {{"code", code}, {"message", message}}}};
}

json rpc_result(const json& id, json result) {
  return {{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}};
}

// A JSON-RPC error answered to a request (thrown by the methods).
struct RpcError : std::runtime_error {
  RpcError(int code, const std::string& message) : std::runtime_error(message), code(code) {}
  int code;
};

// A tool's failure, told to the assistant as a result with isError: a bad
// argument, or what the HTTP API answers with an error status.
struct ToolError : std::runtime_error {
  explicit ToolError(const std::string& message, json details = json::object())
      : std::runtime_error(message), details(std::move(details)) {}
  json details;
};

// ------------------------------------------------------------- schemas ---

const char* const kFilterText =
    "A filter in tapwire's query language over the call record (docs/QUERY.md): fields such as protocol, "
    "request.method, request.path, response.status, duration, src.namespace, src.pod, dst.namespace, dst.workload, "
    "dst.port, flags; operators == != < <= > >= contains startswith endswith matches in; and/or/not. Examples: "
    "'http and response.status >= 500', 'dns and response.rcode != \"NOERROR\"', "
    "'dst.namespace == \"shop\" and duration > 200ms', 'grpc and response.grpc_status_name != \"OK\"'. "
    "Omit for every call.";
const char* const kFlowFilterText =
    "A filter in tapwire's query language over the flow record (docs/QUERY.md, docs/FLOWS.md): fields such as "
    "protocol (tcp, udp), state, client.ip, client.namespace, server.ip, server.port, server.namespace, bytes, "
    "packets, retransmissions, duration. Examples: 'tcp and retransmissions > 0', 'server.port == 5432', "
    "'state == \"refused\"'. Omit for every flow.";
const char* const kDbText =
    "Which dissection DB to read: 'live' (the default: what the sensor's live dissection writes) or "
    "'SNAPSHOT/DISSECTION', a delayed dissection of a snapshot (the 'db' of list_snapshot_dissections).";
const char* const kStartText =
    "From this time: RFC 3339 ('2026-11-23T01:52:00Z'), Unix seconds ('1795398720'), or relative to now "
    "('-15m', '-1h30m', 'now'). Omit for no lower bound.";
const char* const kEndText = "Up to this time (inclusive), in the same forms as start. Omit for no upper bound.";
const char* const kSnapshotText = "A snapshot's name (see list_snapshots).";

json str(const std::string& description) { return {{"type", "string"}, {"description", description}}; }
json str_enum(const std::string& description, std::vector<std::string> values) {
  return {{"type", "string"}, {"description", description}, {"enum", std::move(values)}};
}
json integer(const std::string& description, int64_t min, int64_t max) {
  return {{"type", "integer"}, {"description", description}, {"minimum", min}, {"maximum", max}};
}
json limit_prop(const std::string& what) {
  return integer("At most this many " + what + " (1 to " + std::to_string(kMaxLimit) + "; default " +
                     std::to_string(kDefaultLimit) + ").",
                 1, static_cast<int64_t>(kMaxLimit));
}
json name_prop(const std::string& description) {
  json j = str(description);
  j["pattern"] = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$";
  return j;
}

// ---------------------------------------------------------------- tools ---

struct Tool {
  std::string name, title, description;
  json properties = json::object();
  std::vector<std::string> required;
  bool read_only = true, destructive = false, idempotent = true;
  // The answer: args are the arguments as the client sent them, p the same
  // as the HTTP API's parameters (strings).
  std::function<json(const Ctx&, const json& args, const Params& p)> run;

  json schema() const {
    json s = {{"type", "object"},
              {"properties", properties.is_null() ? json::object() : properties},
              {"additionalProperties", false}};
    if (!required.empty()) s["required"] = required;
    return s;
  }
  json to_json() const {
    return {{"name", name},
            {"title", title},
            {"description", description},
            {"inputSchema", schema()},
            {"annotations",
             {{"title", title},
              {"readOnlyHint", read_only},
              {"destructiveHint", destructive},
              {"idempotentHint", idempotent},
              {"openWorldHint", false}}}};
  }
};

// The arguments as the HTTP API's parameters: strings, as a query string
// gives them, so that every value goes through the same checks. Numbers and
// booleans become their text; anything else, or a name the tool does not
// take, is the caller's mistake.
Params params_of(const Tool& t, const json& args) {
  Params p;
  for (const auto& [k, v] : args.items()) {
    if (!t.properties.contains(k)) {
      std::string names;
      for (const auto& [n, _] : t.properties.items()) names += (names.empty() ? "" : ", ") + n;
      throw ToolError("unknown argument '" + k + "'; " + t.name + " takes " + (names.empty() ? "none" : names));
    }
    if (v.is_null()) continue;
    if (v.is_string())
      p.set(k, v.get<std::string>());
    else if (v.is_number() || v.is_boolean())
      p.set(k, v.dump());
    else if (!(v.is_array() && t.properties[k].value("type", "") == "array"))
      throw ToolError(k + ": give a " + t.properties[k].value("type", std::string("string")) + ", not " + v.type_name());
  }
  for (const auto& r : t.required)
    if (!args.contains(r) || args[r].is_null() || (args[r].is_string() && args[r].get<std::string>().empty()))
      throw ToolError("missing argument '" + r + "'");
  return p;
}

// A request body (POST routes) from the arguments, without `skip`.
json body_of(const json& args, const std::vector<std::string>& skip) {
  json b = json::object();
  for (const auto& [k, v] : args.items())
    if (!v.is_null() && std::find(skip.begin(), skip.end(), k) == skip.end()) b[k] = v;
  return b;
}

// ---- get_l4_flow_summary: totals and top talkers of the flows GET flows
// answers (the same selection: filter, window, source), at most
// kMaxLimit of them by bytes.

uint64_t side_u64(const json& f, const char* side, const char* k) {
  auto it = f.find(side);
  if (it == f.end() || !it->is_object()) return 0;
  auto v = it->find(k);
  return v != it->end() && v->is_number_unsigned() ? v->get<uint64_t>()
         : v != it->end() && v->is_number_integer() ? static_cast<uint64_t>(std::max<int64_t>(0, v->get<int64_t>()))
                                                     : 0;
}

// An end of a flow as people name it: namespace/pod when the identity
// stream knew it, its DNS name when passive DNS saw one, else its address.
json endpoint_of(const json& e) {
  json out = {{"ip", e.value("ip", "")}};
  if (e.contains("namespace") && e["namespace"].is_string()) out["namespace"] = e["namespace"];
  if (e.contains("pod") && e["pod"].is_string()) out["pod"] = e["pod"];
  if (e.contains("workload") && e["workload"].is_object()) out["workload"] = e["workload"];
  if (e.contains("names") && e["names"].is_array() && !e["names"].empty()) out["names"] = e["names"];
  std::string label = out["ip"].get<std::string>();
  if (out.contains("pod")) label = out.value("namespace", "") + "/" + out["pod"].get<std::string>();
  else if (out.contains("names") && out["names"][0].is_string()) label = out["names"][0].get<std::string>();
  out["label"] = label;
  return out;
}

json flow_summary(const Ctx& ctx, Params q, size_t top) {
  q.set("limit", std::to_string(kMaxLimit)).set("sort", "bytes");
  const json answer = flows_json(ctx, q);
  struct Totals {
    uint64_t flows = 0, bytes = 0, packets = 0;
  };
  std::map<std::string, Totals> by_protocol;
  std::map<std::pair<std::string, std::string>, uint64_t> by_state;
  struct Talker {
    json endpoint;
    Totals t;
    uint64_t sent = 0, received = 0;
  };
  std::map<std::string, Talker> talkers;  // by ip
  std::map<std::string, Talker> pairs;  // client ip > server ip:port
  Totals all;
  for (const json& f : answer["flows"]) {
    const std::string proto = f.value("protocol", "?"), state = f.value("state", "?");
    const uint64_t up = side_u64(f, "client_to_server", "bytes"), down = side_u64(f, "server_to_client", "bytes");
    const uint64_t packets = side_u64(f, "client_to_server", "packets") + side_u64(f, "server_to_client", "packets");
    for (Totals* t : {&by_protocol[proto], &all}) {
      t->flows++;
      t->bytes += up + down;
      t->packets += packets;
    }
    by_state[{proto, state}]++;
    const json client = f.value("client", json::object()), server = f.value("server", json::object());
    auto add = [&](const json& e, uint64_t sent, uint64_t received) {
      Talker& t = talkers[e.value("ip", "?")];
      if (t.endpoint.is_null()) t.endpoint = endpoint_of(e);
      t.t.flows++;
      t.t.bytes += sent + received;
      t.t.packets += packets;
      t.sent += sent;
      t.received += received;
    };
    add(client, up, down);
    add(server, down, up);
    const std::string key = client.value("ip", "?") + ">" + server.value("ip", "?") + ":" +
                            std::to_string(server.value("port", 0)) + "/" + proto;
    Talker& pair = pairs[key];
    if (pair.endpoint.is_null())
      pair.endpoint = {{"client", endpoint_of(client)},
                       {"server", endpoint_of(server)},
                       {"port", server.value("port", 0)},
                       {"protocol", proto}};
    pair.t.flows++;
    pair.t.bytes += up + down;
    pair.t.packets += packets;
    pair.sent += up;
    pair.received += down;
  }
  auto top_of = [top](std::map<std::string, Talker>& m, bool pair) {
    std::vector<Talker*> v;
    for (auto& [k, t] : m) v.push_back(&t);
    std::stable_sort(v.begin(), v.end(), [](const Talker* a, const Talker* b) { return a->t.bytes > b->t.bytes; });
    if (v.size() > top) v.resize(top);
    json out = json::array();
    for (const Talker* t : v) {
      json j = pair ? t->endpoint : json{{"endpoint", t->endpoint}};
      j["flows"] = t->t.flows;
      j["bytes"] = t->t.bytes;
      j["packets"] = t->t.packets;
      j[pair ? "client_to_server_bytes" : "sent_bytes"] = t->sent;
      j[pair ? "server_to_client_bytes" : "received_bytes"] = t->received;
      out.push_back(std::move(j));
    }
    return out;
  };
  json protocols = json::array(), states = json::array();
  for (const auto& [proto, t] : by_protocol)
    protocols.push_back({{"protocol", proto}, {"flows", t.flows}, {"bytes", t.bytes}, {"packets", t.packets}});
  for (const auto& [k, n] : by_state) states.push_back({{"protocol", k.first}, {"state", k.second}, {"flows", n}});
  return {{"matched", answer["matched"]},
          {"summarized", answer["flows"].size()},
          // More flows matched than one answer of GET flows holds: the
          // summary is of the largest (by bytes); narrow the window or filter.
          {"truncated", answer["truncated"]},
          {"totals", {{"flows", all.flows}, {"bytes", all.bytes}, {"packets", all.packets}}},
          {"by_protocol", std::move(protocols)},
          {"by_state", std::move(states)},
          {"top_talkers", top_of(talkers, false)},
          {"top_conversations", top_of(pairs, true)}};
}

std::vector<Tool> make_tools(bool allow_destructive) {
  std::vector<Tool> t;
  t.push_back({"list_api_calls", "List API calls",
               "List the API calls (HTTP/1, HTTP/2, gRPC, DNS, Redis, Kafka, PostgreSQL, MySQL, MongoDB, AMQP, "
               "WebSocket) that tapwire dissected from the node's traffic, newest first, optionally filtered. "
               "Same answer as GET /api/v1/calls: {db, calls, next_cursor}; pass next_cursor as cursor for the next "
               "page. format 'compact' gives each call's summary (id, ts, protocol, method, path, status, src, dst, "
               "duration_us, flags); 'full' the whole call records with headers and bodies. Use get_api_call for one "
               "call whole.",
               {{"filter", str(kFilterText)},
                {"limit", limit_prop("calls")},
                {"format", str_enum("compact (default): summaries; full: whole call records.", {"compact", "full"})},
                {"start", str(kStartText)},
                {"end", str(kEndText)},
                {"db", str(kDbText)},
                {"cursor", str("The next_cursor of a previous answer: continue after its last call.")}},
               {},
               true, false, true,
               [](const Ctx& ctx, const json&, const Params& p) { return calls_json(ctx, p); }});
  t.push_back({"get_api_call", "Get one API call",
               "One API call whole: both ends (with their Kubernetes identity), request and response headers and "
               "bodies, timing and flags. Same answer as GET /api/v1/calls/{id}: {db, call}.",
               {{"id", json{{"type", "string"},
                            {"description", "The call's id: 16 hex digits, from list_api_calls."},
                            {"pattern", "^[0-9a-fA-F]{16}$"}}},
                {"db", str(kDbText)}},
               {"id"},
               true, false, true,
               [](const Ctx& ctx, const json&, const Params& p) { return call_json(ctx, p.get("id"), p); }});
  t.push_back({"get_api_stats", "API call statistics",
               "Counts, errors, error rate and latency percentiles (p50, p90, p99, min, max, mean in microseconds; "
               "nearest rank over the calls with a response) of the calls that match, grouped. Same answer as GET "
               "/api/v1/stats: {db, group_by, groups: [{key, calls, responses, errors, error_rate, duration_us}], "
               "truncated, total}. Errors: HTTP status >= 500, any other protocol's non-zero status, calls reset, "
               "timed out or with a protocol error.",
               {{"filter", str(kFilterText)},
                {"group_by", str_enum("What to group by (default protocol): protocol; status (with the protocol); "
                                      "endpoint (protocol, method, path without its query string); workload or "
                                      "namespace (of the server).",
                                      {"protocol", "status", "endpoint", "workload", "namespace"})},
                {"limit", limit_prop("groups, the largest first")},
                {"start", str(kStartText)},
                {"end", str(kEndText)},
                {"db", str(kDbText)}},
               {},
               true, false, true,
               [](const Ctx& ctx, const json&, const Params& p) { return stats_json(ctx, p); }});
  t.push_back({"list_l4_flows", "List L4 flows",
               "List the TCP and UDP flows (connections) the sensor saw, with both ends' identity, packets, bytes, "
               "state, handshake RTT, retransmissions and other TCP health counters. Same answer as GET "
               "/api/v1/flows: {flows, matched, truncated}.",
               {{"filter", str(kFlowFilterText)},
                {"limit", limit_prop("flows")},
                {"sort", str_enum("Order (default first: by first packet): bytes, packets, rtt, retransmissions "
                                  "(largest first).",
                                  {"first", "bytes", "packets", "rtt", "retransmissions"})},
                {"start", str(kStartText)},
                {"end", str(kEndText)},
                {"snapshot", str("Read this snapshot's flows instead of the live flow stream.")},
                {"db", str("Read the flows table of this dissection DB ('live' or 'SNAPSHOT/DISSECTION') instead of "
                           "the flow stream.")}},
               {},
               true, false, true,
               [](const Ctx& ctx, const json&, const Params& p) { return flows_json(ctx, p); }});
  {
    Tool s{"get_l4_flow_summary", "Summarize L4 flows",
           "Totals of the flows that match (count, bytes, packets), by protocol and by protocol and state, the top "
           "talkers (addresses by bytes sent and received, with their pod or DNS name) and the top conversations "
           "(client to server port). Computed from the flows list_l4_flows returns for the same parameters (at most "
           "10000 of them, the largest by bytes: 'truncated' says when more matched).",
           {{"filter", str(kFlowFilterText)},
            {"start", str(kStartText)},
            {"end", str(kEndText)},
            {"snapshot", str("Summarize this snapshot's flows instead of the live flow stream.")},
            {"db", str("Summarize the flows table of this dissection DB instead of the flow stream.")},
            {"top", integer("How many top talkers and conversations (default 10).", 1, 100)}},
           {},
           true, false, true,
           nullptr};
    s.run = [](const Ctx& ctx, const json& args, const Params& p) {
      size_t top = 10;
      if (args.contains("top") && !args["top"].is_null()) {
        if (!args["top"].is_number_integer() || args["top"].get<int64_t>() < 1 || args["top"].get<int64_t>() > 100)
          throw ToolError("top: give 1 to 100");
        top = static_cast<size_t>(args["top"].get<int64_t>());
      }
      Params q;
      for (const char* k : {"filter", "start", "end", "snapshot", "db"})
        if (const std::string v = p.get(k); !v.empty()) q.set(k, v);
      return flow_summary(ctx, q, top);
    };
    t.push_back(std::move(s));
  }
  t.push_back({"get_service_map", "Service map",
               "Who talks to whom: the service map built from the flows and calls, as nodes (namespaces, workloads "
               "or pods, and external addresses) and edges with their protocols, flows, calls, errors, bytes and "
               "packets. Same answer as GET /api/v1/map: {level, nodes, edges}.",
               {{"level", str_enum("Node granularity (default workload).", {"namespace", "workload", "pod"})},
                {"namespace", str("Only edges that touch this Kubernetes namespace.")},
                {"start", str(kStartText)},
                {"end", str(kEndText)},
                {"snapshot", str("This snapshot's flows instead of the live flow stream.")},
                {"db", str("The flows table of this dissection DB instead of the flow stream.")}},
               {},
               true, false, true,
               [](const Ctx& ctx, const json&, const Params& p) { return service_map_json(ctx, p); }});
  t.push_back({"list_workloads", "List workloads",
               "The Kubernetes pods and their workloads (kind, name, namespace, node, addresses, services) as the "
               "identity stream knew them at a time. Same answer as GET /api/v1/workloads.",
               {{"at", str("At this time (RFC 3339, Unix seconds, or relative such as '-10m'). Omit for now (the "
                           "stream's end).")},
                {"snapshot", str("From this snapshot's identity stream instead of the live one.")}},
               {},
               true, false, true,
               [](const Ctx& ctx, const json&, const Params& p) { return identity_json(ctx, p, false); }});
  t.push_back({"list_ips", "List IP addresses",
               "Which pod (namespace, workload, node, services) had each IP address at a time, from the identity "
               "stream. Same answer as GET /api/v1/ips.",
               {{"at", str("At this time (RFC 3339, Unix seconds, or relative such as '-10m'). Omit for now.")},
                {"snapshot", str("From this snapshot's identity stream instead of the live one.")}},
               {},
               true, false, true,
               [](const Ctx& ctx, const json&, const Params& p) { return identity_json(ctx, p, true); }});
  t.push_back({"get_data_boundaries", "Data boundaries",
               "What data there is: the time span and size of the packet, identity and flow streams, of each "
               "dissection DB (live and snapshots' dissections, with their call counts), and of each snapshot. Call "
               "it first to choose time windows that hold data. Same answer as GET /api/v1/boundaries.",
               {},
               {},
               true, false, true,
               [](const Ctx& ctx, const json&, const Params&) { return boundaries_json(ctx); }});
  t.push_back({"create_snapshot", "Create a snapshot",
               "Freeze a time window of the captured packets (and the identity and flow streams) into a snapshot, "
               "kept until deleted, so that retention does not remove it; it can then be dissected again "
               "(start_snapshot_dissection) or exported as pcapng (export_snapshot_pcap). Same as POST "
               "/api/v1/snapshots: {snapshot}. Needs the sensor running.",
               {{"name", name_prop("The snapshot's name (default snap-<time>Z).")},
                {"start", str(kStartText + std::string(" Default: the oldest data kept."))},
                {"end", str(kEndText + std::string(" Default: now."))}},
               {},
               false, false, false,
               [](const Ctx& ctx, const json&, const Params& p) {
                 json body = json::object();
                 for (const char* k : {"name", "start", "end"})
                   if (const std::string v = p.get(k); !v.empty()) body[k] = v;
                 return create_snapshot(ctx, body);
               }});
  t.push_back({"list_snapshots", "List snapshots",
               "The snapshots with their time windows, sizes and delayed dissections. Same answer as GET "
               "/api/v1/snapshots: {snapshots}.",
               {},
               {},
               true, false, true,
               [](const Ctx& ctx, const json&, const Params&) { return snapshots_json(ctx); }});
  t.push_back({"export_snapshot_pcap", "Export a snapshot as pcapng",
               "Write a snapshot's packets (optionally one flow's, or a time window's) as a pcapng file for "
               "Wireshark or tcpdump, into the snapshot's directory (dissections/exports/, not part of the "
               "snapshot itself), and answer its path, size and packet count. The same bytes as GET "
               "/api/v1/snapshots/{name}/pcap. Asking again with the same parameters rewrites the same file.",
               {{"name", name_prop(kSnapshotText)},
                {"flow", json{{"type", "string"},
                              {"description", "Only this flow's packets: its id (16 hex digits) from list_l4_flows."},
                              {"pattern", "^[0-9a-f]{16}$"}}},
                {"start", str(kStartText)},
                {"end", str(kEndText)}},
               {"name"},
               false, false, true,
               [](const Ctx& ctx, const json&, const Params& p) { return write_snapshot_pcap(ctx, p.get("name"), p); }});
  t.push_back({"start_snapshot_dissection", "Dissect a snapshot",
               "Start a delayed dissection of a snapshot (tapwire dissect, in the background) into its own DB; poll "
               "get_snapshot_dissection_status until its state is 'done', then query it with db='SNAPSHOT/ID' in "
               "list_api_calls and get_api_stats. Same as POST /api/v1/snapshots/{name}/dissections: {dissection}.",
               {{"name", name_prop(kSnapshotText)},
                {"id", name_prop("The dissection's id (default d<time>-<random>).")},
                {"dissectors", str("Only these protocols, comma-separated, such as 'http,dns' (default: all).")},
                {"jobs", integer("Worker processes (1 to 8).", 1, 8)}},
               {"name"},
               false, false, false,
               [](const Ctx& ctx, const json& args, const Params& p) {
                 return json{{"dissection", ctx.jobs->start(p.get("name"), body_of(args, {"name"}))}};
               }});
  t.push_back({"get_snapshot_dissection_status", "Snapshot dissection status",
               "One delayed dissection's state (running, done, failed, cancelled, interrupted), progress "
               "(fraction) and DB name. Same answer as GET /api/v1/snapshots/{name}/dissections/{id}: {dissection}.",
               {{"name", name_prop(kSnapshotText)}, {"id", name_prop("The dissection's id.")}},
               {"name", "id"},
               true, false, true,
               [](const Ctx& ctx, const json&, const Params& p) {
                 return json{{"dissection", ctx.jobs->get(p.get("name"), p.get("id"))}};
               }});
  t.push_back({"list_snapshot_dissections", "List a snapshot's dissections",
               "The delayed dissections of a snapshot, with their states and DB names. Same answer as GET "
               "/api/v1/snapshots/{name}/dissections: {snapshot, dissections}.",
               {{"name", name_prop(kSnapshotText)}},
               {"name"},
               true, false, true,
               [](const Ctx& ctx, const json&, const Params& p) { return ctx.jobs->list(p.get("name")); }});
  t.push_back({"get_dissection_status", "Live dissection status",
               "Whether the sensor's live dissection (the live DB's source) is on, and its state. Same answer as GET "
               "/api/v1/dissection: {dissection}.",
               {},
               {},
               true, false, true,
               [](const Ctx& ctx, const json&, const Params&) { return dissection_switch(ctx, "status"); }});
  t.push_back({"enable_dissection", "Enable live dissection",
               "Turn the sensor's live dissection on: new traffic is dissected into the live DB. Same as POST "
               "/api/v1/dissection/enable.",
               {},
               {},
               false, false, true,
               [](const Ctx& ctx, const json&, const Params&) { return dissection_switch(ctx, "enable"); }});
  t.push_back({"disable_dissection", "Disable live dissection",
               "Turn the sensor's live dissection off (capture goes on; snapshots can still be dissected later). "
               "Same as POST /api/v1/dissection/disable.",
               {},
               {},
               false, false, true,
               [](const Ctx& ctx, const json&, const Params&) { return dissection_switch(ctx, "disable"); }});
  // Offered only when the operator allowed destructive operations: an
  // assistant cannot call what it is not shown.
  if (allow_destructive)
    t.push_back({"delete_snapshot", "Delete a snapshot",
                 "Delete a snapshot and its dissections and exports, for good. Same as DELETE "
                 "/api/v1/snapshots/{name}: {deleted}.",
                 {{"name", name_prop(kSnapshotText)}},
                 {"name"},
                 false, true, true,
                 [](const Ctx& ctx, const json&, const Params& p) { return delete_snapshot(ctx, p.get("name")); }});
  return t;
}

// -------------------------------------------------------------- prompts ---

struct PromptArg {
  std::string name, description;
  bool required = false;
};
struct Prompt {
  std::string name, title, description;
  std::vector<PromptArg> args;
  std::function<std::string(const std::map<std::string, std::string>&)> text;
};

// A string of the query language, quoted: "..." with \ and " escaped.
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

std::string arg_or(const std::map<std::string, std::string>& a, const std::string& k, const std::string& def) {
  auto it = a.find(k);
  return it == a.end() || it->second.empty() ? def : it->second;
}

// "(NS filter) and (f)" or f.
std::string scoped(const std::map<std::string, std::string>& a, const std::string& f) {
  const std::string ns = arg_or(a, "namespace", "");
  if (ns.empty()) return f;
  return "(src.namespace == " + quoted(ns) + " or dst.namespace == " + quoted(ns) + ") and (" + f + ")";
}

// ", filter=<the namespace's calls>" for a tool call in a prompt, or "".
std::string ns_argument(const std::map<std::string, std::string>& a) {
  const std::string ns = arg_or(a, "namespace", "");
  if (ns.empty()) return "";
  return ", filter=" + quoted("src.namespace == " + quoted(ns) + " or dst.namespace == " + quoted(ns));
}

std::string where(const std::map<std::string, std::string>& a) {
  const std::string ns = arg_or(a, "namespace", "");
  return (ns.empty() ? std::string("on this node") : "in the Kubernetes namespace " + quoted(ns)) + " since " +
         arg_or(a, "window", "-1h");
}

std::vector<Prompt> make_prompts() {
  const PromptArg ns{"namespace", "Only calls and flows to or from this Kubernetes namespace (default: all).", false};
  const PromptArg window{"window",
                         "How far back to look: a start time such as -15m, -1h, -24h or an RFC 3339 time (default -1h).",
                         false};
  std::vector<Prompt> p;
  p.push_back({"find_errors", "Find failing API calls",
               "Find the API calls that fail (server errors, failed RPCs, DNS errors, resets, timeouts), where and "
               "since when, and explain the likely cause.",
               {ns, window},
               [](const std::map<std::string, std::string>& a) {
                 const std::string w = arg_or(a, "window", "-1h");
                 const std::string errors = scoped(
                     a, "(http and response.status >= 500) or (grpc and response.grpc_status_name != \"OK\") or "
                        "(dns and response.rcode != \"NOERROR\") or flags contains \"reset\" or flags contains "
                        "\"timeout\" or flags contains \"protocol_error\"");
                 return "Find the failing API calls " + where(a) +
                        " with the tapwire tools, and explain what fails and why.\n\n"
                        "1. Call get_data_boundaries to see which times hold data; if nothing falls after start=" + w +
                        ", use the newest data there is and say so.\n"
                        "2. Call get_api_stats with group_by=\"status\", start=" + quoted(w) + ns_argument(a) +
                        " to see the calls and errors per protocol and status.\n"
                        "3. Call get_api_stats with group_by=\"endpoint\" and then group_by=\"workload\", the same "
                        "start and filter, and rank them by error_rate and errors.\n"
                        "4. Call list_api_calls with filter=" + quoted(errors) + ", start=" + quoted(w) +
                        ", limit=50 to see the failing calls, newest first.\n"
                        "5. Call get_api_call on a few representative ids (of each failing endpoint) to read their "
                        "request and response headers and bodies: error messages are usually there.\n"
                        "6. When a failure may be in the network, call list_l4_flows with filter=\"state == "
                        "\\\"refused\\\" or state == \\\"reset\\\" or retransmissions > 0\" and the same start.\n\n"
                        "Then report: which services and endpoints fail, how (status codes, error texts), since when "
                        "and how often (error rate), who calls them, and the likely cause. Cite call ids.";
               }});
  p.push_back({"latency_analysis", "Analyze API latency",
               "Find the slow endpoints and workloads, their latency percentiles, the slowest calls, and whether the "
               "network (RTT, retransmissions) or the server explains it.",
               {ns, window, {"threshold", "What counts as slow, a duration such as 200ms or 1.5s (default 500ms).", false}},
               [](const std::map<std::string, std::string>& a) {
                 const std::string w = arg_or(a, "window", "-1h"), th = arg_or(a, "threshold", "500ms");
                 const std::string all = scoped(a, "response != null");
                 return "Analyze the latency of the API calls " + where(a) + " with the tapwire tools.\n\n"
                        "1. Call get_data_boundaries to see which times hold data.\n"
                        "2. Call get_api_stats with group_by=\"endpoint\", start=" + quoted(w) + ", filter=" +
                        quoted(all) + ": compare duration_us p50, p90 and p99 (microseconds) per endpoint, and their "
                        "call counts.\n"
                        "3. Call get_api_stats with group_by=\"workload\" (the serving workloads), same start and "
                        "filter.\n"
                        "4. Call list_api_calls with filter=" + quoted(scoped(a, "duration > " + th)) + ", start=" +
                        quoted(w) + ", limit=50 to see the calls slower than " + th +
                        "; call get_api_call on a few to see what they asked and got (sizes, statuses).\n"
                        "5. Call list_l4_flows with sort=\"rtt\" and then sort=\"retransmissions\", start=" + quoted(w) +
                        ", limit=20, to see whether the network adds the time (handshake RTT, retransmissions).\n\n"
                        "Then report the slowest endpoints with their p50/p90/p99, whether the slowness is in the "
                        "server (long durations on healthy flows) or the network (high RTT, retransmissions), "
                        "outliers versus a general slowdown, and what to look at next. Cite call ids.";
               }});
  p.push_back({"show_topology", "Show the service topology",
               "Draw who talks to whom (workloads, namespaces, external services) with protocols, volumes and error "
               "rates.",
               {ns, window},
               [](const std::map<std::string, std::string>& a) {
                 const std::string w = arg_or(a, "window", "-1h"), nsv = arg_or(a, "namespace", "");
                 return "Show the service topology " + where(a) + " with the tapwire tools.\n\n"
                        "1. Call list_workloads to learn the pods, workloads and services" +
                        (nsv.empty() ? std::string() : " (keep those of namespace " + quoted(nsv) + " and their peers)") +
                        ".\n"
                        "2. Call get_service_map with level=\"workload\", start=" + quoted(w) +
                        (nsv.empty() ? std::string() : ", namespace=" + quoted(nsv)) +
                        ": its edges are who talks to whom, with protocols, flows, calls, errors and bytes.\n"
                        "3. Call get_l4_flow_summary with start=" + quoted(w) +
                        " for the totals by protocol and the top talkers and conversations.\n"
                        "4. Call get_api_stats with group_by=\"workload\", start=" + quoted(w) +
                        ns_argument(a) +
                        " for each serving workload's calls, error rate and latency.\n\n"
                        "Then draw the topology as a Mermaid flowchart (graph LR): one node per workload (grouped by "
                        "namespace) or external service, one edge per pair labelled with protocols and call or byte "
                        "volume; mark edges with errors. After it, list the busiest and the failing edges.";
               }});
  return p;
}

}  // namespace

// ------------------------------------------------------------- McpServer ---

struct McpServer::Impl {
  const Ctx& ctx;
  std::vector<Tool> tools;
  std::vector<Prompt> prompts;

  const Tool* tool(const std::string& name) const {
    for (const auto& t : tools)
      if (t.name == name) return &t;
    return nullptr;
  }

  json initialize(const json& params, McpSession& s) const {
    if (!params.is_object() || !params.contains("protocolVersion") || !params["protocolVersion"].is_string())
      throw RpcError(kInvalidParams, "initialize: give params.protocolVersion");
    const std::string asked = params["protocolVersion"].get<std::string>();
    s.version = kMcpVersions[0];
    for (const char* v : kMcpVersions)
      if (asked == v) s.version = v;
    return {{"protocolVersion", s.version},
            {"capabilities", {{"tools", {{"listChanged", false}}}, {"prompts", {{"listChanged", false}}}}},
            {"serverInfo", {{"name", "tapwire"}, {"title", "tapwire"}, {"version", TAPWIRE_VERSION}}},
            {"instructions",
             "tapwire captures this node's network traffic and dissects it into API calls (HTTP, gRPC, DNS, "
             "databases, queues) and L4 flows, named by Kubernetes identity (node " +
                 ctx.o.node +
                 "). Start with get_data_boundaries to see which times hold data; list_api_calls and get_api_stats "
                 "take filters in tapwire's query language (e.g. 'http and response.status >= 500'). Times are "
                 "RFC 3339, Unix seconds or relative ('-15m')."}};
  }

  json method(const std::string& m, const json& params, McpSession& s) const {
    if (m == "initialize") return initialize(params, s);
    if (m == "ping") return json::object();
    if (m == "tools/list") {
      json arr = json::array();
      for (const auto& t : tools) arr.push_back(t.to_json());
      return {{"tools", arr}};
    }
    if (m == "tools/call") {
      if (!params.is_object() || !params.contains("name") || !params["name"].is_string())
        throw RpcError(kInvalidParams, "tools/call: give params.name");
      const json args = params.contains("arguments") ? params["arguments"] : json::object();
      if (!args.is_object() && !args.is_null()) throw RpcError(kInvalidParams, "tools/call: arguments must be an object");
      return call(params["name"].get<std::string>(), args.is_null() ? json::object() : args);
    }
    if (m == "prompts/list") {
      json arr = json::array();
      for (const auto& p : prompts) {
        json args = json::array();
        for (const auto& a : p.args) args.push_back({{"name", a.name}, {"description", a.description}, {"required", a.required}});
        arr.push_back({{"name", p.name}, {"title", p.title}, {"description", p.description}, {"arguments", args}});
      }
      return {{"prompts", arr}};
    }
    if (m == "prompts/get") {
      if (!params.is_object() || !params.contains("name") || !params["name"].is_string())
        throw RpcError(kInvalidParams, "prompts/get: give params.name");
      return get_prompt(params["name"].get<std::string>(), params.value("arguments", json::object()));
    }
    throw RpcError(kMethodNotFound, "method not found: " + m);
  }

  json call(const std::string& name, const json& args) const {
    const Tool* t = tool(name);
    if (!t) {
      if (name == "delete_snapshot")
        throw RpcError(kInvalidParams, "delete_snapshot is not offered: start tapwire with --allow-destructive");
      throw RpcError(kInvalidParams, "unknown tool: " + name + " (see tools/list)");
    }
    json details = json::object();
    std::string message;
    try {
      const Params p = params_of(*t, args);
      json out = with_node(t->run(ctx, args, p), ctx.o.node);
      return {{"content", json::array({{{"type", "text"}, {"text", dump(out)}}})}, {"structuredContent", out}};
    } catch (const ToolError& e) {
      message = e.what();
      details = e.details;
    } catch (const ApiError& e) {
      // As the HTTP API answers it: its message, the filter's column, the status.
      message = e.what();
      details["status"] = e.status;
      if (e.column) {
        details["column"] = e.column;
        message += " (column " + std::to_string(e.column) + ")";
      }
    } catch (const snapshot::SnapshotError& e) {
      message = e.what();
    } catch (const cli::CliError& e) {
      message = e.what();
      details["status"] = 400;  // what the caller gave, as the HTTP API answers it
    } catch (const std::exception& e) {
      message = std::string("internal error: ") + e.what();
      std::fprintf(stderr, "tapwire mcp: %s: internal error: %s\n", name.c_str(), e.what());
    }
    details["error"] = message;
    return {{"content", json::array({{{"type", "text"}, {"text", name + " failed: " + message}}})},
            {"structuredContent", with_node(details, ctx.o.node)},
            {"isError", true}};
  }

  json get_prompt(const std::string& name, const json& args) const {
    const Prompt* p = nullptr;
    for (const auto& q : prompts)
      if (q.name == name) p = &q;
    if (!p) throw RpcError(kInvalidParams, "unknown prompt: " + name + " (see prompts/list)");
    if (!args.is_object() && !args.is_null()) throw RpcError(kInvalidParams, "prompts/get: arguments must be an object");
    std::map<std::string, std::string> a;
    if (args.is_object())
      for (const auto& [k, v] : args.items()) {
        const std::string& name_given = k;  // clang before 16 cannot capture a structured binding
        if (std::none_of(p->args.begin(), p->args.end(), [&](const PromptArg& x) { return x.name == name_given; }))
          throw RpcError(kInvalidParams, "prompt " + name + " takes no argument " + k);
        if (!v.is_string()) throw RpcError(kInvalidParams, "prompt arguments are strings: " + k);
        if (v.get<std::string>().size() > 256) throw RpcError(kInvalidParams, k + ": at most 256 characters");
        a[k] = v.get<std::string>();
      }
    for (const auto& x : p->args)
      if (x.required && arg_or(a, x.name, "").empty()) throw RpcError(kInvalidParams, "missing argument " + x.name);
    if (const std::string th = arg_or(a, "threshold", ""); !th.empty()) {
      // A duration of the query language: digits, maybe a fraction, a unit.
      const size_t unit = th.find_first_not_of("0123456789.");
      const std::string u = unit == std::string::npos ? "" : th.substr(unit);
      if (unit == 0 || (u != "ns" && u != "us" && u != "ms" && u != "s" && u != "m" && u != "h"))
        throw RpcError(kInvalidParams, "threshold: a duration such as 200ms or 1.5s");
    }
    return {{"description", p->description},
            {"messages", json::array({{{"role", "user"}, {"content", {{"type", "text"}, {"text", p->text(a)}}}}})}};
  }
};

McpServer::McpServer(const Ctx& ctx) : impl_(new Impl{ctx, make_tools(ctx.o.allow_destructive), make_prompts()}) {}
McpServer::~McpServer() = default;

json McpServer::tools() const {
  McpSession s;
  return impl_->method("tools/list", json::object(), s)["tools"];
}

json McpServer::call_tool(const std::string& name, const json& arguments) const {
  try {
    return impl_->call(name, arguments);
  } catch (const RpcError& e) {
    throw std::invalid_argument(e.what());
  }
}

json McpServer::prompts() const {
  McpSession s;
  return impl_->method("prompts/list", json::object(), s)["prompts"];
}

json McpServer::get_prompt(const std::string& name, const json& arguments) const {
  try {
    return impl_->get_prompt(name, arguments);
  } catch (const RpcError& e) {
    throw std::invalid_argument(e.what());
  }
}

std::optional<json> McpServer::handle(const json& msg, McpSession& s) const {
  if (msg.is_array()) {
    if (!mcp_version_has_batches(s.version))
      return rpc_error(nullptr, kInvalidRequest,
                       s.version.empty() ? "a batch before initialize: send initialize alone first"
                                         : "JSON-RPC batches are not part of MCP " + s.version + ": send one message at a time");
    if (msg.empty()) return rpc_error(nullptr, kInvalidRequest, "an empty batch");
    json out = json::array();
    for (const json& m : msg) {
      if (m.is_object() && m.value("method", "") == "initialize") {
        out.push_back(rpc_error(m.contains("id") ? m["id"] : json(nullptr), kInvalidRequest,
                                "initialize must not be part of a batch"));
        continue;
      }
      if (m.is_array()) {
        out.push_back(rpc_error(nullptr, kInvalidRequest, "a batch inside a batch"));
        continue;
      }
      if (auto r = handle(m, s)) out.push_back(std::move(*r));
    }
    if (out.empty()) return std::nullopt;  // notifications only
    return out;
  }
  if (!msg.is_object()) return rpc_error(nullptr, kInvalidRequest, "a message is a JSON object");
  // The id to answer with: a string or a number; null only when it cannot be told.
  json id = nullptr;
  const bool has_id = msg.contains("id");
  if (has_id) {
    if (msg["id"].is_string() || msg["id"].is_number_integer()) id = msg["id"];
    else return rpc_error(nullptr, kInvalidRequest, "id: a string or an integer");
  }
  if (msg.value("jsonrpc", json()) != "2.0") return rpc_error(id, kInvalidRequest, "jsonrpc must be \"2.0\"");
  if (!msg.contains("method")) return std::nullopt;  // a response to us: we send no requests
  if (!msg["method"].is_string()) return rpc_error(id, kInvalidRequest, "method: a string");
  const std::string m = msg["method"].get<std::string>();
  const json params = msg.contains("params") ? msg["params"] : json::object();
  if (!params.is_object() && !params.is_null()) return rpc_error(id, kInvalidParams, "params: an object");
  if (!has_id) {
    // Notifications get no answer, known or not.
    if (m == "notifications/initialized") s.initialized = true;
    return std::nullopt;
  }
  try {
    return rpc_result(id, impl_->method(m, params.is_null() ? json::object() : params, s));
  } catch (const RpcError& e) {
    return rpc_error(id, e.code, e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tapwire mcp: %s: internal error: %s\n", m.c_str(), e.what());
    return rpc_error(id, kInternalError, std::string("internal error: ") + e.what());
  }
}

std::optional<json> McpServer::handle_text(const std::string& text, McpSession& s) const {
  json msg = json::parse(text, nullptr, false);
  if (msg.is_discarded()) return rpc_error(nullptr, kParseError, "parse error: not JSON");
  return handle(msg, s);
}

std::unique_ptr<Ctx> make_mcp_context(ServeOptions o) {
  auto ctx = std::make_unique<Ctx>();
  ctx->o = std::move(o);
  ctx->control_socket = ctx->o.control_socket.empty() ? ctx->o.data_dir + "/control.sock" : ctx->o.control_socket;
  ctx->jobs = std::make_unique<Jobs>(*ctx);
  return ctx;
}

// ------------------------------------------------------------------ stdio ---

namespace {

bool write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

constexpr size_t kMaxLine = 4u << 20;

}  // namespace

int run_mcp_stdio(const McpServer& server, int in_fd, int out_fd) {
  // The stop signals, as a descriptor polled beside the input: a signal
  // between two messages ends the loop, and the caller's destructors (the
  // delayed dissections' cancel) run as on end of input.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGHUP);
  const int sfd = ::signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK);
  McpSession session;
  std::string buf;
  bool skipping = false;  // the rest of a line over kMaxLine
  bool open = true;  // false: the output is gone
  char chunk[65536];
  auto answer = [&](const std::optional<json>& r) {
    if (r && !write_all(out_fd, dump(*r) + "\n")) open = false;
  };
  while (open) {
    pollfd fds[2] = {{in_fd, POLLIN, 0}, {sfd, POLLIN, 0}};
    const int n = ::poll(fds, sfd >= 0 ? 2 : 1, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (sfd >= 0 && (fds[1].revents & POLLIN)) break;
    if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    const ssize_t got = ::read(in_fd, chunk, sizeof chunk);
    if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (got <= 0) break;  // end of input: the client is gone
    size_t start = 0;
    for (size_t i = 0; i < static_cast<size_t>(got); i++) {
      if (chunk[i] != '\n') continue;
      if (!skipping) {
        buf.append(chunk + start, i - start);
        if (!buf.empty() && buf.back() == '\r') buf.pop_back();
        if (buf.find_first_not_of(" \t") != std::string::npos) answer(server.handle_text(buf, session));
      }
      skipping = false;
      buf.clear();
      start = i + 1;
    }
    if (!skipping) buf.append(chunk + start, static_cast<size_t>(got) - start);
    if (buf.size() > kMaxLine) {
      answer(rpc_error(nullptr, kInvalidRequest, "message over 4 MiB"));
      buf.clear();
      skipping = true;
    }
  }
  if (sfd >= 0) ::close(sfd);
  return 0;
}

// ------------------------------------------------------------------- HTTP ---

namespace {

// POST /mcp (Streamable HTTP): one JSON-RPC message (or a batch, where the
// version has them) per request, answered as application/json; 202 with no
// body for notifications. A session (Mcp-Session-Id, given at initialize)
// keeps the version agreed; a client may also go without one, sending
// MCP-Protocol-Version (2025-03-26 when it sends none, as the spec says).
class HttpMcp {
 public:
  explicit HttpMcp(const Ctx& ctx) : server_(ctx) {
    names_ = ctx.o.allowed_hosts;
    names_.push_back(ctx.o.node);
  }

  void post(const httplib::Request& req, httplib::Response& res) {
    if (!origin_ok(req)) return fail(res, 403, kInvalidRequest, "Origin " + req.get_header_value("Origin") + " is not this server");
    // JSON only: a cross-site form post cannot act on the server.
    if (req.get_header_value("Content-Type").rfind("application/json", 0) != 0)
      return fail(res, 415, kInvalidRequest, "send the message as Content-Type: application/json");
    const std::string header_version = req.get_header_value("MCP-Protocol-Version");
    if (!header_version.empty() && std::none_of(std::begin(kMcpVersions), std::end(kMcpVersions),
                                                [&](const char* v) { return header_version == v; }))
      return fail(res, 400, kInvalidRequest, "unsupported MCP-Protocol-Version " + header_version);
    json msg = json::parse(req.body, nullptr, false);
    if (msg.is_discarded()) return fail(res, 400, kParseError, "parse error: not JSON");
    const bool init = msg.is_object() && msg.value("method", json()) == "initialize";
    const std::string sid = req.get_header_value("Mcp-Session-Id");
    McpSession s;
    if (!sid.empty() && !init) {
      std::lock_guard lock(m_);
      auto it = sessions_.find(sid);
      if (it == sessions_.end()) return fail(res, 404, -32001, "session not found: initialize again");
      it->second.used = std::chrono::steady_clock::now();
      s = it->second.s;
    } else if (!init) {
      s.version = header_version.empty() ? "2025-03-26" : header_version;
    }
    auto answer = server_.handle(msg, s);
    if (init && !s.version.empty() && answer && answer->contains("result")) {
      const std::string id = new_session(s);
      res.set_header("Mcp-Session-Id", id);
    } else if (!sid.empty() && !init) {
      std::lock_guard lock(m_);
      if (auto it = sessions_.find(sid); it != sessions_.end()) it->second.s.initialized |= s.initialized;
    }
    if (!answer) {
      res.status = 202;
      return;
    }
    res.status = 200;
    res.set_content(dump(*answer), "application/json");
  }

  void remove(const httplib::Request& req, httplib::Response& res) {
    const std::string sid = req.get_header_value("Mcp-Session-Id");
    std::lock_guard lock(m_);
    if (sid.empty() || !sessions_.erase(sid)) return fail(res, 404, -32001, "session not found");
    res.status = 204;
  }

  static void fail(httplib::Response& res, int status, int code, const std::string& message) {
    res.status = status;
    res.set_content(dump(rpc_error(nullptr, code, message)), "application/json");
  }

 private:
  struct Entry {
    McpSession s;
    std::chrono::steady_clock::time_point used;
  };
  static constexpr size_t kMaxSessions = 256;

  // The Origin a browser sends names this server (as the Host must), so that
  // a page elsewhere cannot drive the tools through a user's browser.
  bool origin_ok(const httplib::Request& req) const {
    if (!req.has_header("Origin")) return true;
    const std::string o = req.get_header_value("Origin");
    const auto scheme = o.find("://");
    if (scheme == std::string::npos) return false;
    return host_allowed(o.substr(scheme + 3), names_);
  }

  std::string new_session(const McpSession& s) {
    std::random_device rd;  // the kernel's randomness: ids are not guessed from each other
    char id[33];
    std::snprintf(id, sizeof id, "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
    std::lock_guard lock(m_);
    if (sessions_.size() >= kMaxSessions) {
      // The one unused longest goes: a client that comes back gets 404 and initializes again.
      auto oldest = sessions_.begin();
      for (auto it = sessions_.begin(); it != sessions_.end(); ++it)
        if (it->second.used < oldest->second.used) oldest = it;
      sessions_.erase(oldest);
    }
    sessions_[id] = Entry{s, std::chrono::steady_clock::now()};
    return id;
  }

  McpServer server_;
  std::vector<std::string> names_;
  std::mutex m_;
  std::map<std::string, Entry> sessions_;
};

}  // namespace

void add_mcp_routes(httplib::Server& s, Ctx& ctx) {
  auto mcp = std::make_shared<HttpMcp>(ctx);
  s.Post("/mcp", [mcp](const httplib::Request& req, httplib::Response& res) { mcp->post(req, res); });
  // No stream of server-initiated messages: this server sends none.
  s.Get("/mcp", [](const httplib::Request&, httplib::Response& res) {
    res.set_header("Allow", "POST, DELETE");
    HttpMcp::fail(res, 405, kInvalidRequest, "GET /mcp: this server opens no event stream; POST messages");
  });
  s.Delete("/mcp", [mcp](const httplib::Request& req, httplib::Response& res) { mcp->remove(req, res); });
}

}  // namespace tapwire::serve
