// What `tapwire flows`, `map` and `packets` read flows from: the sensor's
// data dir (DATA_DIR/flows/), a snapshot (its flows/), a dissection DB (its
// flows table) or a pcap (the userspace tracker). One record per flow, as
// docs/FLOWS.md shows it, with the flow's times and key kept alongside.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "segment_format.h"

namespace tapwire::flows {
struct Flow;
}

namespace tapwire::cli {

struct FlowSourceOptions {
  std::string data_dir, snapshot, db, pcap;
  std::string from, to;
};

// Adds --data-dir, --snapshot, --db, --pcap, --from, --to to `sub`.
void add_flow_source_options(CLI::App& sub, FlowSourceOptions& o, bool with_db = true);

struct FlowRow {
  nlohmann::ordered_json rec;  // the flow record
  uint64_t first_ns = 0, last_ns = 0;
  bool have_key = false;  // key is valid (every source but a DB written without it)
  tw_seg_flow raw{};  // the flow stream's or tracker's record when have_key
  const flows::Flow* flow = nullptr;  // the named flow rec was made of (not for a DB's rows)
};

struct LoadedFlows {
  size_t flows = 0;  // flows visited
  std::string db_path;  // a dissection DB to read calls from ("" if none)
  std::string segments_dir;  // the packets' segments ("" for a pcap or a DB)
  std::string source;  // for messages: "DATA_DIR/flows", "FILE.pcap", ...
  uint64_t from_ns = 0, to_ns = 0;  // the window (0 = unbounded)
};

// Calls `visit` with each flow active in the window, in first_seen order,
// one at a time (the row is reused: keep what you need). What the source
// holds meanwhile is each flow's last record (360 bytes); the JSON of one
// flow at a time. Throws CliError for a missing or unreadable source or bad
// times.
using FlowVisitor = std::function<void(const FlowRow&)>;
LoadedFlows load_flows(const FlowSourceOptions& o, const FlowVisitor& visit);
// --from/--to as ns (0 = unbounded); throws CliError.
void parse_window(const FlowSourceOptions& o, uint64_t& from_ns, uint64_t& to_ns);

// Readable helpers
std::string flow_end_label(const nlohmann::ordered_json& end, bool with_names = true);
std::string json_str(const nlohmann::ordered_json& j, const char* k);

}  // namespace tapwire::cli
