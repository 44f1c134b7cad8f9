// Redis (RESP2 and RESP3) on the protocol interface: commands paired with
// replies in order on one connection (pipelining, MULTI/QUEUED/EXEC
// included), pub/sub messages and other out-of-band pushes reported as
// calls of their own (a response without a request), RESP2 subscribe mode
// followed from the subscribe confirmations.
#pragma once

#include <memory>

#include "protocol.hpp"
#include "redis/resp.hpp"

namespace tapwire::proto {

inline constexpr const char* kRedis = "redis";

// A command (request) or a reply / push (response) as the record shows it.
struct RedisRecord final : Message {
  RespMessage msg;
  bool request = false;
  RedisRecord(RespMessage&& m, bool is_request) : msg(std::move(m)), request(is_request) {}
  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override { return proto::heap_bytes(sizeof(RedisRecord)) + msg.heap; }
  size_t body_bytes() const override;
};

// The command name of a command message, upper-cased ("" without one).
std::string redis_command_name(const RespMessage& m);

class RedisProtocol final : public StreamProtocol {
 public:
  Detection detect(std::span<const uint8_t> first, int side, const FlowView& flow) const override;
  std::unique_ptr<StreamSession> open(SessionContext& ctx) const override;
};

}  // namespace tapwire::proto
