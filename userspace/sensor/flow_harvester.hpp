// Harvests the kernel's flow table (bpf/capture.bpf.c, tw_flows) into the
// flow stream (DATA_DIR/flows/, docs/FLOWS.md, shm/FORMAT.md TW_REC_FLOW):
// every second it reads every flow (a consistent copy of each: the entry's
// sequence word, tapwire_abi.h struct tw_flow_value),
// writes a record for each flow that is new, or that changed and whose last
// record is older than the interval, writes the final record of the flows
// that ended (and deletes them from the table), evicts when the table is
// nearly full, and writes the flows the programs ended themselves (a reused
// 4-tuple, tw_flow_ends). It also keeps the flow metrics by workload pair.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "ip_key.hpp"
#include "ring_drain.hpp"
#include "segment.hpp"
#include "tapwire_abi.h"
#include "workload_object.hpp"

namespace tapwire::sensor {

struct FlowHarvesterOptions {
  std::string dir;  // DATA_DIR/flows
  uint64_t storage_size = 64ull << 20;  // tap.flows.storageSize
  uint64_t segment_size = 16ull << 20;  // shrunk by the store to storage_size / 4
  uint64_t max_segment_age_ns = 60ull * 1000000000ull;
  uint64_t interval_ns = 10ull * 1000000000ull;  // tap.flows.interval
  uint64_t udp_timeout_ns = 60ull * 1000000000ull;  // tap.flows.udpTimeout
  uint64_t syn_timeout_ns = 30ull * 1000000000ull;  // tap.flows.synTimeout
  uint64_t tcp_idle_timeout_ns = 600ull * 1000000000ull;  // tap.flows.tcpIdleTimeout
  uint64_t close_linger_ns = 2ull * 1000000000ull;  // a closed or reset TCP flow ends this long after its last packet
  uint32_t metrics_max_pairs = 500;  // tap.flows.metricsMaxPairs
  std::string node_name;  // names the node's own addresses in the metrics
};

// Names an address for the flow metrics: (namespace, workload). Pods by
// their controller (or their own name), the node's own addresses by the
// node's name; anything else unknown ("", "").
class WorkloadNames {
 public:
  void set_node(const std::string& node, const std::vector<identity::IpKey>& addresses);
  void workload(const identity::Workload& w);
  std::pair<std::string, std::string> name(const identity::IpKey& ip) const;
  size_t pods() const { return pods_.size(); }

 private:
  struct Pod {
    std::string ns, workload;
    std::vector<identity::IpKey> ips;
  };
  std::unordered_map<std::string, Pod> pods_;  // by uid
  std::unordered_map<identity::IpKey, std::pair<std::string, std::string>, identity::IpKeyHash> by_ip_;
  std::unordered_map<identity::IpKey, std::string, identity::IpKeyHash> node_ips_;
};

struct FlowHarvesterStats {
  uint64_t active[2] = {0, 0};  // tcp, udp: in the table at the last harvest
  uint64_t created[2] = {0, 0};  // flows seen, by protocol
  uint64_t ended[8] = {};  // final records, by enum tw_flow_end
  uint64_t evicted_table_full = 0;
  uint64_t records = 0;  // TW_REC_FLOW written
  uint64_t write_failures = 0;  // records that could not be stored
  uint64_t delete_failures = 0;
  uint64_t torn_reads = 0;  // entries still being updated after every re-read (taken as read)
  uint64_t harvests = 0;
  uint64_t last_harvest_us = 0;  // how long the last harvest took
  uint64_t pairs_folded = 0;  // metric deltas that went to the _other series
};

class FlowHarvester {
 public:
  // flows_fd / ends_fd: BpfCapture::flows_fd(), flow_ends_fd(). Throws
  // shm::SegmentError if the stream's directory cannot be used.
  FlowHarvester(FlowHarvesterOptions opts, int flows_fd, int ends_fd, uint32_t max_flows);
  ~FlowHarvester();
  FlowHarvester(const FlowHarvester&) = delete;
  FlowHarvester& operator=(const FlowHarvester&) = delete;

  // One pass over the table; now_mono: CLOCK_MONOTONIC, mono_to_real: what
  // turns it into CLOCK_REALTIME.
  void harvest(uint64_t now_mono, uint64_t mono_to_real);
  // The flows the programs ended (reused 4-tuples): their final records.
  void drain_ends(uint64_t mono_to_real);
  // The sensor stops: every flow still in the table gets its final record
  // (end = stopped). The table itself goes with the programs.
  void stop(uint64_t now_mono, uint64_t mono_to_real);
  void tick(uint64_t now_real) { store_->tick(now_real); }
  void rotate() { store_->rotate(); }
  void set_timeouts(const FlowHarvesterOptions& o);

  WorkloadNames& names() { return names_; }
  const FlowHarvesterStats& stats() const { return st_; }
  const shm::SegmentStore& store() const { return *store_; }
  // status.json's "flows"; with_pairs: the per-pair series too (for the exporter).
  nlohmann::json status(const tw_counters& kernel, bool with_pairs) const;

  // The pure decisions, for tests: why the flow ends now (TW_FLOW_END_*), 0 if it lives.
  static uint8_t end_reason(const tw_flow_key& k, const tw_flow_state& st, uint64_t now_mono,
                            const FlowHarvesterOptions& o);
  // A flow that completed no handshake (evicted first when the table is full).
  static bool handshake_completed(const tw_flow_key& k, const tw_flow_state& st);

 private:
  struct Tracked {
    uint64_t first_mono = 0;  // identifies the flow in its entry (a reused entry has a new one)
    uint64_t first_real = 0;
    uint64_t flow_id = 0;
    uint64_t last_record_mono = 0;  // 0: no record yet
    uint64_t packets_recorded = 0;  // packets at the last record
    uint8_t records = 0;
    // For the metric deltas: what the last harvest counted.
    uint64_t m_packets = 0, m_bytes = 0, m_resets = 0, m_retrans = 0;
    bool seen = false;
  };
  using KeyBytes = std::string;  // the tw_flow_key's bytes
  struct PairCounters {
    uint64_t bytes = 0, packets = 0, connections = 0, resets = 0, retransmissions = 0;
  };
  using PairKey = std::tuple<std::string, std::string, std::string, std::string, std::string>;

  FlowHarvesterOptions opts_;
  int flows_fd_, ends_fd_;
  uint32_t max_flows_;
  std::unique_ptr<shm::SegmentStore> store_;
  std::unique_ptr<BpfRingReader> ends_;
  std::unordered_map<KeyBytes, Tracked> tracked_;
  std::map<PairKey, PairCounters> pairs_;
  WorkloadNames names_;
  FlowHarvesterStats st_;
  std::vector<uint8_t> batch_keys_, batch_values_;

  Tracked& track(const tw_flow_key& k, const tw_flow_state& st, uint64_t mono_to_real, bool* is_new);
  void write(const tw_flow_key& k, const tw_flow_state& st, Tracked& t, uint8_t end, uint64_t now_real,
             uint64_t mono_to_real);
  void account_metrics(const tw_flow_key& k, const tw_flow_state& st, Tracked& t, bool is_new);
  bool read_all(std::vector<std::pair<tw_flow_key, tw_flow_state>>& out);
  bool read_one(const tw_flow_key& k, tw_flow_value& v);
  bool remove(const tw_flow_key& k, const tw_flow_state& seen);
};

}  // namespace tapwire::sensor
