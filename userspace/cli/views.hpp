// What `tapwire map`, `workloads`, `export pcap` and `snapshot create`
// compute, as functions: the subcommands print their results, `tapwire
// serve` (userspace/serve/) answers HTTP requests with them. They throw
// CliError as the subcommands do.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "flow_source.hpp"
#include "pcapng_writer.hpp"
#include "segment.hpp"

namespace tapwire::cli {

// `tapwire map --format json`: {level, nodes, edges}.
nlohmann::ordered_json map_json(const FlowSourceOptions& src, const std::string& level, const std::string& namespace_);

// The identity stream of DATA_DIR (snapshot "") or of a snapshot (NAME or
// directory); throws CliError if there is none.
std::string identity_stream_dir(const std::string& data_dir, const std::string& snapshot);
// `tapwire workloads --json`: {node, kubernetes, pods[, at]} as the stream
// knew them at `at_ns` (nullopt: its end). `warning` gets a damaged
// segment's message ("" if none).
nlohmann::json workloads_json(const std::string& identity_dir, std::optional<uint64_t> at_ns,
                              std::string* warning = nullptr);
// {node, ips: [{ip, namespace, pod, workload, node, hostNetwork, services}][, at]}:
// the pods' addresses at `at_ns`, by address.
nlohmann::json ips_json(const std::string& identity_dir, std::optional<uint64_t> at_ns,
                        std::string* warning = nullptr);

// `tapwire export pcap`: checked and planned first (errors before any byte
// is written), then written.
struct PcapExportOptions {
  std::string data_dir, snapshot;  // snapshot "": the live ring
  std::string from, to;  // times as --from/--to take them ("" = unbounded)
  std::string flow;  // only this flow's packets ("" = all)
};
struct PcapPlan {
  std::string seg_dir;
  std::vector<shm::SegmentInfo> segments;
  uint64_t from_ns = 0, to_ns = UINT64_MAX;
  std::optional<tw_flow_key> flow_key;
};
PcapPlan plan_pcap_export(const PcapExportOptions& o);
struct PcapExportResult {
  bool ok = false;  // false: writing to the file failed
  PcapngStats stats;
  uint64_t read = 0, skipped = 0, vanished = 0, corrupt = 0;  // segments
};
// `warn` gets a line for each segment with a damaged record.
PcapExportResult write_pcap_export(const PcapPlan& p, FILE* fp,
                                   const std::function<void(const std::string&)>& warn = nullptr);

// snapshot::CreateOptions::request_rotate for the sensor listening on
// `control_socket`: throws snapshot::SnapshotError if it cannot be reached
// or refuses.
std::function<void()> sensor_rotate(const std::string& control_socket);
// tap.snapshots.storageSize: `size` (text such as 20GiB) if given, else
// from the config file if given, else the default. Throws CliError.
uint64_t snapshot_storage_limit(const std::string& size, const std::string& config_path);

}  // namespace tapwire::cli
