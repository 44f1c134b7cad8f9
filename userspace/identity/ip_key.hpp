// An IPv4 or IPv6 address as a fixed-size key: the wire form the capture
// records use (IPv4 in the first 4 bytes, the rest zero).
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace tapwire::identity {

struct IpKey {
  uint8_t version = 0;  // 4 or 6; 0 = none
  uint8_t addr[16] = {};

  static IpKey from_wire(uint8_t version, const uint8_t* addr) {
    IpKey k;
    k.version = version;
    std::memcpy(k.addr, addr, version == 6 ? 16 : 4);
    return k;
  }
  // "10.0.0.1", "fd00::1"; nullopt if it is neither.
  static std::optional<IpKey> parse(std::string_view text);
  std::string str() const;
  bool is_unspecified() const;  // 0.0.0.0 or ::
  bool operator==(const IpKey& o) const { return version == o.version && std::memcmp(addr, o.addr, 16) == 0; }
};

struct IpKeyHash {
  size_t operator()(const IpKey& k) const {
    uint64_t a, b;
    std::memcpy(&a, k.addr, 8);
    std::memcpy(&b, k.addr + 8, 8);
    uint64_t h = (a * 0x9e3779b97f4a7c15ull) ^ (b + 0x632be59bd9b4e019ull + (a << 6) + (a >> 2)) ^ k.version;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    return static_cast<size_t>(h ^ (h >> 33));
  }
};

}  // namespace tapwire::identity
