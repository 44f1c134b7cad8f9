#include "cidr.hpp"

#include <arpa/inet.h>

namespace tapwire {

Cidr parse_cidr(const std::string& text) {
  Cidr c;
  std::string addr = text;
  long prefix = -1;
  if (auto slash = text.find('/'); slash != std::string::npos) {
    addr = text.substr(0, slash);
    const std::string p = text.substr(slash + 1);
    if (p.empty() || p.size() > 3 || p.find_first_not_of("0123456789") != std::string::npos)
      throw CidrError("bad CIDR '" + text + "': the prefix length must be a number 0-128");
    prefix = std::stol(p);
  }
  if (inet_pton(AF_INET, addr.c_str(), c.addr) == 1) {
    if (prefix > 32) throw CidrError("bad CIDR '" + text + "': an IPv4 prefix is at most 32");
    c.family = AF_INET;
    c.prefix = prefix < 0 ? 32 : static_cast<uint32_t>(prefix);
  } else if (inet_pton(AF_INET6, addr.c_str(), c.addr) == 1) {
    if (prefix > 128) throw CidrError("bad CIDR '" + text + "': an IPv6 prefix is at most 128");
    c.family = AF_INET6;
    c.prefix = prefix < 0 ? 128 : static_cast<uint32_t>(prefix);
  } else {
    throw CidrError("bad CIDR '" + text + "': expected an IPv4 or IPv6 address with an optional /prefix");
  }
  return c;
}

}  // namespace tapwire
