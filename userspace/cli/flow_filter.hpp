// The flow filters of `tapwire flows`, `map` and `packets`, on flow records.
#pragma once

#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

namespace tapwire::cli {

struct FlowFilter {
  std::string namespace_, pod, workload, ip, protocol, state;
  int port = -1;
  bool reset = false, retransmitting = false, unanswered = false, refused = false;
  bool matches(const nlohmann::ordered_json& flow) const;
};

// full: also --state and the flag filters (flows); else ip/port/protocol only (packets).
void add_flow_filter_options(CLI::App& sub, FlowFilter& f, bool full = true);

}  // namespace tapwire::cli
