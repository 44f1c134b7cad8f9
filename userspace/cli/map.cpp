// tapwire map: the service map, from flows (and, with a dissection DB, the
// calls over them): nodes are namespaces, workloads or pods; addresses
// without a pod are external nodes named by DNS, the node's own processes
// one `node` node; edges go client -> server.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <vector>
#include <string>
#include <sys/wait.h>

#include "call_db.hpp"
#include "commands.hpp"
#include "flow_source.hpp"
#include "output_file.hpp"
#include "views.hpp"

namespace tapwire::cli {
namespace {

using json = nlohmann::ordered_json;

struct MapOptions {
  FlowSourceOptions src;
  std::string level = "workload", namespace_, format = "json", output = "-";
};

struct MapNode {
  std::string id, label, kind;  // kind: namespace, workload, pod, node, external
  std::string name, namespace_;  // the namespace's, workload's, pod's or node's name; external: first DNS name or IP
  std::string workload_kind;
  std::vector<std::string> names;  // external: its DNS names
  std::string ip;  // external
  bool external = false;
};

struct MapEdge {
  std::set<std::string> protocols;
  uint64_t flows = 0, calls = 0, errors = 0, bytes = 0, packets = 0;
};

uint64_t dir_num(const json& f, const char* dir, const char* k) {
  auto d = f.find(dir);
  if (d == f.end() || !d->is_object()) return 0;
  auto v = d->find(k);
  return v != d->end() && v->is_number() ? v->get<uint64_t>() : 0;
}

MapNode node_of(const json& e, const std::string& level, const std::string& capture_node) {
  MapNode n;
  const std::string ns = json_str(e, "namespace"), pod = json_str(e, "pod");
  std::string wk, wn;
  if (auto w = e.find("workload"); w != e.end() && w->is_object()) {
    wk = json_str(*w, "kind");
    wn = json_str(*w, "name");
  }
  if (!ns.empty() || !pod.empty()) {
    n.namespace_ = ns;
    if (level == "namespace") {
      n.kind = "namespace";
      n.id = "ns:" + ns;
      n.label = n.name = ns;
    } else if (level == "workload" && !wn.empty() && wk != "Node") {
      n.kind = "workload";
      n.id = "wl:" + ns + "/" + wk + "/" + wn;
      n.label = ns + "/" + wn;
      n.name = wn;
      n.workload_kind = wk;
    } else {
      n.kind = "pod";
      n.id = "pod:" + ns + "/" + pod;
      n.label = ns + "/" + pod;
      n.name = pod;
    }
    return n;
  }
  // A process of the node itself: its identity names a process but no pod.
  auto p = e.find("process");
  if ((p != e.end() && p->is_object()) || wk == "Node") {
    std::string node = json_str(e, "node");
    if (node.empty()) node = capture_node;
    n.kind = "node";
    n.id = "node:" + node;
    n.name = node.empty() ? "node" : node;
    n.label = node.empty() ? "node" : "node " + node;
    return n;
  }
  n.kind = "external";
  n.external = true;
  n.ip = json_str(e, "ip");
  auto names = e.find("names");
  if (names != e.end() && names->is_array() && !names->empty()) {
    for (auto& x : *names)
      if (x.is_string()) n.names.push_back(x.get<std::string>());
    n.label = n.names.front();
    n.id = "dns:" + n.label;
  } else {
    n.label = n.ip;
    n.id = "ip:" + n.label;
  }
  n.name = n.label;
  return n;
}

std::string dot_quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out + "\"";
}

std::string to_dot(const std::map<std::string, MapNode>& nodes, const std::map<std::pair<std::string, std::string>, MapEdge>& edges) {
  std::string out = "digraph tapwire {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fillcolor=\"#e8f0fe\"];\n";
  for (auto& [id, n] : nodes) {
    out += "  " + dot_quote(id) + " [label=" + dot_quote(n.label);
    if (n.external) out += ", shape=ellipse, style=dashed, fillcolor=white";
    else if (n.kind == "node") out += ", shape=component, fillcolor=\"#f1f3f4\"";
    out += "];\n";
  }
  for (auto& [k, e] : edges) {
    std::string protos;
    for (auto& p : e.protocols) protos += (protos.empty() ? "" : ",") + p;
    std::string label = protos + "\\n" + std::to_string(e.flows) + " flows";
    if (e.calls) label += ", " + std::to_string(e.calls) + " calls";
    if (e.errors) label += ", " + std::to_string(e.errors) + " errors";
    out += "  " + dot_quote(k.first) + " -> " + dot_quote(k.second) + " [label=\"" + label + "\"";
    if (e.errors) out += ", color=red";
    out += "];\n";
  }
  return out + "}\n";
}

using MapEdges = std::map<std::pair<std::string, std::string>, MapEdge>;

struct MapGraph {
  std::map<std::string, MapNode> nodes;
  MapEdges edges;
  LoadedFlows source;
};

MapGraph build_graph(const FlowSourceOptions& src, const std::string& level, const std::string& namespace_) {
  MapGraph g;
  auto& nodes = g.nodes;
  auto& edges = g.edges;
  std::map<std::pair<std::string, std::string>, std::set<std::string>> l4_of;  // each edge's tcp/udp
  // (client ip, server ip, server port) -> the edge its flows went to, for the calls
  std::map<std::tuple<std::string, std::string, int>, std::pair<std::string, std::string>> tuple_edge;
  LoadedFlows lf = load_flows(src, [&](const FlowRow& r) {
    const json& f = r.rec;
    const std::string capture_node = json_str(f, "node");
    MapNode c = node_of(f["client"], level, capture_node), s = node_of(f["server"], level, capture_node);
    if (!namespace_.empty() && c.namespace_ != namespace_ && s.namespace_ != namespace_) return;
    nodes.emplace(c.id, c);
    nodes.emplace(s.id, s);
    MapEdge& e = edges[{c.id, s.id}];
    e.flows++;
    e.bytes += dir_num(f, "client_to_server", "bytes") + dir_num(f, "server_to_client", "bytes");
    e.packets += dir_num(f, "client_to_server", "packets") + dir_num(f, "server_to_client", "packets");
    tuple_edge[{json_str(f["client"], "ip"), json_str(f["server"], "ip"), f["server"].value("port", 0)}] = {c.id, s.id};
    l4_of[{c.id, s.id}].insert(json_str(f, "protocol"));
  });
  // L7 protocols and calls from the DB's calls between the same ends; edges
  // without any keep their L4 protocols.
  std::set<std::pair<std::string, std::string>> with_calls;
  if (!lf.db_path.empty()) {
    try {
      dissect::CallDb db(lf.db_path, true);
      for (auto& ce : db.call_edges(lf.from_ns, lf.to_ns)) {
        auto it = tuple_edge.find({ce.client_ip, ce.server_ip, ce.server_port});
        if (it == tuple_edge.end()) continue;
        MapEdge& e = edges[it->second];
        e.protocols.insert(ce.protocol);
        e.calls += ce.calls;
        e.errors += ce.errors;
        with_calls.insert(it->second);
      }
    } catch (const std::exception& ex) {
      throw CliError("cannot read calls", lf.db_path, ex.what());
    }
  }
  for (auto& [k, e] : edges)
    if (!with_calls.count(k))
      for (auto& p : l4_of[k]) e.protocols.insert(p);
  g.source = std::move(lf);
  return g;
}

json graph_json(const MapGraph& g, const std::string& level) {
  json j = {{"level", level}, {"nodes", json::array()}, {"edges", json::array()}};
  for (auto& [id, n] : g.nodes) {
    json jn = {{"id", id}, {"kind", n.kind}, {"name", n.name}, {"label", n.label}, {"external", n.external}};
    if (!n.namespace_.empty()) jn["namespace"] = n.namespace_;
    if (!n.workload_kind.empty()) jn["workload_kind"] = n.workload_kind;
    if (n.external) {
      jn["names"] = n.names;
      jn["ip"] = n.ip;
    }
    j["nodes"].push_back(std::move(jn));
  }
  for (auto& [k, e] : g.edges)
    j["edges"].push_back({{"source", k.first}, {"target", k.second}, {"protocols", e.protocols}, {"flows", e.flows},
                          {"calls", e.calls}, {"errors", e.errors}, {"bytes", e.bytes}, {"packets", e.packets}});
  return j;
}

int run_map(const MapOptions& o) {
  const MapGraph g = build_graph(o.src, o.level, o.namespace_);
  const auto& nodes = g.nodes;
  const auto& edges = g.edges;
  const LoadedFlows& lf = g.source;
  std::string text;
  if (o.format == "json") {
    text = graph_json(g, o.level).dump(2, ' ', false, json::error_handler_t::replace) + "\n";
  } else {
    text = to_dot(nodes, edges);
  }
  if (o.format == "svg") {
    if (system("command -v dot >/dev/null 2>&1") != 0)
      throw CliError("cannot draw SVG", "dot", "Graphviz is not installed (apt-get install graphviz), or use --format dot");
    char tmpl[] = "/tmp/tapwire-map-XXXXXX";
    int fd = mkstemp(tmpl);
    if (fd < 0) throw CliError("cannot write a temporary file", tmpl, std::strerror(errno));
    FILE* fp = fdopen(fd, "w");
    std::fwrite(text.data(), 1, text.size(), fp);
    std::fclose(fp);
    std::string cmd = std::string("dot -Tsvg ") + tmpl;
    FILE* p = popen(cmd.c_str(), "r");
    std::string svg;
    char buf[65536];
    size_t n;
    while (p && (n = std::fread(buf, 1, sizeof buf, p)) > 0) svg.append(buf, n);
    int rc = p ? pclose(p) : -1;
    unlink(tmpl);
    if (rc != 0) throw CliError("Graphviz failed", "dot -Tsvg", "exit status " + std::to_string(rc));
    text = svg;
  }
  OutputFile out(o.output);
  std::fwrite(text.data(), 1, text.size(), out.fp());
  out.commit();
  if (nodes.empty()) std::fprintf(stderr, "tapwire: no flows in %s\n", lf.source.c_str());
  return 0;
}

constexpr const char* kMapHelp = R"(The map: nodes and edges.
  nodes  a namespace, workload or pod (--level); an address with no pod or namespace identity is an
         external node named by the DNS answers seen on the node (else its IP); processes of the
         node itself (identity without a pod) are one `node` node
  edges  client -> server, from flows: protocols (the calls' protocols when a dissection DB is at
         hand: --db, or DATA_DIR/dissection.db; tcp/udp for flows without calls), flows, calls,
         errors (HTTP >= 500, gRPC status != 0, DNS rcode != NOERROR, other protocols' error
         status, calls flagged protocol_error, reset or timeout), bytes, packets
Formats: json (default), dot (Graphviz: external nodes dashed ellipses), svg (runs Graphviz's dot).)";

}  // namespace

nlohmann::ordered_json map_json(const FlowSourceOptions& src, const std::string& level, const std::string& namespace_) {
  return graph_json(build_graph(src, level, namespace_), level);
}

void register_map(CLI::App& app, Action& action) {
  auto o = std::make_shared<MapOptions>();
  CLI::App* sub = app.add_subcommand("map", "Draw who talks to whom: namespaces, workloads or pods and their traffic");
  sub->footer(kMapHelp);
  add_flow_source_options(*sub, o->src);
  sub->add_option("--level", o->level, "namespace, workload or pod")
      ->check(CLI::IsMember({"namespace", "workload", "pod"}))
      ->capture_default_str();
  sub->add_option("--namespace", o->namespace_, "only edges with an end in this namespace");
  sub->add_option("--format", o->format, "json, dot or svg")->check(CLI::IsMember({"json", "dot", "svg"}))->capture_default_str();
  sub->add_option("-o,--output", o->output, "file to write ('-' for standard output)")->capture_default_str();
  sub->callback([o, &action] { action = [o] { return run_map(*o); }; });
}

}  // namespace tapwire::cli
