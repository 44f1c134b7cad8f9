#include "call_identity.hpp"

namespace tapwire::dissect {

std::string identity_dir_for_segments(const std::string& segments_dir) {
  std::string d = segments_dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  if (d.size() >= 9 && d.compare(d.size() - 9, 9, "/segments") == 0) return d.substr(0, d.size() - 9) + "/identity";
  if (d == "segments") return "identity";
  return d + "/identity";
}

CallIdentity::CallIdentity(const std::string& identity_dir, bool follow)
    : feed_(identity_dir, follow), enabled_(!identity_dir.empty()) {}

void CallIdentity::at(uint64_t ts_ns) {
  if (!enabled_) return;
  feed_.advance(table_, ts_ns);
  if (ts_ns > last_prune_ + 60'000'000'000ull) {
    last_prune_ = ts_ns;
    table_.prune(ts_ns);
  }
}

void CallIdentity::annotate(Call& c) {
  if (!enabled_) return;
  c.node = table_.node();
  const auto src = identity::IpKey::from_wire(c.src.ip_version, c.src.addr);
  const auto dst = identity::IpKey::from_wire(c.dst.ip_version, c.dst.addr);
  c.src.identity = table_.resolve(c.l4_proto, src, c.src.port, dst, c.dst.port, c.ts_ns);
  c.dst.identity = table_.resolve(c.l4_proto, dst, c.dst.port, src, c.src.port, c.ts_ns);
}

}  // namespace tapwire::dissect
