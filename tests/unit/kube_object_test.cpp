// Normalization of Kubernetes objects into workload objects (docs/IDENTITY.md).
#include <gtest/gtest.h>

#include "kube_object.hpp"

namespace k = tapwire::identity::kube;
using k::Json;

namespace {

std::string hex(const char* pair) {
  std::string s;
  for (int i = 0; i < 32; ++i) s += pair;
  return s;
}

Json pod_json() {
  return Json::parse(R"({
    "metadata": {"name": "web-5d8f7-x2x4q", "namespace": "shop", "uid": "5b9c0d1e-0000-4000-8000-000000000001",
                 "labels": {"app": "web", "pod-template-hash": "5d8f7"},
                 "ownerReferences": [
                   {"kind": "Node", "name": "n1", "uid": "x"},
                   {"kind": "ReplicaSet", "name": "web-5d8f7", "uid": "rs-1", "controller": true}]},
    "spec": {"nodeName": "node-1", "hostNetwork": false},
    "status": {"phase": "Running", "podIP": "10.244.1.7",
               "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00::7"}, {"ip": "10.244.1.7"}, {"ip": "not-an-ip"}],
               "containerStatuses": [
                 {"name": "api", "containerID": "containerd://3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f"},
                 {"name": "side", "containerID": "cri-o://abababababababababababababababababababababababababababababababab"},
                 {"name": "old", "containerID": "docker://bebebebebebebebebebebebebebebebebebebebebebebebebebebebebebebebe"},
                 {"name": "odd", "containerID": "rkt://cacacacacacacacacacacacacacacacacacacacacacacacacacacacacacacaca"},
                 {"name": "starting"}, {"name": "short", "containerID": "containerd://abc"},
                 {"name": "upper", "containerID": "containerd://ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB"}],
               "initContainerStatuses": [{"name": "init", "containerID": "containerd://0101010101010101010101010101010101010101010101010101010101010101"}]}})");
}

}  // namespace

TEST(KubeObject, PodHasTheDocumentedFieldsInOrder) {
  k::Counters n;
  auto o = k::normalize_pod(pod_json(), k::Owner{"Deployment", "web"}, n);
  const std::string want =
      R"({"v":1,"kind":"Pod","op":"upsert","uid":"5b9c0d1e-0000-4000-8000-000000000001","namespace":"shop",)"
      R"("name":"web-5d8f7-x2x4q","node":"node-1","hostNetwork":false,"ips":["10.244.1.7","fd00::7"],)"
      R"("phase":"Running","labels":{"app":"web","pod-template-hash":"5d8f7"},)"
      R"("owner":{"kind":"Deployment","name":"web"},"containers":[)"
      R"({"name":"api","id":")" + hex("3f") + R"(","runtime":"containerd"},)"
      R"({"name":"side","id":")" + hex("ab") + R"(","runtime":"cri-o"},)"
      R"({"name":"old","id":")" + hex("be") + R"(","runtime":"docker"},)"
      R"({"name":"odd","id":")" + hex("ca") + R"("},)"
      R"({"name":"init","id":")" + hex("01") + R"(","runtime":"containerd"}]})";
  EXPECT_EQ(o.dump(), want);
  EXPECT_EQ(n.invalid, 3u);  // "not-an-ip", and two ids that are not 64 lower-case hex digits
  EXPECT_EQ(n.truncated, 0u);
}

TEST(KubeObject, PodFallsBackToPodIpAndHasNoOwnerWithoutController) {
  Json p = pod_json();
  p["status"].erase("podIPs");
  p["metadata"].erase("ownerReferences");
  k::Counters n;
  auto o = k::normalize_pod(p, std::nullopt, n);
  EXPECT_EQ(o["ips"], k::OJson::array({"10.244.1.7"}));
  EXPECT_FALSE(o.contains("owner"));
  EXPECT_FALSE(k::controller_of(p).has_value());
}

TEST(KubeObject, PendingPodWithNothingYet) {
  k::Counters n;
  auto o = k::normalize_pod(Json::parse(R"({"metadata":{"name":"p","namespace":"d","uid":"u"},"status":{}})"),
                            std::nullopt, n);
  EXPECT_EQ(o["node"], "");
  EXPECT_EQ(o["hostNetwork"], false);
  EXPECT_TRUE(o["ips"].empty());
  EXPECT_TRUE(o["containers"].empty());
  EXPECT_EQ(n.invalid + n.truncated, 0u);
}

TEST(KubeObject, WrongTypesAreCountedNotThrown) {
  Json p = Json::parse(R"({"metadata":{"name":7,"namespace":["x"],"uid":"u","labels":{"a":1,"b":"ok"}},
                           "spec":{"nodeName":{"x":1},"hostNetwork":"yes"},
                           "status":{"podIPs":"nope","phase":3,"containerStatuses":{"a":1}}})");
  k::Counters n;
  auto o = k::normalize_pod(p, std::nullopt, n);
  EXPECT_EQ(o["name"], "");
  EXPECT_EQ(o["labels"], k::OJson({{"b", "ok"}}));
  EXPECT_GE(n.invalid, 6u);
}

TEST(KubeObject, BoundsAreEnforcedAndCounted) {
  Json p = pod_json();
  Json labels = Json::object();
  for (int i = 0; i < 100; ++i) labels["l" + std::to_string(1000 + i)] = std::string(2000, 'v');
  labels[std::string(400, 'k')] = "too long a key";
  p["metadata"]["labels"] = labels;
  p["metadata"]["name"] = std::string(300, 'n');
  Json ips = Json::array();
  for (int i = 0; i < 100; ++i) ips.push_back({{"ip", "10.0." + std::to_string(i / 250) + "." + std::to_string(i % 250)}});
  p["status"]["podIPs"] = ips;
  k::Counters n;
  auto o = k::normalize_pod(p, std::nullopt, n);
  EXPECT_EQ(o["labels"].size(), k::kMaxLabels);
  for (auto& [key, v] : o["labels"].items()) EXPECT_EQ(v.get<std::string>().size(), k::kMaxLabelValue) << key;
  EXPECT_EQ(o["name"].get<std::string>().size(), k::kMaxName);
  EXPECT_EQ(o["ips"].size(), k::kMaxAddresses);
  EXPECT_GT(n.truncated, 64u);
  EXPECT_GE(n.invalid, 1u);  // the 400-byte key
}

TEST(KubeObject, TruncationKeepsUtf8Whole) {
  std::string s = "ab\xc3\xa9";  // "abé": é is two bytes
  EXPECT_EQ(k::truncate_utf8(s, 3), "ab");
  EXPECT_EQ(k::truncate_utf8(s, 4), s);
  EXPECT_EQ(k::truncate_utf8("\xe2\x82\xac", 2), "");  // € cut anywhere: nothing
}

TEST(KubeObject, FallbackOwner) {
  Json p = pod_json();
  k::Controller rs{"ReplicaSet", "web-5d8f7", "rs-1"};
  EXPECT_EQ(k::fallback_owner(rs, p), (k::Owner{"Deployment", "web"}));
  p["metadata"]["labels"]["pod-template-hash"] = "other";
  EXPECT_EQ(k::fallback_owner(rs, p), (k::Owner{"ReplicaSet", "web-5d8f7"}));
  p["metadata"]["labels"]["pod-template-hash"] = "web-5d8f7";  // no "<name>-" left before it
  EXPECT_EQ(k::fallback_owner(rs, p), (k::Owner{"ReplicaSet", "web-5d8f7"}));
  EXPECT_EQ(k::fallback_owner({"Job", "nightly-1", "j"}, p), (k::Owner{"Job", "nightly-1"}));
}

TEST(KubeObject, Service) {
  k::Counters n;
  auto o = k::normalize_service(
      Json::parse(R"({"metadata":{"name":"api","namespace":"shop","uid":"s1"},
                      "spec":{"clusterIP":"10.96.0.12","clusterIPs":["10.96.0.12","fd00:96::12"],
                              "ports":[{"name":"http","port":80,"protocol":"TCP","targetPort":8080},
                                       {"port":53,"protocol":"UDP"},{"port":70000}]}})"),
      n);
  EXPECT_EQ(o.dump(),
            R"({"v":1,"kind":"Service","op":"upsert","uid":"s1","namespace":"shop","name":"api","type":"ClusterIP",)"
            R"("clusterIPs":["10.96.0.12","fd00:96::12"],"ports":[{"name":"http","port":80,"protocol":"TCP"},)"
            R"({"name":"","port":53,"protocol":"UDP"}]})");
  EXPECT_EQ(n.invalid, 1u);  // port 70000
  auto headless = k::normalize_service(
      Json::parse(R"({"metadata":{"name":"db","namespace":"d","uid":"s2"},"spec":{"clusterIP":"None","type":"ClusterIP"}})"),
      n);
  EXPECT_TRUE(headless["clusterIPs"].empty());
}

TEST(KubeObject, EndpointSliceAndNode) {
  k::Counters n;
  auto e = k::normalize_endpointslice(
      Json::parse(R"({"metadata":{"name":"api-x","namespace":"shop","uid":"e1",
                                  "labels":{"kubernetes.io/service-name":"api"}},
                      "addressType":"IPv4",
                      "endpoints":[{"addresses":["10.244.1.7"]},{"addresses":["10.244.1.8","10.244.1.7"]}],
                      "ports":[{"name":"http","port":8080,"protocol":"TCP"},{"name":"all","port":null}]})"),
      n);
  EXPECT_EQ(e["service"], "api");
  EXPECT_EQ(e["addresses"], k::OJson::array({"10.244.1.7", "10.244.1.8"}));
  EXPECT_EQ(e["ports"].size(), 1u);
  auto node = k::normalize_node(Json::parse(R"({"metadata":{"name":"n1","uid":"n"},"status":{"addresses":[
      {"type":"InternalIP","address":"10.0.0.5"},{"type":"Hostname","address":"n1"},
      {"type":"ExternalIP","address":"203.0.113.5"}]}})"),
                                n);
  EXPECT_EQ(node.dump(),
            R"({"v":1,"kind":"Node","op":"upsert","uid":"n","name":"n1","addresses":["10.0.0.5","203.0.113.5"]})");
}

TEST(KubeObject, EndpointAddressesAreCapped) {
  Json eps = Json::array();
  for (int i = 0; i < 1500; ++i) eps.push_back({{"addresses", {"10.1." + std::to_string(i / 250) + "." + std::to_string(i % 250)}}});
  Json s = {{"metadata", {{"name", "x"}, {"namespace", "d"}, {"uid", "u"}}}, {"endpoints", eps}};
  k::Counters n;
  auto e = k::normalize_endpointslice(s, n);
  EXPECT_EQ(e["addresses"].size(), k::kMaxEndpointAddresses);
  EXPECT_EQ(n.truncated, 500u);
}

TEST(KubeObject, DeleteAndSync) {
  EXPECT_EQ(k::delete_object(k::Resource::Pods, {"u", "shop", "p"}).dump(),
            R"({"v":1,"kind":"Pod","op":"delete","uid":"u","namespace":"shop","name":"p"})");
  EXPECT_EQ(k::delete_object(k::Resource::Nodes, {"u", "", "n1"}).dump(),
            R"({"v":1,"kind":"Node","op":"delete","uid":"u","name":"n1"})");
  EXPECT_EQ(k::sync_object(k::Resource::EndpointSlices, true).dump(),
            R"({"v":1,"kind":"Sync","resource":"endpointslices","state":"synced"})");
  EXPECT_EQ(k::sync_object(k::Resource::Pods, false, "HTTP 401\x01").dump(),
            R"({"v":1,"kind":"Sync","resource":"pods","state":"lost","error":"HTTP 401?"})");
}

TEST(KubeObject, Resources) {
  for (auto r : k::kAllResources) EXPECT_EQ(k::resource_by_name(k::info(r).name), r);
  EXPECT_FALSE(k::resource_by_name("deployments"));
  EXPECT_EQ(k::info(k::Resource::EndpointSlices).path, "/apis/discovery.k8s.io/v1/endpointslices");
  EXPECT_FALSE(k::info(k::Resource::ReplicaSets).reported);
}

// The sensor checks every frame with parse_workload (workload_object.hpp):
// whatever normalization makes of the worst input must pass it.
#include "workload_object.hpp"

TEST(KubeObject, TheSensorAcceptsWhatTheWatcherWrites) {
  auto accepted = [](const k::OJson& o) {
    std::string err;
    auto w = tapwire::identity::parse_workload(o.dump(), &err);
    EXPECT_TRUE(w.has_value()) << err << "\n" << o.dump().substr(0, 300);
  };
  Json p = pod_json();
  Json labels = Json::object();
  for (int i = 0; i < 80; ++i) labels[std::string(300, 'a' + i % 26) + std::to_string(i)] = std::string(5000, 'v');
  p["metadata"]["labels"] = labels;
  p["metadata"]["name"] = std::string(1000, 'n');
  p["metadata"]["namespace"] = std::string(1000, 's');
  p["metadata"]["uid"] = std::string(1000, 'u');
  p["spec"]["nodeName"] = std::string(1000, 'x');
  p["status"]["phase"] = std::string(100, 'P');
  Json ips = Json::array(), cs = Json::array();
  for (int i = 0; i < 200; ++i) {
    ips.push_back({{"ip", "fd00::" + std::to_string(i)}});
    cs.push_back({{"name", std::string(400, 'c')}, {"containerID", "containerd://" + hex("0a")}});
  }
  p["status"]["podIPs"] = ips;
  p["status"]["containerStatuses"] = cs;
  k::Counters n;
  accepted(k::normalize_pod(p, k::Owner{std::string(500, 'K'), std::string(500, 'N')}, n));
  accepted(k::normalize_pod(pod_json(), std::nullopt, n));

  Json ports = Json::array();
  for (int i = 0; i < 300; ++i)
    ports.push_back({{"name", std::string(300, 'p')}, {"port", 1 + i}, {"protocol", std::string(100, 'T')}});
  Json svc = {{"metadata", {{"name", "s"}, {"namespace", "d"}, {"uid", "u"}}},
              {"spec", {{"type", std::string(100, 't')}, {"clusterIPs", ips}, {"ports", ports}}}};
  svc["spec"]["clusterIPs"] = Json::array();
  for (int i = 0; i < 200; ++i) svc["spec"]["clusterIPs"].push_back("10.96.0." + std::to_string(i % 250));
  accepted(k::normalize_service(svc, n));

  Json eps = Json::array();
  for (int i = 0; i < 3000; ++i) eps.push_back({{"addresses", {"10.9." + std::to_string(i / 250) + "." + std::to_string(i % 250)}}});
  Json slice = {{"metadata", {{"name", "e"}, {"namespace", "d"}, {"uid", "u"},
                              {"labels", {{"kubernetes.io/service-name", std::string(900, 's')}}}}},
                {"endpoints", eps}, {"ports", ports}};
  accepted(k::normalize_endpointslice(slice, n));

  Json addrs = Json::array();
  for (int i = 0; i < 200; ++i) addrs.push_back({{"type", "InternalIP"}, {"address", "10.0.0." + std::to_string(i % 250)}});
  accepted(k::normalize_node({{"metadata", {{"name", "n"}, {"uid", "u"}}}, {"status", {{"addresses", addrs}}}}, n));

  for (auto r : {k::Resource::Pods, k::Resource::Services, k::Resource::EndpointSlices, k::Resource::Nodes})
    accepted(k::delete_object(r, {std::string(900, 'u'), std::string(900, 's'), std::string(900, 'n')}));
  accepted(k::sync_object(k::Resource::Pods, false, std::string(5000, 'e')));
  accepted(k::sync_object(k::Resource::Jobs, true));
}
