// Pod targeting (userspace/sensor/pod_targets.cpp): which pods' addresses
// the capture programs keep, by tap.regex / tap.namespaces /
// tap.excludedNamespaces, and the deltas handed to the kernel's target set.
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "identity_test_helpers.hpp"
#include "pod_targets.hpp"

namespace {

using tapwire::sensor::PodTargets;
using tapwire::sensor::TargetRules;
using namespace tapwire::identity;
using namespace tapwire::identity::testing;

PodObject pod(const std::string& uid, const std::string& ns, const std::string& name, std::vector<const char*> ips,
              bool host_network = false) {
  return pod_object({.uid = uid, .ns = ns, .name = name, .ips = std::move(ips), .host_network = host_network});
}

PodTargets::Address addr(const char* text) {
  const IpKey k = ip(text);
  return {k.version, std::string(reinterpret_cast<const char*>(k.addr), 16)};
}

using Changes = std::vector<std::pair<PodTargets::Address, bool>>;

// Order-free comparison of deltas, printed as text.
std::vector<std::string> text(Changes c) {
  std::vector<std::string> out;
  for (auto& [a, on] : c) {
    IpKey k;
    k.version = a.first;
    std::copy(a.second.begin(), a.second.end(), k.addr);
    out.push_back((on ? "+" : "-") + k.str());
  }
  std::sort(out.begin(), out.end());
  return out;
}
std::vector<std::string> want(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

TargetRules rules(std::string regex, std::vector<std::string> ns = {}, std::vector<std::string> excluded = {}) {
  TargetRules r;
  r.regex = std::move(regex);
  r.namespaces = std::move(ns);
  r.excluded = std::move(excluded);
  return r;
}

bool targeted(const std::string& regex, const std::string& name) {
  PodTargets t;
  t.set_rules(rules(regex));
  t.upsert(pod("u", "ns", name, {"10.244.0.1"}));
  return t.targeted_pods() == 1;
}

TEST(PodTargets, RegexIsASearchAsGosMatchString) {
  // Anywhere in the name, unless anchored.
  EXPECT_TRUE(targeted("api", "api-7d9c-x2x"));
  EXPECT_TRUE(targeted("api", "my-api-0"));
  EXPECT_FALSE(targeted("^api", "my-api-0"));
  EXPECT_TRUE(targeted("^api", "api-0"));
  EXPECT_FALSE(targeted("api$", "api-0"));
  EXPECT_TRUE(targeted("-0$", "api-0"));
  EXPECT_TRUE(targeted("(catalogue|front-end)", "front-end-6b5f"));
  EXPECT_FALSE(targeted("(catalogue|front-end)", "carts-1"));
  EXPECT_TRUE(targeted("^ca.*", "carts-1"));
  EXPECT_TRUE(targeted("db-[0-9]+$", "db-12"));
  EXPECT_FALSE(targeted("db-[0-9]+$", "db-x"));
  // Go's \d is a digit (POSIX regcomp alone would read a 'd').
  EXPECT_TRUE(targeted("^db-\\d+$", "db-12"));
  EXPECT_FALSE(targeted("^db-\\d+$", "db-dd"));
  EXPECT_TRUE(targeted("^db-\\D", "db-x"));
  EXPECT_FALSE(targeted("^db-\\D", "db-1"));
  EXPECT_TRUE(targeted("^db-[\\d]+$", "db-42"));
  EXPECT_TRUE(targeted("^a\\.b", "a.b-1"));
  EXPECT_FALSE(targeted("^a\\.b", "axb-1"));
  EXPECT_TRUE(targeted("[[:digit:]]$", "web-3"));
  EXPECT_TRUE(targeted("[]x]", "a]b"));
  // The defaults take everything.
  EXPECT_TRUE(targeted(".*", "anything"));
  EXPECT_TRUE(targeted("", "anything"));
}

TEST(PodTargets, Namespaces) {
  PodTargets t;
  t.set_rules(rules("", {"shop", "data"}, {"data"}));
  t.upsert(pod("1", "shop", "api", {"10.244.0.1"}));
  t.upsert(pod("2", "data", "db", {"10.244.0.2"}));  // included and excluded: excluded wins
  t.upsert(pod("3", "kube-system", "dns", {"10.244.0.3"}));
  EXPECT_EQ(t.targeted_pods(), 1u);
  EXPECT_EQ(t.pods(), 3u);
  EXPECT_EQ(t.addresses(), std::vector<PodTargets::Address>{addr("10.244.0.1")});
  PodTargets e;
  e.set_rules(rules("", {}, {"kube-system"}));
  e.upsert(pod("1", "shop", "api", {"10.244.0.1"}));
  e.upsert(pod("3", "kube-system", "dns", {"10.244.0.3"}));
  EXPECT_EQ(e.addresses(), std::vector<PodTargets::Address>{addr("10.244.0.1")});
  // Regex and namespace both apply.
  PodTargets both;
  both.set_rules(rules("^api", {"shop"}));
  both.upsert(pod("1", "shop", "api-1", {"10.244.0.1"}));
  both.upsert(pod("2", "shop", "web-1", {"10.244.0.2"}));
  both.upsert(pod("3", "other", "api-2", {"10.244.0.3"}));
  EXPECT_EQ(both.addresses(), std::vector<PodTargets::Address>{addr("10.244.0.1")});
}

TEST(PodTargets, Active) {
  EXPECT_FALSE(TargetRules{}.active());
  EXPECT_FALSE(rules("").active());
  EXPECT_FALSE(rules(".*").active());
  EXPECT_TRUE(rules("api").active());
  EXPECT_TRUE(rules(".*", {"shop"}).active());
  EXPECT_TRUE(rules(".*", {}, {"kube-system"}).active());
  PodTargets t;
  EXPECT_FALSE(t.rules().active());
  EXPECT_EQ(t.status()["active"], false);
  t.set_rules(rules("api", {"shop"}, {"x"}));
  t.upsert(pod("1", "shop", "api", {"10.244.0.1", "fd00::1"}));
  t.upsert(pod("2", "shop", "web", {"10.244.0.2"}));
  auto s = t.status();
  EXPECT_EQ(s["active"], true);
  EXPECT_EQ(s["regex"], "api");
  EXPECT_EQ(s["namespaces"], nlohmann::json::array({"shop"}));
  EXPECT_EQ(s["excludedNamespaces"], nlohmann::json::array({"x"}));
  EXPECT_EQ(s["pods"], 2);
  EXPECT_EQ(s["targeted_pods"], 1);
  EXPECT_EQ(s["addresses"], 2);
}

TEST(PodTargets, ChangesOnUpsertAddressChangeAndDelete) {
  PodTargets t;
  t.set_rules(rules("api"));
  EXPECT_TRUE(t.take_changes().empty());
  t.upsert(pod("1", "shop", "api-1", {"10.244.0.1", "fd00::1"}));
  t.upsert(pod("2", "shop", "web-1", {"10.244.0.2"}));  // not targeted: nothing
  EXPECT_EQ(text(t.take_changes()), want({"+10.244.0.1", "+fd00::1"}));
  EXPECT_TRUE(t.take_changes().empty());
  // The same pod again (a status update): no change for the kernel.
  t.upsert(pod("1", "shop", "api-1", {"10.244.0.1", "fd00::1"}));
  EXPECT_TRUE(t.take_changes().empty());
  // A new address.
  t.upsert(pod("1", "shop", "api-1", {"10.244.0.9", "fd00::1"}));
  EXPECT_EQ(text(t.take_changes()), want({"-10.244.0.1", "+10.244.0.9"}));
  // Renamed out of the rules (a new pod with the uid is the same case).
  t.upsert(pod("1", "shop", "xyz", {"10.244.0.9", "fd00::1"}));
  EXPECT_EQ(text(t.take_changes()), want({"-10.244.0.9", "-fd00::1"}));
  t.upsert(pod("1", "shop", "api-1", {"10.244.0.9"}));
  t.remove("1");
  EXPECT_TRUE(t.take_changes().empty());  // came and went between two takes: nothing to do
  t.upsert(pod("3", "shop", "api-3", {"10.244.0.3"}));
  EXPECT_EQ(text(t.take_changes()), want({"+10.244.0.3"}));
  t.remove("3");
  t.remove("never-seen");
  EXPECT_EQ(text(t.take_changes()), want({"-10.244.0.3"}));
  EXPECT_EQ(t.targeted_pods(), 0u);
  EXPECT_EQ(t.pods(), 1u);
  EXPECT_TRUE(t.addresses().empty());
}

TEST(PodTargets, SharedAddressStaysUntilBothGo) {
  // Two hostNetwork pods on one node: the node's address is targeted once.
  PodTargets t;
  t.set_rules(rules("agent"));
  t.upsert(pod("1", "kube-system", "agent-a", {"10.0.0.5"}, true));
  t.upsert(pod("2", "monitoring", "agent-b", {"10.0.0.5"}, true));
  EXPECT_EQ(text(t.take_changes()), want({"+10.0.0.5"}));
  EXPECT_EQ(t.targeted_pods(), 2u);
  t.remove("1");
  EXPECT_TRUE(t.take_changes().empty());
  EXPECT_EQ(t.addresses(), std::vector<PodTargets::Address>{addr("10.0.0.5")});
  t.upsert(pod("2", "monitoring", "agent-b", {"10.0.0.6"}, true));  // moved: the old one goes
  EXPECT_EQ(text(t.take_changes()), want({"-10.0.0.5", "+10.0.0.6"}));
  t.remove("2");
  EXPECT_EQ(text(t.take_changes()), want({"-10.0.0.6"}));
}

TEST(PodTargets, RuleChangesReportOnlyWhatDiffers) {
  PodTargets t;
  t.upsert(pod("1", "shop", "api-1", {"10.244.0.1"}));
  t.upsert(pod("2", "shop", "web-1", {"10.244.0.2"}));
  t.upsert(pod("3", "data", "db-0", {"10.244.0.3"}));
  EXPECT_EQ(text(t.take_changes()), want({"+10.244.0.1", "+10.244.0.2", "+10.244.0.3"}));
  t.set_rules(rules("-1$"));  // api-1, web-1 stay; db-0 goes
  EXPECT_EQ(text(t.take_changes()), want({"-10.244.0.3"}));
  t.set_rules(rules("", {"data"}));  // only db-0
  EXPECT_EQ(text(t.take_changes()), want({"-10.244.0.1", "-10.244.0.2", "+10.244.0.3"}));
  t.set_rules(rules("", {"data"}));  // the same rules: nothing
  EXPECT_TRUE(t.take_changes().empty());
  EXPECT_EQ(t.targeted_pods(), 1u);
}

TEST(PodTargets, BadRegexThrowsAndKeepsTheOldRules) {
  PodTargets t;
  t.set_rules(rules("^api"));
  t.upsert(pod("1", "shop", "api-1", {"10.244.0.1"}));
  t.upsert(pod("2", "shop", "web-1", {"10.244.0.2"}));
  t.take_changes();
  for (const char* bad : {"(unclosed", "[a-", "(?i)api", "a{2,1}"}) {
    try {
      t.set_rules(rules(bad, {"other"}));
      ADD_FAILURE() << "no error for " << bad;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("tap.regex"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(t.rules().regex, "^api");
  EXPECT_TRUE(t.rules().namespaces.empty());
  EXPECT_TRUE(t.take_changes().empty());
  EXPECT_EQ(t.addresses(), std::vector<PodTargets::Address>{addr("10.244.0.1")});
  // And the old regex still decides new pods.
  t.upsert(pod("3", "shop", "api-3", {"10.244.0.3"}));
  t.upsert(pod("4", "shop", "web-4", {"10.244.0.4"}));
  EXPECT_EQ(text(t.take_changes()), want({"+10.244.0.3"}));
}

}  // namespace
