#include "protocol.hpp"

namespace tapwire::proto {
namespace {

const std::pair<uint32_t, const char*> kFlagNames[] = {
    {kFlagGap, "gap"},
    {kFlagTruncated, "truncated"},
    {kFlagOrphanResponse, "orphan_response"},
    {kFlagTimeout, "timeout"},
    {kFlagClosed, "closed"},
    {kFlagUpgrade, "upgrade"},
    {kFlagBodyTruncated, "body_truncated"},
    {kFlagMemoryShed, "memory_shed"},
    {kFlagIncomplete, "incomplete"},
    {kFlagBodyDecodeError, "body_decode_error"},
    {kFlagReset, "reset"},
    {kFlagHeadersLost, "headers_lost"},
    {kFlagProtocolError, "protocol_error"},
};

}  // namespace

std::vector<std::string> flag_names(uint32_t flags) {
  std::vector<std::string> out;
  for (auto& [bit, name] : kFlagNames)
    if (flags & bit) out.emplace_back(name);
  return out;
}

int64_t CallContent::duration_us() const {
  if (one_message) return end_ns >= ts_ns && end_ns ? static_cast<int64_t>((end_ns - ts_ns) / 1000) : -1;
  if (!has_response() || !has_request() || end_ns < ts_ns) return -1;
  return static_cast<int64_t>((end_ns - ts_ns) / 1000);
}

size_t content_heap_bytes(const CallContent& c) {
  size_t n = 0;
  if (c.request) n += c.request->heap_bytes();
  if (c.response) n += c.response->heap_bytes();
  return n;
}

const ProtocolInfo* find_protocol(std::string_view name) {
  for (auto& p : protocols())
    if (name == p.name) return &p;
  return nullptr;
}

std::vector<std::string> dissector_names() {
  std::vector<std::string> out;
  for (auto& p : protocols()) {
    bool seen = false;
    for (auto& n : out) seen = seen || n == p.dissector;
    if (!seen) out.emplace_back(p.dissector);
  }
  return out;
}

}  // namespace tapwire::proto
