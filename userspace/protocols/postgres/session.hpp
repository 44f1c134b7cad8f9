// PostgreSQL on the protocol interface (frontend/backend protocol v3):
// the startup exchange (one call ending at ReadyForQuery, passwords never
// recorded), SSLRequest/GSSENCRequest and their one-byte answer (accepted:
// the connection is encrypted, dissection stops), CancelRequest (a call
// without response), simple queries (one call per Query, up to
// ReadyForQuery, every statement's CommandComplete kept) and the extended
// protocol (one call per Execute, paired with its Parse by statement name,
// remembered per connection up to a cap; a Parse never executed is a call
// of its own), COPY in and out counted. Responses pair with requests in
// order: the server answers every message in order and, after an error in
// the extended protocol, skips to the next Sync.
#pragma once

#include "postgres/postgres.hpp"
#include "protocol.hpp"

namespace tapwire::proto {

class PostgresProtocol final : public StreamProtocol {
 public:
  Detection detect(std::span<const uint8_t> first, int side, const FlowView& flow) const override;
  std::unique_ptr<StreamSession> open(SessionContext& ctx) const override;
};

}  // namespace tapwire::proto
