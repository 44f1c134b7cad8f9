// ICMP and ICMPv6 on the protocol interface, as records next to the calls:
// an echo request paired with its reply (the round trip), and the errors
// that tell why a call failed (destination unreachable, time exceeded,
// packet too big, parameter problem) on the connection they are about. The
// engine hands every ICMP message here whole (the capture's payload of an
// ICMP packet is the ICMP message, header included); nothing else is
// recorded (neighbour discovery, router advertisements, MLD are counted).
#pragma once

#include <memory>
#include <string>

#include "protocol.hpp"

namespace tapwire::proto {

inline constexpr const char* kIcmp = "icmp";

// One ICMP message as the record shows it.
struct IcmpRecord final : Message {
  uint8_t version = 4;  // 4: ICMP, 6: ICMPv6
  uint8_t type = 0, code = 0;
  // Echo: identifier, sequence number and data bytes.
  bool echo = false;
  uint16_t id = 0, seq = 0;
  uint32_t size = 0;
  // An error: who sent it, the MTU it gives (packet too big, fragmentation
  // needed), the pointer of a parameter problem, and the header of the
  // packet it is about.
  std::string reporter;
  uint32_t mtu = 0;
  int32_t pointer = -1;
  bool has_original = false;
  uint8_t original_l4 = 0;
  std::string original_src, original_dst;
  uint16_t original_sport = 0, original_dport = 0;
  bool original_echo = false;
  uint16_t original_id = 0, original_seq = 0;

  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override;
};

// The names the record uses ("echo-request", "destination-unreachable",
// "port-unreachable", ...), empty for an unknown code.
const char* icmp_type_name(uint8_t version, uint8_t type);
const char* icmp_code_name(uint8_t version, uint8_t type, uint8_t code);

class IcmpProtocol final : public DatagramProtocol {
 public:
  std::unique_ptr<DatagramSession> open(DatagramContext& ctx) const override;
};

}  // namespace tapwire::proto
