// One API call: a request paired with its response (or with none), as the
// dissector reports it: what its protocol found (proto::CallContent) and
// where it happened (both ends, who they are, the node). Serialized as the
// call record of docs/CALL_RECORD.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dns.hpp"
#include "endpoint_identity.hpp"
#include "http1.hpp"
#include "protocol.hpp"

namespace tapwire::dissect {

using proto::CallFlag;
using proto::flag_names;
using proto::kFlagBodyDecodeError;
using proto::kFlagBodyTruncated;
using proto::kFlagClosed;
using proto::kFlagGap;
using proto::kFlagHeadersLost;
using proto::kFlagIncomplete;
using proto::kFlagMemoryShed;
using proto::kFlagOrphanResponse;
using proto::kFlagProtocolError;
using proto::kFlagReset;
using proto::kFlagTimeout;
using proto::kFlagTruncated;
using proto::kFlagUpgrade;

struct Endpoint {
  uint8_t ip_version = 4;
  uint8_t addr[16] = {};
  uint16_t port = 0;
  identity::EndpointIdentityPtr identity;  // who this end is, when known (docs/IDENTITY.md)
  std::string ip() const;  // text form
};

struct Call : proto::CallContent {
  Endpoint src, dst;  // client, server
  uint8_t l4_proto = 6;  // IPPROTO_TCP, IPPROTO_UDP, or for an ICMP record IPPROTO_ICMP/ICMPV6 (or the L4 of the packet an error is about)
  std::string node;  // the node whose sensor captured the call ("" if unknown)
  // Stable identity of the call: the same traffic dissected live, from a
  // snapshot or from a pcap gives the same id (flow, the protocol's
  // sequence or transaction id, and request time), so a resumed dissector
  // can tell calls it already reported.
  uint64_t key = 0;

  std::string id() const;  // key as 16 hex digits

  // HTTP/1 and DNS messages, when the call is of that protocol (else null).
  const proto::HttpMessage* http_request() const;
  const proto::HttpMessage* http_response() const;
  const proto::DnsMessage* dns_query() const;
  const proto::DnsMessage* dns_response() const;
};

// 16 hex digits.
std::string key_hex(uint64_t key);

// The call record (docs/CALL_RECORD.md) as JSON text, one line without its
// newline, appended to `out`. The DB stores the same pieces
// (record_message_json for request and response).
void write_record(const Call& c, std::string& out);
// The record as a JSON document: the same fields, the ends' names byte for
// byte (as the DB returns them; write_record makes bytes that are not UTF-8
// U+FFFD).
nlohmann::json to_json(const Call& c);
// A message's record object as JSON text ("null" for none).
std::string record_message_json(const proto::Message* m);
// One end as the record shows it.
void write_endpoint(JsonOut& out, const Endpoint& e);
// RFC 3339 UTC with nanoseconds.
std::string format_ts(uint64_t ns);

}  // namespace tapwire::dissect
