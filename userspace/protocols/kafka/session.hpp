// Kafka on the protocol interface: requests paired with their responses by
// correlation id (a connection's pending requests, bounded), one record per
// call. Sizes are checked (over 100 MiB is a protocol error), each
// direction resynchronises at the next plausible message after broken
// input or a lost size, and a connection joined in the middle is taken up
// at its next message boundary.
#pragma once

#include <memory>

#include "kafka/kafka.hpp"
#include "protocol.hpp"

namespace tapwire::proto {

inline constexpr const char* kKafka = "kafka";

struct KafkaRequestRecord final : Message {
  KafkaRequest msg;
  explicit KafkaRequestRecord(KafkaRequest&& m) : msg(std::move(m)) {}
  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override { return proto::heap_bytes(sizeof(KafkaRequestRecord)) + msg.heap_bytes(); }
};

struct KafkaResponseRecord final : Message {
  KafkaResponse msg;
  explicit KafkaResponseRecord(KafkaResponse&& m) : msg(m) {}
  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override { return proto::heap_bytes(sizeof(KafkaResponseRecord)); }
};

class KafkaProtocol final : public StreamProtocol {
 public:
  Detection detect(std::span<const uint8_t> first, int side, const FlowView& flow) const override;
  std::unique_ptr<StreamSession> open(SessionContext& ctx) const override;
};

}  // namespace tapwire::proto
