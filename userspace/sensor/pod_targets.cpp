#include "pod_targets.hpp"

#include <algorithm>
#include <stdexcept>

namespace tapwire::sensor {
namespace {

void free_regex(regex_t* r) {
  if (r) {
    regfree(r);
    delete r;
  }
}

// The rules are written in Go's syntax (RE2); regcomp reads POSIX extended
// ones, which agree on what pod name patterns use, except for \d: glibc
// reads it as a plain 'd', so "api-\d+" would silently match nothing.
// Spelled out here as [0-9] ([^0-9] for \D), inside a bracket as 0-9.
std::string posix_pattern(const std::string& re2) {
  std::string out;
  bool in_bracket = false;
  for (size_t i = 0; i < re2.size(); i++) {
    const char c = re2[i];
    if (!in_bracket && c == '\\' && i + 1 < re2.size()) {
      const char n = re2[++i];
      if (n == 'd')
        out += "[0-9]";
      else if (n == 'D')
        out += "[^0-9]";
      else
        out += {c, n};
      continue;
    }
    if (in_bracket && c == '\\' && i + 1 < re2.size() && re2[i + 1] == 'd') {
      out += "0-9";
      i++;
      continue;
    }
    if (!in_bracket && c == '[') {
      in_bracket = true;
      out += c;
      // A ']' right after '[' or '[^' is a member, not the end.
      if (i + 1 < re2.size() && re2[i + 1] == '^') out += re2[++i];
      if (i + 1 < re2.size() && re2[i + 1] == ']') out += re2[++i];
      continue;
    }
    if (in_bracket && c == '[' && i + 1 < re2.size() && re2[i + 1] == ':') {  // [:digit:]
      const size_t end = re2.find(":]", i + 2);
      if (end != std::string::npos) {
        out.append(re2, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_bracket && c == ']') in_bracket = false;
    out += c;
  }
  return out;
}

std::unique_ptr<regex_t, void (*)(regex_t*)> compile(const std::string& pattern) {
  auto* r = new regex_t;
  if (int rc = regcomp(r, posix_pattern(pattern).c_str(), REG_EXTENDED | REG_NOSUB); rc != 0) {
    char why[128];
    regerror(rc, r, why, sizeof why);
    delete r;
    throw std::runtime_error("tap.regex: bad regular expression '" + pattern + "': " + why);
  }
  return {r, free_regex};
}

}  // namespace

PodTargets::PodTargets() : re_(compile(".*")) {}
PodTargets::~PodTargets() = default;

bool PodTargets::match(const std::string& ns, const std::string& name) const {
  if (!rules_.namespaces.empty() &&
      std::find(rules_.namespaces.begin(), rules_.namespaces.end(), ns) == rules_.namespaces.end())
    return false;
  if (std::find(rules_.excluded.begin(), rules_.excluded.end(), ns) != rules_.excluded.end()) return false;
  return regexec(re_.get(), name.c_str(), 0, nullptr, 0) == 0;
}

// Records that `a` is now targeted (or not). A pending change the other
// way cancels out: the kernel still has what it had at the last
// take_changes, so only net changes are reported (re-upserting a pod, or
// rules that keep it, change nothing there).
void PodTargets::note_change(const Address& a, bool targeted) {
  auto [it, fresh] = changes_.try_emplace(a, targeted);
  if (!fresh && it->second != targeted) changes_.erase(it);
}

void PodTargets::add_refs(const Pod& p) {
  if (!p.targeted) return;
  targeted_pods_++;
  for (auto& a : p.ips)
    if (refs_[a]++ == 0) note_change(a, true);
}

void PodTargets::drop_refs(const Pod& p) {
  if (!p.targeted) return;
  targeted_pods_--;
  for (auto& a : p.ips) {
    auto it = refs_.find(a);
    if (it == refs_.end()) continue;
    if (--it->second == 0) {
      refs_.erase(it);
      note_change(a, false);
    }
  }
}

void PodTargets::set_rules(const TargetRules& rules) {
  auto re = compile(rules.regex.empty() ? ".*" : rules.regex);
  for (auto& [uid, p] : pods_) drop_refs(p);
  re_ = std::move(re);
  rules_ = rules;
  for (auto& [uid, p] : pods_) {
    p.targeted = match(p.namespace_, p.name);
    add_refs(p);
  }
}

void PodTargets::upsert(const identity::PodObject& pod) {
  Pod next{pod.namespace_, pod.name, {}, match(pod.namespace_, pod.name)};
  for (auto& ip : pod.ips) next.ips.emplace_back(ip.version, std::string(reinterpret_cast<const char*>(ip.addr), 16));
  auto it = pods_.find(pod.uid);
  if (it != pods_.end()) drop_refs(it->second);
  add_refs(next);
  pods_[pod.uid] = std::move(next);
}

void PodTargets::remove(const std::string& uid) {
  auto it = pods_.find(uid);
  if (it == pods_.end()) return;
  drop_refs(it->second);
  pods_.erase(it);
}

std::vector<PodTargets::Address> PodTargets::addresses() const {
  std::vector<Address> out;
  for (auto& [a, n] : refs_) out.push_back(a);
  return out;
}

std::vector<std::pair<PodTargets::Address, bool>> PodTargets::take_changes() {
  std::vector<std::pair<Address, bool>> out(changes_.begin(), changes_.end());
  changes_.clear();
  return out;
}

nlohmann::json PodTargets::status() const {
  return {{"active", rules_.active()},
          {"regex", rules_.regex},
          {"namespaces", rules_.namespaces},
          {"excludedNamespaces", rules_.excluded},
          {"pods", pods_.size()},
          {"targeted_pods", targeted_pods_},
          {"addresses", refs_.size()}};
}

}  // namespace tapwire::sensor
