// MongoDB on the protocol interface: messages of each direction framed by
// their header (each kept up to a cap, the rest skipped), requests paired
// with responses by responseTo == requestID, OP_MSG moreToCome requests
// reported alone, exhaust replies (moreToCome from the server) reported as
// responses of the request that started them. A direction that lost bytes
// (a gap, a connection joined mid-way) looks for the next message header.
#pragma once

#include <memory>

#include "mongodb/wire.hpp"
#include "protocol.hpp"

namespace tapwire::proto {

inline constexpr const char* kMongoDb = "mongodb";

struct MongoRecord final : Message {
  MongoMessage msg;
  bool request = true;
  MongoRecord(MongoMessage&& m, bool is_request) : msg(std::move(m)), request(is_request) {}
  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override { return proto::heap_bytes(sizeof(MongoRecord)) + msg.heap_bytes(); }
  size_t body_bytes() const override { return msg.document.size(); }
  size_t shed_body() override;
};

class MongoProtocol final : public StreamProtocol {
 public:
  Detection detect(std::span<const uint8_t> first, int side, const FlowView& flow) const override;
  std::unique_ptr<StreamSession> open(SessionContext& ctx) const override;
};

}  // namespace tapwire::proto
