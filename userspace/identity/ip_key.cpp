#include "ip_key.hpp"

#include <arpa/inet.h>

namespace tapwire::identity {

std::optional<IpKey> IpKey::parse(std::string_view text) {
  // inet_pton reads a C string: an embedded NUL would make "10.0.0.1\0junk"
  // an address (tests/fuzz/regressions/kube_api).
  if (text.empty() || text.size() >= INET6_ADDRSTRLEN || text.find('\0') != std::string_view::npos)
    return std::nullopt;
  char buf[INET6_ADDRSTRLEN] = {};
  std::memcpy(buf, text.data(), text.size());
  IpKey k;
  if (inet_pton(AF_INET, buf, k.addr) == 1) {
    k.version = 4;
    return k;
  }
  if (inet_pton(AF_INET6, buf, k.addr) == 1) {
    k.version = 6;
    return k;
  }
  return std::nullopt;
}

std::string IpKey::str() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (version != 4 && version != 6) return {};
  inet_ntop(version == 6 ? AF_INET6 : AF_INET, addr, buf, sizeof buf);
  return buf;
}

bool IpKey::is_unspecified() const {
  for (int i = 0; i < (version == 6 ? 16 : 4); i++)
    if (addr[i]) return false;
  return true;
}

}  // namespace tapwire::identity
