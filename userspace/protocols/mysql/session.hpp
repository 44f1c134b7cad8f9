// MySQL / MariaDB on the protocol interface: detected from the server's
// HandshakeV10 (or, joined mid-connection, from a client's command
// packets), one call for the handshake ("connect") and one per command,
// paired in order (the protocol has one command in flight at a time).
#pragma once

#include <memory>
#include <string>

#include "protocol.hpp"

namespace tapwire::proto {

inline constexpr const char* kMysql = "mysql";

struct MysqlRequest final : Message {
  std::string command;  // "COM_QUERY", ..., "connect" for the handshake
  std::string query;  // COM_QUERY / COM_STMT_PREPARE text, or the prepared text of a COM_STMT_EXECUTE
  uint64_t query_size = 0;  // the text's bytes on the wire (more than query.size() when cut)
  bool has_query = false;
  bool has_statement_id = false;
  uint32_t statement_id = 0;
  std::string database, table, user, auth_plugin;
  bool tls = false, compress = false;
  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override;
  size_t body_bytes() const override { return query.size(); }
  size_t shed_body() override;
};

struct MysqlResponse final : Message {
  bool has_error = false;
  uint16_t error_code = 0;
  std::string sqlstate, error_message;
  bool has_ok = false;  // an OK packet (or EOF) ended it
  uint64_t affected_rows = 0, last_insert_id = 0;
  uint32_t warnings = 0;
  bool has_result_set = false;
  uint64_t rows = 0, columns = 0;
  uint32_t result_sets = 0;
  bool prepared = false;  // COM_STMT_PREPARE's answer
  uint32_t statement_id = 0;
  uint32_t params = 0;
  std::string info, local_infile;
  // The handshake's.
  std::string server_version, auth_switch;
  uint32_t connection_id = 0;
  bool has_connection_id = false, tls = false;
  bool connect = false;  // the handshake's answer
  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override;
};

class MysqlProtocol final : public StreamProtocol {
 public:
  Detection detect(std::span<const uint8_t> first, int side, const FlowView& flow) const override;
  std::unique_ptr<StreamSession> open(SessionContext& ctx) const override;
};

}  // namespace tapwire::proto
