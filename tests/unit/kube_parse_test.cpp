// Parsing list pages and watch events of the Kubernetes API.
#include <gtest/gtest.h>

#include "kube_parse.hpp"

namespace k = tapwire::identity::kube;
using k::Json;

TEST(KubeParse, ListPageItemByItemWithoutWhatIsNotNeeded) {
  std::string body = R"({"kind":"PodList","apiVersion":"v1",
    "metadata":{"resourceVersion":"123","continue":"tok+/=","remainingItemCount":5},
    "items":[
      {"metadata":{"name":"a","namespace":"n","uid":"1","labels":{"managedFields":"kept: a label","spec":"x"},
                   "annotations":{"big":"drop"},"managedFields":[{"manager":"x"}],"resourceVersion":"7"},
       "spec":{"nodeName":"node-1","containers":[{"name":"c","image":"i"}],"volumes":[],"hostNetwork":true},
       "status":{"phase":"Running","conditions":[{"type":"Ready"}],"podIPs":[{"ip":"10.0.0.1"}],
                 "containerStatuses":[{"name":"c","containerID":"containerd://ab","state":{"running":{}}}]}},
      {"metadata":{"name":"b","namespace":"n","uid":"2"}}
    ]})";
  std::vector<Json> items;
  auto page = k::parse_list_page(body, [&](Json& item) { items.push_back(item); });
  EXPECT_EQ(page.resource_version, "123");
  EXPECT_EQ(page.continue_token, "tok+/=");
  EXPECT_EQ(page.items, 2u);
  ASSERT_EQ(items.size(), 2u);
  const Json& a = items[0];
  EXPECT_EQ(a["metadata"], Json::parse(R"({"name":"a","namespace":"n","uid":"1","resourceVersion":"7",
                                          "labels":{"managedFields":"kept: a label","spec":"x"}})"));
  EXPECT_EQ(a["spec"], Json::parse(R"({"nodeName":"node-1","hostNetwork":true})"));
  EXPECT_FALSE(a["status"].contains("conditions"));
  EXPECT_EQ(a["status"]["containerStatuses"][0]["containerID"], "containerd://ab");
}

TEST(KubeParse, LastPageAndEmptyList) {
  std::size_t n = 0;
  auto page = k::parse_list_page(R"({"kind":"NodeList","metadata":{"resourceVersion":"9"},"items":[]})",
                                 [&](Json&) { ++n; });
  EXPECT_EQ(page.continue_token, "");
  EXPECT_EQ(n, 0u);
  page = k::parse_list_page(R"({"kind":"NodeList","metadata":{"resourceVersion":"9"},"items":null})",
                            [&](Json&) { ++n; });
  EXPECT_EQ(page.items, 0u);
}

TEST(KubeParse, BadListsAreOneLineErrors) {
  auto fails = [](std::string_view body, const char* needle) {
    try {
      k::parse_list_page(body, [](Json&) {});
      ADD_FAILURE() << "accepted: " << body;
    } catch (const k::ParseError& e) {
      std::string what = e.what();
      EXPECT_NE(what.find(needle), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  };
  fails("<html>502 Bad Gateway</html>", "invalid JSON at byte 1");
  fails(R"({"kind":"PodList","metadata":{"resourceVersion":"1"},"items":[{"metadata":{"na)", "invalid JSON");
  fails(R"({"kind":"Status","code":410,"message":"too old"})", "Status: too old");
  fails(R"({"kind":"PodList","metadata":{}})", "not a list");
  fails(R"({"kind":"PodList","items":[]})", "no metadata.resourceVersion");
  fails("[]", "not a list");
  fails("\xff\xfe", "invalid JSON");
}

TEST(KubeParse, DeepNestingIsNotBuilt) {
  std::string deep = R"({"kind":"PodList","metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a",)"
                     R"("uid":"u"},"x":)" +
                     std::string(100000, '[') + std::string(100000, ']') + "}]}";
  std::vector<Json> items;
  k::parse_list_page(deep, [&](Json& i) { items.push_back(i); });
  ASSERT_EQ(items.size(), 1u);
  int depth = 0;  // the item sits at depth 2; what is below depth 32 was parsed, not built
  for (const Json* j = &items[0]["x"]; j->is_array() && !j->empty(); j = &(*j)[0]) ++depth;
  EXPECT_LE(depth, 32);
  EXPECT_EQ(items[0]["metadata"]["name"], "a");
}

TEST(KubeParse, WatchEvents) {
  auto ev = k::parse_watch_event(
      R"({"type":"MODIFIED","object":{"kind":"Pod","metadata":{"name":"a","uid":"1","resourceVersion":"55",)"
      R"("managedFields":[{}]},"spec":{"nodeName":"n","containers":[]}}})");
  EXPECT_EQ(ev.type, "MODIFIED");
  EXPECT_EQ(ev.object["metadata"]["resourceVersion"], "55");
  EXPECT_FALSE(ev.object["metadata"].contains("managedFields"));
  EXPECT_FALSE(ev.object["spec"].contains("containers"));

  ev = k::parse_watch_event(R"({"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"99"}}})");
  EXPECT_EQ(ev.type, "BOOKMARK");

  ev = k::parse_watch_event(
      R"j({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)j"
      R"j("message":"too old resource version: 5 (10)","reason":"Expired","code":410}})j");
  auto st = k::status_of(ev.object);
  ASSERT_TRUE(st);
  EXPECT_EQ(st->code, 410);
  EXPECT_EQ(st->reason, "Expired");

  EXPECT_THROW(k::parse_watch_event("this is not json"), k::ParseError);
  EXPECT_THROW(k::parse_watch_event(R"({"type":"ADDED"})"), k::ParseError);
  EXPECT_THROW(k::parse_watch_event(R"({"type":"ADDED","object":[]})"), k::ParseError);
}

TEST(KubeParse, HttpErrorsSayWhatToDo) {
  EXPECT_EQ(k::describe_http_error(401, R"({"kind":"Status","code":401,"message":"Unauthorized"})", "pods"),
            "HTTP 401 Unauthorized: check the token or kubeconfig");
  EXPECT_EQ(k::describe_http_error(403, R"({"kind":"Status","code":403,"message":"pods is forbidden: no"})", "pods"),
            "HTTP 403 Forbidden: pods is forbidden: no: grant list and watch on pods to this account (ClusterRole)");
  EXPECT_EQ(k::describe_http_error(503, "", "nodes"), "HTTP 503 Service Unavailable: the API server is overloaded or failing");
  EXPECT_EQ(k::describe_http_error(418, "<html>\n", "nodes"), "HTTP 418: \"<html>?\"");
}
