// Pod targeting as Kubeshark does it (tap.regex, tap.namespaces,
// tap.excludedNamespaces): which pods' traffic is captured at all. A pod is
// targeted if its name matches the regex (a search, as Go's MatchString) and
// its namespace is in `namespaces` (empty: any) and not in `excluded`. The
// addresses of the targeted pods become the kernel's target set; a
// hostNetwork pod shares the node's addresses, so targeting one captures the
// node's traffic too. Kept incrementally: a pod event costs one regex match,
// and the kernel gets only the addresses that changed.
#pragma once

#include <regex.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "workload_object.hpp"

namespace tapwire::sensor {

struct TargetRules {
  std::string regex = ".*";
  std::vector<std::string> namespaces;  // empty: every namespace
  std::vector<std::string> excluded;
  // Targeting is on as soon as one rule narrows anything: the defaults
  // capture every pod and everything that is not a pod.
  bool active() const { return !(regex.empty() || regex == ".*") || !namespaces.empty() || !excluded.empty(); }
  bool operator==(const TargetRules&) const = default;
};

class PodTargets {
 public:
  using Address = std::pair<uint8_t, std::string>;  // (IP version, 16 raw bytes)

  PodTargets();
  ~PodTargets();
  // Throws std::runtime_error (one line) on a bad regex; the old rules stay.
  void set_rules(const TargetRules& rules);
  const TargetRules& rules() const { return rules_; }

  void upsert(const identity::PodObject& pod);
  void remove(const std::string& uid);

  // The addresses of the targeted pods now.
  std::vector<Address> addresses() const;
  // What changed since the last call: (address, true = now targeted /
  // false = no longer). After set_rules, every address of the old and the
  // new set that differs.
  std::vector<std::pair<Address, bool>> take_changes();
  size_t targeted_pods() const { return targeted_pods_; }
  size_t pods() const { return pods_.size(); }
  nlohmann::json status() const;

 private:
  TargetRules rules_;
  std::unique_ptr<regex_t, void (*)(regex_t*)> re_;
  struct Pod {
    std::string namespace_, name;
    std::vector<Address> ips;
    bool targeted = false;
  };
  std::unordered_map<std::string, Pod> pods_;  // by uid
  std::map<Address, uint32_t> refs_;  // targeted address -> pods holding it
  std::map<Address, bool> changes_;  // address -> targeted now (pending for take_changes)
  size_t targeted_pods_ = 0;
  bool match(const std::string& ns, const std::string& name) const;
  void add_refs(const Pod& p);
  void note_change(const Address& a, bool targeted);
  void drop_refs(const Pod& p);
};

}  // namespace tapwire::sensor
