// Passive DNS: what the DNS answers seen on the node called an address at a
// time. An A or AAAA answer gives its address the name asked and every name
// of the CNAME chain that led to it.
//
// Bounded: at most kMaxAddresses addresses, and per address the
// kMaxAnswersPerAddress most recent answers (older ones are forgotten first).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "dns.hpp"

namespace tapwire::flows {

class PassiveDns {
 public:
  static constexpr size_t kMaxAddresses = 1u << 20;
  static constexpr size_t kMaxAnswersPerAddress = 32;

  // One name of an address (ip in text form) from an answer at ts_ns.
  void add(const std::string& ip, const std::string& name, uint64_t ts_ns, uint32_t ttl = 0);
  // Every A/AAAA answer of a response seen at ts_ns (CNAME chains followed).
  void add_message(const proto::DnsMessage& m, uint64_t ts_ns);
  // Parses a UDP DNS payload and adds its answers; false if it is not a response.
  bool add_payload(std::span<const uint8_t> payload, uint64_t ts_ns);

  // The names the address had at ts_ns: those of the latest answer at or
  // before it; if none, those of the earliest after it. Empty if unknown.
  std::vector<std::string> names_at(const std::string& ip, uint64_t ts_ns) const;

  struct Name {
    std::string ip, name;
    uint64_t first_seen = 0, last_seen = 0;
    uint32_t ttl = 0;
  };
  // (ip, name) pairs with the first and last answer that gave them.
  std::vector<Name> all() const;
  size_t addresses() const { return by_ip_.size(); }

  // A/AAAA answers of one response as (ip, name, ttl) triples, CNAMEs followed.
  struct Answer {
    std::string ip, name;
    uint32_t ttl = 0;
  };
  static std::vector<Answer> answers_of(const proto::DnsMessage& m);

 private:
  struct Seen {
    uint64_t ts_ns;
    std::string name;
    uint32_t ttl;
  };
  std::unordered_map<std::string, std::vector<Seen>> by_ip_;  // each sorted by time
};

}  // namespace tapwire::flows
