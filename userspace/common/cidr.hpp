// CIDRs as users write them in filters (tap.filters.cidrs, --allow-cidr,
// --deny-cidr): "10.0.0.0/8", "fd00::/8", or a bare address ("1.2.3.4" is
// 1.2.3.4/32, "fd00::1" is fd00::1/128). One parser, so that the config
// check and the sensor that loads the rules accept exactly the same text.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace tapwire {

struct Cidr {
  int family = 0;  // AF_INET or AF_INET6
  uint8_t addr[16] = {};  // network byte order; the first 4 bytes for IPv4
  uint32_t prefix = 0;  // 0-32 (IPv4) or 0-128 (IPv6)
};

// One line: "bad CIDR 'TEXT': why".
class CidrError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws CidrError. The prefix length is 1 to 3 decimal digits, at most 32
// for IPv4 and 128 for IPv6.
Cidr parse_cidr(const std::string& text);

}  // namespace tapwire
