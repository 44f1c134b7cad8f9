// DNS messages (RFC 1035, 3596, 2782): over UDP one message per datagram,
// over TCP each message behind a 2-byte length.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "parse.hpp"

namespace tapwire::proto {

struct DnsLimits {
  size_t max_records = 256;  // questions + answers kept per message
  size_t max_name_hops = 32;  // compression pointers followed per name (loop protection)
};

struct DnsQuestion {
  std::string name;  // dotted, no trailing dot ("" for the root), escaped like dig (\\DDD for odd bytes)
  uint16_t qtype = 0;
  uint16_t qclass = 0;
};

struct DnsAnswer {
  std::string name;
  uint16_t type = 0;
  uint16_t rclass = 0;
  uint32_t ttl = 0;
  // Readable data: A/AAAA the address; CNAME/NS/PTR the name; MX "10 mx.example.com";
  // TXT the strings joined by spaces, each in double quotes; SRV "prio weight port target";
  // SOA "mname rname serial refresh retry expire minimum"; others "\\# <len> <hex>" (RFC 3597).
  // A root name inside data is written "." (null MX "0 ."); A, AAAA and SRV are decoded
  // for class IN only (other classes give the RFC 3597 form).
  std::string data;
};

struct DnsMessage {
  uint16_t id = 0;
  bool is_response = false;
  uint8_t opcode = 0;
  uint8_t rcode = 0;
  bool truncated = false;  // TC bit
  bool authoritative = false;
  bool recursion_desired = false;
  bool recursion_available = false;
  std::vector<DnsQuestion> questions;
  std::vector<DnsAnswer> answers;  // answer section only
  uint16_t authority_count = 0;
  uint16_t additional_count = 0;
  bool records_truncated = false;  // more records than max_records
};

// Parses one whole DNS message. Done, or Invalid (consumed = msg.size()).
// All four sections are walked and checked; authority and additional records
// are not kept. With the TC bit set, a message that ends early is Done with
// the records that are complete. Bytes after the last record are tolerated.
// `rcode` is the header's 4 bits (an EDNS extended rcode is not merged in).
ParseResult parse_dns(std::span<const uint8_t> msg, DnsMessage& out, const DnsLimits& limits = {});

// DNS over TCP: splits a stream into length-prefixed messages. Returns
// NeedMoreData (consumed 0) until a whole message is present, then Done with
// consumed = 2 + length and `out` filled (or Invalid with consumed = 2 + length
// if the message inside does not parse).
ParseResult parse_dns_tcp(std::span<const uint8_t> stream, DnsMessage& out, const DnsLimits& limits = {});

// Names for the report: qtype 1 -> "A", 28 -> "AAAA", ..., unknown -> "TYPE<n>";
// rcode 0 -> "NOERROR", 3 -> "NXDOMAIN", ..., unknown -> "RCODE<n>".
std::string dns_type_name(uint16_t type);
std::string dns_rcode_name(uint8_t rcode);

// Content check for protocol detection: is this plausibly a DNS message
// (sane header counts, a parseable first question)?
bool looks_like_dns(std::span<const uint8_t> msg);

}  // namespace tapwire::proto
