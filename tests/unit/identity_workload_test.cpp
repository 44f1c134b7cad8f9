// Workload objects (userspace/identity/workload_object.cpp): the JSON schema
// of docs/IDENTITY.md, its bounds, and what is refused.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "workload_object.hpp"

namespace {

using namespace tapwire::identity;
using nlohmann::json;

const std::string kId1 = std::string(64, 'a');
const std::string kId2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

IpKey ip(const char* text) {
  auto k = IpKey::parse(text);
  EXPECT_TRUE(k.has_value()) << text;
  return k.value_or(IpKey{});
}

Workload upsert(auto obj) { return Workload{WorkloadOp::Upsert, std::move(obj)}; }
Workload del(auto obj) { return Workload{WorkloadOp::Delete, std::move(obj)}; }

PodObject full_pod() {
  PodObject p;
  p.uid = "5b9c2a1e-3f4d-4e6a-9b8c-7d6e5f4a3b2c";
  p.namespace_ = "shop";
  p.name = "api-7d9c-x2x";
  p.node = "node-1";
  p.phase = "Running";
  p.host_network = false;
  p.ips = {ip("10.244.1.7"), ip("fd00:244::7")};
  p.labels = {{"app", "api"}, {"pod-template-hash", "7d9c"}, {"tier", "backend"}};  // by key, as JSON keeps them
  p.owner_kind = "Deployment";
  p.owner_name = "api";
  p.containers = {{"api", kId1, "containerd"}, {"sidecar", "", ""}};
  return p;
}

// A pod named only (what a delete carries).
PodObject pod_ref(std::string uid, std::string ns = "", std::string name = "") {
  PodObject p;
  p.uid = std::move(uid);
  p.namespace_ = std::move(ns);
  p.name = std::move(name);
  return p;
}

PodObject minimal_pod() {
  PodObject p;
  p.uid = "u1";
  p.namespace_ = "default";
  p.name = "p";
  return p;
}

ServiceObject full_service() {
  ServiceObject s;
  s.uid = "svc-uid";
  s.namespace_ = "shop";
  s.name = "api";
  s.type = "ClusterIP";
  s.cluster_ips = {ip("10.96.0.12"), ip("fd00:96::12")};
  s.ports = {{"http", 80, "TCP"}, {"", 53, "UDP"}, {"", 0, ""}};
  return s;
}

EndpointSliceObject full_slice() {
  EndpointSliceObject e;
  e.uid = "slice-uid";
  e.namespace_ = "shop";
  e.name = "api-abcde";
  e.service = "api";
  e.addresses = {ip("10.244.1.7"), ip("10.244.2.9")};
  e.ports = {{"http", 8080, "TCP"}};
  return e;
}

NodeObject full_node() { return NodeObject{"node-uid", "node-1", {ip("10.0.0.5"), ip("fd00::5")}}; }

std::optional<Workload> parse(const std::string& text, std::string* error = nullptr) {
  return parse_workload(text, error);
}

// Parses what must be refused; returns the reason.
std::string refused(const std::string& text) {
  std::string error;
  auto w = parse_workload(text, &error);
  EXPECT_FALSE(w.has_value()) << text.substr(0, 200);
  EXPECT_FALSE(error.empty());
  return error;
}

void expect_round_trip(const Workload& w) {
  const std::string text = to_json(w);
  SCOPED_TRACE(text.substr(0, 300));
  std::string error;
  auto back = parse_workload(text, &error);
  ASSERT_TRUE(back.has_value()) << error;
  EXPECT_EQ(*back, w);
  // Normalized: serializing again gives the same bytes.
  EXPECT_EQ(to_json(*back), text);
}

// ------------------------------------------------------------ round trip --

TEST(WorkloadObject, EveryKindRoundTripsFullAndMinimal) {
  expect_round_trip(upsert(full_pod()));
  expect_round_trip(upsert(minimal_pod()));
  PodObject host = minimal_pod();
  host.host_network = true;
  host.ips = {ip("10.0.0.5")};
  expect_round_trip(upsert(host));
  expect_round_trip(upsert(full_service()));
  expect_round_trip(upsert(ServiceObject{"s", "ns", "svc", "", {}, {}}));
  expect_round_trip(upsert(full_slice()));
  expect_round_trip(upsert(EndpointSliceObject{"e", "ns", "slice", "", {}, {}}));
  expect_round_trip(upsert(full_node()));
  expect_round_trip(upsert(NodeObject{"n", "node-2", {}}));
  expect_round_trip(upsert(SelfObject{"node-1", {ip("10.0.0.5"), ip("fd00::5")}}));
  expect_round_trip(upsert(SelfObject{"node-1", {}}));
  expect_round_trip(upsert(SyncObject{"pods", "synced", ""}));
  expect_round_trip(upsert(SyncObject{"pods", "lost", "401 Unauthorized: check the service account token"}));
  expect_round_trip(upsert(StatsObject{{{"pods/list", 1}, {"pods/watch", 3}}, 120, 2}));
  expect_round_trip(upsert(StatsObject{}));
}

TEST(WorkloadObject, DeletesRoundTrip) {
  expect_round_trip(del(pod_ref("u1", "shop", "api-1")));
  expect_round_trip(del(pod_ref("u1")));  // a delete needs only the uid
  expect_round_trip(del(ServiceObject{"s", "shop", "api", "", {}, {}}));
  expect_round_trip(del(EndpointSliceObject{"e", "shop", "api-x", "", {}, {}}));
  expect_round_trip(del(NodeObject{"n", "node-1", {}}));
}

TEST(WorkloadObject, DeleteCarriesNoState) {
  // Whatever a delete says besides its identity is not kept.
  PodObject p = full_pod();
  auto w = parse(to_json(del(p)));
  ASSERT_TRUE(w);
  EXPECT_EQ(w->op, WorkloadOp::Delete);
  const auto& back = std::get<PodObject>(w->object);
  EXPECT_EQ(back.uid, p.uid);
  EXPECT_EQ(back.name, p.name);
  EXPECT_EQ(back.namespace_, p.namespace_);
  EXPECT_TRUE(back.ips.empty());
  EXPECT_TRUE(back.containers.empty());
  EXPECT_TRUE(back.labels.empty());
  EXPECT_EQ(json::parse(to_json(del(p))), json::parse(R"({"v":1,"kind":"Pod","op":"delete","uid":")" + p.uid +
                                                      R"(","namespace":"shop","name":"api-7d9c-x2x"})"));
}

TEST(WorkloadObject, DocumentExamplesParse) {
  // The examples of docs/IDENTITY.md, with the elided values filled in.
  auto self = parse(R"({"v":1,"kind":"Self","node":"node-1","addresses":["10.0.0.5","fd00::5"]})");
  ASSERT_TRUE(self);
  EXPECT_EQ(*self, upsert(SelfObject{"node-1", {ip("10.0.0.5"), ip("fd00::5")}}));

  auto pod = parse(R"({"v":1,"kind":"Pod","op":"upsert","uid":"5b9","namespace":"shop","name":"api-7d9c-x2x",)"
                   R"("node":"node-1","hostNetwork":false,"ips":["10.244.1.7"],"phase":"Running",)"
                   R"("labels":{"app":"api"},"owner":{"kind":"Deployment","name":"api"},)"
                   R"("containers":[{"name":"api","id":")" +
                   kId2 + R"(","runtime":"containerd"}]})");
  ASSERT_TRUE(pod);
  PodObject want;
  want.uid = "5b9";
  want.namespace_ = "shop";
  want.name = "api-7d9c-x2x";
  want.node = "node-1";
  want.phase = "Running";
  want.ips = {ip("10.244.1.7")};
  want.labels = {{"app", "api"}};
  want.owner_kind = "Deployment";
  want.owner_name = "api";
  want.containers = {{"api", kId2, "containerd"}};
  EXPECT_EQ(*pod, upsert(want));
  EXPECT_EQ(pod->state_key(), "Pod/5b9");
  EXPECT_STREQ(pod->kind(), "Pod");

  auto svc = parse(R"({"v":1,"kind":"Service","op":"upsert","uid":"s1","namespace":"shop","name":"api",)"
                   R"("type":"ClusterIP","clusterIPs":["10.96.0.12"],"ports":[{"name":"http","port":80,"protocol":"TCP"}]})");
  ASSERT_TRUE(svc);
  EXPECT_EQ(*svc, upsert(ServiceObject{"s1", "shop", "api", "ClusterIP", {ip("10.96.0.12")}, {{"http", 80, "TCP"}}}));
  EXPECT_EQ(svc->state_key(), "Service/s1");

  auto es = parse(R"({"v":1,"kind":"EndpointSlice","op":"upsert","uid":"e1","namespace":"shop","name":"api-abcde",)"
                  R"("service":"api","addresses":["10.244.1.7"],"ports":[{"name":"http","port":8080,"protocol":"TCP"}]})");
  ASSERT_TRUE(es);
  EXPECT_EQ(*es, upsert(EndpointSliceObject{"e1", "shop", "api-abcde", "api", {ip("10.244.1.7")}, {{"http", 8080, "TCP"}}}));

  auto node = parse(R"({"v":1,"kind":"Node","op":"upsert","uid":"n1","name":"node-1","addresses":["10.0.0.5"]})");
  ASSERT_TRUE(node);
  EXPECT_EQ(*node, upsert(NodeObject{"n1", "node-1", {ip("10.0.0.5")}}));

  auto lost = parse(R"({"v":1,"kind":"Sync","resource":"pods","state":"lost","error":"401 Unauthorized"})");
  ASSERT_TRUE(lost);
  EXPECT_EQ(*lost, upsert(SyncObject{"pods", "lost", "401 Unauthorized"}));
  EXPECT_EQ(lost->state_key(), "");  // an event, not state

  auto stats = parse(R"({"v":1,"kind":"Stats","requests":{"pods/list":1,"pods/watch":3},"events":120,"relists":0})");
  ASSERT_TRUE(stats);
  EXPECT_EQ(*stats, upsert(StatsObject{{{"pods/list", 1}, {"pods/watch", 3}}, 120, 0}));
  EXPECT_EQ(stats->state_key(), "");
  EXPECT_EQ(self->state_key(), "Self");

  auto gone = parse(R"({"v":1,"kind":"Pod","op":"delete","uid":"5b9","namespace":"shop","name":"api-7d9c-x2x"})");
  ASSERT_TRUE(gone);
  EXPECT_EQ(*gone, del(pod_ref("5b9", "shop", "api-7d9c-x2x")));
}

TEST(WorkloadObject, UnknownFieldsAndNullsAreIgnored) {
  // A later schema may add fields; null is as good as absent.
  auto w = parse(R"({"v":1,"kind":"Pod","op":"upsert","uid":"u","namespace":"n","name":"p","future":{"x":[1,2]},)"
                 R"("node":null,"ips":null,"labels":null,"owner":null,"containers":null,"hostNetwork":null})");
  ASSERT_TRUE(w);
  EXPECT_EQ(*w, upsert(pod_ref("u", "n", "p")));
  // No op means upsert.
  auto n = parse(R"({"v":1,"kind":"Node","uid":"x","name":"node-9"})");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->op, WorkloadOp::Upsert);
}

TEST(WorkloadObject, InvalidUtf8StillSerializes) {
  // Invalid UTF-8 cannot come from JSON, but an object built in code must
  // still give a record: bad bytes become U+FFFD.
  PodObject p = minimal_pod();
  p.name = "api-\xff\xfe-x";
  p.labels = {{"k\xc3", "v\x80"}};
  std::string text;
  ASSERT_NO_THROW(text = to_json(upsert(p)));
  std::string error;
  auto back = parse_workload(text, &error);
  ASSERT_TRUE(back) << error;
  const auto& q = std::get<PodObject>(back->object);
  EXPECT_EQ(q.name, "api-\xEF\xBF\xBD\xEF\xBF\xBD-x");
  ASSERT_EQ(q.labels.size(), 1u);
  EXPECT_EQ(q.labels[0].first, "k\xEF\xBF\xBD");
  EXPECT_EQ(q.labels[0].second, "v\xEF\xBF\xBD");
  // And what arrives as JSON with invalid UTF-8 is refused.
  refused("{\"v\":1,\"kind\":\"Node\",\"uid\":\"x\",\"name\":\"a\xff\"}");
}

// ---------------------------------------------------------------- bounds --

json base(const char* kind) {
  json o = {{"v", 1}, {"kind", kind}, {"op", "upsert"}, {"uid", "u"}, {"namespace", "ns"}, {"name", "n"}};
  if (std::string(kind) == "Self") o = {{"v", 1}, {"kind", "Self"}, {"node", "node-1"}};
  if (std::string(kind) == "Node") o.erase("namespace");
  return o;
}

// `o` accepted as is, and refused with `more` applied, with an error that
// starts with "<prefix>".
void at_limit(const json& ok, const json& over, const std::string& prefix) {
  std::string error;
  EXPECT_TRUE(parse_workload(ok.dump(), &error)) << prefix << ": " << error;
  const std::string why = refused(over.dump());
  EXPECT_EQ(why.substr(0, prefix.size()), prefix) << why;
}

TEST(WorkloadObject, NamesAtMost253Bytes) {
  const std::string n253(253, 'a'), n254(254, 'a');
  for (const char* kind : {"Pod", "Service", "EndpointSlice"})
    for (const char* f : {"uid", "namespace", "name"}) {
      json ok = base(kind), over = base(kind);
      ok[f] = n253;
      over[f] = n254;
      at_limit(ok, over, std::string(kind) + ": " + f + ": longer than 253");
    }
  for (const char* f : {"uid", "name"}) {
    json ok = base("Node"), over = base("Node");
    ok[f] = n253;
    over[f] = n254;
    at_limit(ok, over, std::string("Node: ") + f + ": longer than 253");
  }
  json ok = base("Pod"), over = base("Pod");
  ok["node"] = n253;
  over["node"] = n254;
  at_limit(ok, over, "Pod: node: longer than 253");
  ok = base("EndpointSlice"), over = base("EndpointSlice");
  ok["service"] = n253;
  over["service"] = n254;
  at_limit(ok, over, "EndpointSlice: service: longer than 253");
  ok = base("Self"), over = base("Self");
  ok["node"] = n253;
  over["node"] = n254;
  at_limit(ok, over, "Self: node: longer than 253");
  // Nested names are named by their path.
  ok = base("Pod"), over = base("Pod");
  ok["containers"] = json::array({{{"name", n253}}});
  over["containers"] = json::array({{{"name", "x"}}, {{"name", n254}}});
  at_limit(ok, over, "Pod: containers[1].name: longer than 253");
  ok = base("Pod"), over = base("Pod");
  ok["owner"] = {{"kind", "Deployment"}, {"name", n253}};
  over["owner"] = {{"kind", "Deployment"}, {"name", n254}};
  at_limit(ok, over, "Pod: owner.name: longer than 253");
  ok = base("Service"), over = base("Service");
  ok["ports"] = json::array({{{"port", 1}, {"name", n253}}});
  over["ports"] = json::array({{{"port", 1}, {"name", n254}}});
  at_limit(ok, over, "Service: ports[0].name: longer than 253");
}

TEST(WorkloadObject, LabelsAtMost64WithValuesOf1024) {
  json ok = base("Pod"), over = base("Pod");
  for (int i = 0; i < 64; i++) ok["labels"]["k" + std::to_string(i)] = "v";
  over["labels"] = ok["labels"];
  over["labels"]["one-more"] = "v";
  at_limit(ok, over, "Pod: labels: more than 64");
  auto w = parse(ok.dump());
  ASSERT_TRUE(w);
  EXPECT_EQ(std::get<PodObject>(w->object).labels.size(), 64u);

  ok = base("Pod"), over = base("Pod");
  ok["labels"] = {{"app", std::string(1024, 'v')}};
  over["labels"] = {{"app", std::string(1025, 'v')}};
  at_limit(ok, over, "Pod: labels.app: longer than 1024");

  // Keys: a DNS prefix (253), '/', and a name (63) at most.
  ok = base("Pod"), over = base("Pod");
  ok["labels"] = {{std::string(317, 'k'), "v"}};
  over["labels"] = {{std::string(318, 'k'), "v"}};
  at_limit(ok, over, "Pod: labels: a key longer than 317");
}

TEST(WorkloadObject, AddressesAtMost64) {
  auto list = [](int n, int base3) {
    json a = json::array();
    for (int i = 0; i < n; i++) a.push_back("10." + std::to_string(base3) + "." + std::to_string(i / 250) + "." + std::to_string(i % 250 + 1));
    return a;
  };
  struct Case {
    const char* kind;
    const char* field;
  };
  for (auto [kind, field] : {Case{"Pod", "ips"}, Case{"Service", "clusterIPs"}, Case{"Node", "addresses"},
                             Case{"Self", "addresses"}}) {
    json ok = base(kind), over = base(kind);
    ok[field] = list(64, 1);
    over[field] = list(65, 1);
    at_limit(ok, over, std::string(kind) + ": " + field + ": more than 64");
  }
  json ok = base("EndpointSlice"), over = base("EndpointSlice");
  ok["addresses"] = list(1000, 2);
  over["addresses"] = list(1001, 2);
  at_limit(ok, over, "EndpointSlice: addresses: more than 1000");
  auto w = parse(ok.dump());
  ASSERT_TRUE(w);
  EXPECT_EQ(std::get<EndpointSliceObject>(w->object).addresses.size(), 1000u);
}

TEST(WorkloadObject, ContainersAtMost64PortsAtMost100) {
  json ok = base("Pod"), over = base("Pod");
  for (int i = 0; i < 64; i++) ok["containers"].push_back({{"name", "c" + std::to_string(i)}});
  over["containers"] = ok["containers"];
  over["containers"].push_back({{"name", "c64"}});
  at_limit(ok, over, "Pod: containers: more than 64");
  for (const char* kind : {"Service", "EndpointSlice"}) {
    json ok2 = base(kind), over2 = base(kind);
    for (int i = 0; i < 100; i++) ok2["ports"].push_back({{"port", 1000 + i}});
    over2["ports"] = ok2["ports"];
    over2["ports"].push_back({{"port", 9999}});
    at_limit(ok2, over2, std::string(kind) + ": ports: more than 100");
  }
}

TEST(WorkloadObject, JsonAtMost4MiB) {
  // Padded with a field a reader ignores, to exactly the limit.
  const std::string head = R"({"v":1,"kind":"Sync","resource":"pods","state":"synced","pad":")", tail = "\"}";
  const size_t limit = 4u << 20;
  ASSERT_EQ(kMaxWorkloadJson, limit);
  std::string ok = head + std::string(limit - head.size() - tail.size(), 'x') + tail;
  ASSERT_EQ(ok.size(), limit);
  std::string error;
  auto w = parse_workload(ok, &error);
  ASSERT_TRUE(w) << error;
  EXPECT_EQ(*w, upsert(SyncObject{"pods", "synced", ""}));
  std::string over = head + std::string(limit + 1 - head.size() - tail.size(), 'x') + tail;
  ASSERT_EQ(over.size(), limit + 1);
  EXPECT_NE(refused(over).find("larger than 4194304 bytes"), std::string::npos);
}

TEST(WorkloadObject, PortsAreZeroTo65535) {
  for (int port : {0, 1, 65535}) {
    json o = base("Service");
    o["ports"] = json::array({{{"port", port}}});
    auto w = parse(o.dump());
    ASSERT_TRUE(w) << port;
    EXPECT_EQ(std::get<ServiceObject>(w->object).ports.at(0).port, port);
  }
  for (json bad : {json(65536), json(-1), json("80"), json(80.5), json(nullptr), json(UINT64_MAX)}) {
    json o = base("EndpointSlice");
    o["ports"] = json::array({{{"port", 1}}, {{"port", bad}}});
    EXPECT_EQ(refused(o.dump()).substr(0, 29), "EndpointSlice: ports[1]: port") << bad;
  }
  json o = base("Service");
  o["ports"] = json::array({{{"port", 1}, {"protocol", std::string(17, 'T')}}});
  EXPECT_EQ(refused(o.dump()).substr(0, 34), "Service: ports[0].protocol: longer");
}

// ----------------------------------------------------------- refusals --

TEST(WorkloadObject, WrongTypesNameTheField) {
  struct Case {
    json patch;
    std::string prefix;
  };
  const std::vector<Case> cases = {
      {{{"uid", 5}}, "Pod: uid: not a string"},
      {{{"name", json::array()}}, "Pod: name: not a string"},
      {{{"hostNetwork", "yes"}}, "Pod: hostNetwork: not true or false"},
      {{{"ips", "10.0.0.1"}}, "Pod: ips: not a list"},
      {{{"ips", json::array({"10.0.0.1", 7})}}, "Pod: ips[1]: not a string"},
      {{{"labels", json::array()}}, "Pod: labels: not an object"},
      {{{"labels", {{"app", 1}}}}, "Pod: labels.app: not a string"},
      {{{"owner", "Deployment/api"}}, "Pod: owner: not an object"},
      {{{"owner", {{"name", "api"}}}}, "Pod: owner.kind: missing"},
      {{{"owner", {{"kind", "Deployment"}, {"name", ""}}}}, "Pod: owner.name: empty"},
      {{{"containers", {{"name", "api"}}}}, "Pod: containers: not a list"},
      {{{"containers", json::array({"api"})}}, "Pod: containers[0]: not an object"},
      {{{"containers", json::array({{{"name", 1}}})}}, "Pod: containers[0].name: not a string"},
      {{{"phase", std::string(33, 'R')}}, "Pod: phase: longer than 32"},
      {{{"name", ""}}, "Pod: name: empty"},
  };
  for (auto& c : cases) {
    json o = base("Pod");
    o.update(c.patch);
    const std::string why = refused(o.dump());
    EXPECT_EQ(why.substr(0, c.prefix.size()), c.prefix) << why;
  }
  json o = base("Pod");
  o.erase("namespace");
  EXPECT_EQ(refused(o.dump()), "Pod: namespace: missing");
  json s = {{"v", 1}, {"kind", "Stats"}, {"events", -1}};
  EXPECT_EQ(refused(s.dump()).substr(0, 14), "Stats: events:");
  s = {{"v", 1}, {"kind", "Stats"}, {"requests", {{"pods/list", "1"}}}};
  EXPECT_EQ(refused(s.dump()).substr(0, 16), "Stats: requests:");
  s = {{"v", 1}, {"kind", "Sync"}, {"resource", "pods"}, {"state", "ok"}};
  EXPECT_EQ(refused(s.dump()).substr(0, 12), "Sync: state:");
  s = {{"v", 1}, {"kind", "Sync"}, {"state", "synced"}};
  EXPECT_EQ(refused(s.dump()), "Sync: resource: missing");
  s = {{"v", 1}, {"kind", "Self"}};
  EXPECT_EQ(refused(s.dump()), "Self: node: missing");
  o = base("Pod");
  o["op"] = "replace";
  EXPECT_EQ(refused(o.dump()).substr(0, 4), "op: ");
}

TEST(WorkloadObject, BadAddressesAreRefused) {
  for (const char* bad : {"10.1", "10.0.0.256", "10.0.0.1/24", " 10.0.0.1", "10.0.0.1 ", "fd00::g", "", "::ffff:1.2.3",
                          "localhost", "1.2.3.4.5"}) {
    json o = base("Pod");
    o["ips"] = json::array({"10.0.0.1", bad});
    const std::string why = refused(o.dump());
    EXPECT_EQ(why, std::string("Pod: ips[1]: not an IP address: '") + bad + "'") << why;
  }
  // The quoted address is cut: an error line stays short.
  json o = base("Node");
  o["addresses"] = json::array({std::string(1000, '1')});
  EXPECT_LT(refused(o.dump()).size(), 120u);
}

TEST(WorkloadObject, BadContainerIdsAreRefused) {
  for (const std::string& bad : {kId1.substr(1), std::string(63, 'a') + "A", std::string(63, 'a') + "g",
                                 "containerd://" + kId1.substr(13)}) {
    json o = base("Pod");
    o["containers"] = json::array({{{"name", "a"}, {"id", kId1}}, {{"name", "b"}, {"id", bad}}});
    EXPECT_EQ(refused(o.dump()), "Pod: containers[1].id: not 64 hex digits") << bad;
  }
  json o = base("Pod");
  o["containers"] = json::array({{{"name", "a"}, {"id", kId1 + "a"}}});
  EXPECT_EQ(refused(o.dump()), "Pod: containers[0].id: longer than 64 bytes");
  // Empty while the container is starting.
  o["containers"] = json::array({{{"name", "a"}, {"id", ""}}});
  EXPECT_TRUE(parse(o.dump()));
}

TEST(WorkloadObject, UnknownKindOrVersionIsRefused) {
  EXPECT_EQ(refused(R"({"v":1,"kind":"Deployment","uid":"x"})"), "Deployment: kind: unknown kind 'Deployment'");
  EXPECT_EQ(refused(R"({"v":1,"uid":"x"})"), "kind: missing");
  EXPECT_EQ(refused(R"({"v":1,"kind":""})"), "kind: empty");
  EXPECT_EQ(refused(R"({"v":2,"kind":"Self","node":"n"})"), "v: unknown schema version 2");
  EXPECT_EQ(refused(R"({"v":0,"kind":"Self","node":"n"})"), "v: unknown schema version 0");
  EXPECT_EQ(refused(R"({"v":"1","kind":"Self","node":"n"})"), "v: missing schema version");
  EXPECT_EQ(refused(R"({"v":1.0,"kind":"Self","node":"n"})"), "v: missing schema version");
  EXPECT_EQ(refused(R"({"kind":"Self","node":"n"})"), "v: missing schema version");
}

TEST(WorkloadObject, NotJsonOrNotAnObject) {
  for (const char* text : {"", "{", R"({"v":1,)", "nul", R"({"v":1}x)", "\x01"}) EXPECT_EQ(refused(text), "not valid JSON");
  for (const char* text : {"[]", "1", R"("Pod")", "null", "true"})
    EXPECT_EQ(refused(text), "object: not a JSON object");
}

TEST(WorkloadObject, ErrorPointerIsOptional) {
  EXPECT_FALSE(parse_workload("[]"));
  EXPECT_FALSE(parse_workload("{"));
  EXPECT_FALSE(parse_workload(std::string(kMaxWorkloadJson + 1, ' ')));
  EXPECT_TRUE(parse_workload(R"({"v":1,"kind":"Self","node":"n"})"));
}

}  // namespace
