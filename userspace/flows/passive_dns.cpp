#include "passive_dns.hpp"

#include <algorithm>
#include <cctype>
#include <map>
#include <set>

namespace tapwire::flows {
namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  while (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

}  // namespace

void PassiveDns::add(const std::string& ip, const std::string& name, uint64_t ts_ns, uint32_t ttl) {
  auto it = by_ip_.find(ip);
  if (it == by_ip_.end()) {
    if (by_ip_.size() >= kMaxAddresses) return;
    it = by_ip_.emplace(ip, std::vector<Seen>{}).first;
  }
  auto& v = it->second;
  const std::string n = lower(name);
  // Keep it sorted by time (answers mostly arrive in order).
  auto pos = std::upper_bound(v.begin(), v.end(), ts_ns, [](uint64_t t, const Seen& s) { return t < s.ts_ns; });
  for (auto p = pos; p != v.begin();) {  // the same answer twice (DB rows and a scan)
    --p;
    if (p->ts_ns != ts_ns) break;
    if (p->name == n) return;
  }
  v.insert(pos, Seen{ts_ns, n, ttl});
  if (v.size() > kMaxAnswersPerAddress) v.erase(v.begin());
}

std::vector<PassiveDns::Answer> PassiveDns::answers_of(const proto::DnsMessage& m) {
  std::vector<Answer> out;
  if (!m.is_response || m.rcode != 0) return out;
  // CNAME edges: owner -> target
  std::multimap<std::string, std::string> cname;
  for (auto& a : m.answers)
    if (a.type == 5) cname.emplace(lower(a.name), lower(a.data));
  // The chain from each question's name
  std::map<std::string, std::vector<std::string>> chain_of;  // owner name -> names leading to it
  for (auto& q : m.questions) {
    std::vector<std::string> chain{lower(q.name)};
    std::set<std::string> seen{chain.back()};
    chain_of[chain.back()] = chain;
    for (size_t hop = 0; hop < 16; hop++) {
      auto it = cname.find(chain.back());
      if (it == cname.end() || seen.count(it->second)) break;
      chain.push_back(it->second);
      seen.insert(it->second);
      chain_of[chain.back()] = chain;
    }
  }
  for (auto& a : m.answers) {
    if (a.type != 1 && a.type != 28) continue;
    const std::string owner = lower(a.name);
    auto it = chain_of.find(owner);
    if (it == chain_of.end()) {
      out.push_back({a.data, owner, a.ttl});
      continue;
    }
    for (auto& n : it->second) out.push_back({a.data, n, a.ttl});
  }
  return out;
}

void PassiveDns::add_message(const proto::DnsMessage& m, uint64_t ts_ns) {
  for (auto& a : answers_of(m)) add(a.ip, a.name, ts_ns, a.ttl);
}

bool PassiveDns::add_payload(std::span<const uint8_t> payload, uint64_t ts_ns) {
  proto::DnsMessage m;
  if (proto::parse_dns(payload, m).status != proto::ParseStatus::Done || !m.is_response) return false;
  add_message(m, ts_ns);
  return true;
}

std::vector<std::string> PassiveDns::names_at(const std::string& ip, uint64_t ts_ns) const {
  std::vector<std::string> out;
  auto it = by_ip_.find(ip);
  if (it == by_ip_.end() || it->second.empty()) return out;
  const auto& v = it->second;
  auto pos = std::upper_bound(v.begin(), v.end(), ts_ns, [](uint64_t t, const Seen& s) { return t < s.ts_ns; });
  uint64_t at;
  if (pos != v.begin())
    at = std::prev(pos)->ts_ns;  // the latest answer at or before ts_ns
  else
    at = v.front().ts_ns;  // none before: the earliest after
  for (auto& s : v)
    if (s.ts_ns == at && std::find(out.begin(), out.end(), s.name) == out.end()) out.push_back(s.name);
  return out;
}

std::vector<PassiveDns::Name> PassiveDns::all() const {
  std::vector<Name> out;
  for (auto& [ip, v] : by_ip_) {
    std::map<std::string, Name> names;
    for (auto& s : v) {
      auto [it, fresh] = names.emplace(s.name, Name{ip, s.name, s.ts_ns, s.ts_ns, s.ttl});
      if (!fresh) {
        it->second.last_seen = std::max(it->second.last_seen, s.ts_ns);
        it->second.first_seen = std::min(it->second.first_seen, s.ts_ns);
        it->second.ttl = s.ttl;
      }
    }
    for (auto& [n, rec] : names) out.push_back(rec);
  }
  return out;
}

}  // namespace tapwire::flows
