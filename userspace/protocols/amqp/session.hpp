// AMQP 0-9-1 on the protocol interface. Synchronous methods are paired with
// their reply from the other side on the same channel (queue.declare with
// queue.declare-ok, basic.get with get-ok or get-empty, channel.close with
// close-ok, whichever side asked); a channel.close or connection.close
// answers the requests still waiting on that channel (on the connection)
// and is a call of its own with its close-ok. Asynchronous methods are
// one-message calls: basic.publish (with its content) as a request,
// basic.deliver and basic.return as responses, basic.ack / nack / reject as
// the side that sent them. Methods sent with no-wait are one-message calls.
#pragma once

#include <memory>

#include "amqp/amqp.hpp"
#include "protocol.hpp"

namespace tapwire::proto {

inline constexpr const char* kAmqp = "amqp";

struct AmqpRecord final : Message {
  AmqpMessage msg;
  explicit AmqpRecord(AmqpMessage&& m) : msg(std::move(m)) {}
  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override { return proto::heap_bytes(sizeof(AmqpRecord)) + msg.heap_bytes(); }
  size_t body_bytes() const override { return msg.body.size(); }
};

class AmqpProtocol final : public StreamProtocol {
 public:
  Detection detect(std::span<const uint8_t> first, int side, const FlowView& flow) const override;
  std::unique_ptr<StreamSession> open(SessionContext& ctx) const override;
};

// Which side sends a method: 0 the client, 1 the server, -1 either.
int amqp_sender(const AmqpMethodInfo& m);

}  // namespace tapwire::proto
