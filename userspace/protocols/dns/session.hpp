// DNS on the protocol interface: over UDP (queries paired with answers by
// flow and transaction id, across all flows, with a timeout and a cap) and
// over TCP (length-prefixed messages on port 53, paired by id in order).
#pragma once

#include <memory>

#include "dns.hpp"
#include "protocol.hpp"

namespace tapwire::proto {

inline constexpr const char* kDns = "dns";

struct DnsRecord final : Message {
  DnsMessage msg;
  bool orphan = false;  // a response without its query: the record repeats qname and qtype
  explicit DnsRecord(DnsMessage&& m) : msg(std::move(m)) {}
  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override;
};

class DnsProtocol final : public StreamProtocol, public DatagramProtocol {
 public:
  Detection detect(std::span<const uint8_t> first, int side, const FlowView& flow) const override;
  std::unique_ptr<StreamSession> open(SessionContext& ctx) const override;
  std::unique_ptr<DatagramSession> open(DatagramContext& ctx) const override;
};

}  // namespace tapwire::proto
