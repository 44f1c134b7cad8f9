// Loads the capture BPF programs (bpf/capture.bpf.c) through the bpftool
// skeleton, sizes and maps the per-CPU capture rings, and gives userspace
// its handles on the maps: rings to drain, counters to read, filters to set.
//
// The rule set (filters, snap length, interface set, pod targeting on/off)
// lives in two generations (tapwire_abi.h, TW_RULE_GENERATIONS). A change
// fills the generation not in force, switches the programs to it with one
// store, waits until no program can still be reading the old one, and then
// clears the old one: every packet is judged by the old rules or by the new
// ones, never by a mix or by a half-written set.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "tapwire_abi.h"

struct capture_bpf;

namespace tapwire::sensor {

struct CaptureFilters {
  std::vector<std::string> allow_cidrs, deny_cidrs;  // "10.0.0.0/8", "fd00::/8", "1.2.3.4"
  std::vector<uint16_t> allow_ports, deny_ports;
  uint32_t snaplen = 0;  // 0 = whole payload
};

// Flow accounting in the kernel (docs/FLOWS.md): the size of the flow table
// (fixed at load) and the protocols accounted (tap.enabledDissectors tcp/udp).
struct FlowAccounting {
  uint32_t max_flows = TW_FLOWS_DEFAULT_MAX;
  bool tcp = true, udp = true;
};

class BpfCapture {
 public:
  // Throws std::runtime_error with a one-line message (no privileges, no BTF, ...).
  BpfCapture(uint32_t ring_bytes_per_cpu, uint64_t wakeup_bytes, FlowAccounting flows = {});
  ~BpfCapture();
  BpfCapture(const BpfCapture&) = delete;
  BpfCapture& operator=(const BpfCapture&) = delete;

  int ingress_prog_fd() const;
  int egress_prog_fd() const;
  // The capture rings (tapwire_abi.h, struct tw_cring_hdr), one per
  // possible CPU: ring(cpu) is its header page, its data area follows.
  uint32_t ring_count() const { return ring_count_; }
  uint8_t* ring(uint32_t cpu) const { return rings_ + static_cast<size_t>(cpu) * ring_stride(); }
  uint32_t ring_bytes() const { return ring_bytes_; }  // each ring's data area
  // A BPF ring buffer of CPU numbers: a ring that fills past wakeup_bytes
  // puts its CPU here once, which makes this fd readable.
  int doorbell_fd() const;

  // Replaces the filters and the snap length in one step. With keep_ifaces,
  // the interface set shrinks to those ifindexes in the same step (a reload
  // that drops interfaces). Throws std::runtime_error (one line) on a bad
  // CIDR or too many rules, and then nothing changes.
  void set_filters(const CaptureFilters& f, const std::set<uint32_t>* keep_ifaces = nullptr);
  // Adds an interface to the interface set of the rules in force: capture on
  // it, and whether it has an L2 header. One map update: atomic by itself.
  void set_interface(uint32_t ifindex, bool has_l2);
  void forget_interface(uint32_t ifindex);

  // Pod targeting: with it on, only traffic to or from an address in the
  // target set is captured. The set is changed address by address, so a
  // packet never sees a half-written set; switching it on or off is a new
  // rule generation.
  void set_targeting(bool on);
  bool targeting() const { return targeting_; }
  void add_target(uint8_t ip_version, const uint8_t addr[16]);
  void remove_target(uint8_t ip_version, const uint8_t addr[16]);

  // The flow table (key tw_flow_key, value tw_flow_value) and the ring of
  // flows the programs ended (tw_flow_end_rec).
  int flows_fd() const;
  int flow_ends_fd() const;
  uint32_t max_flows() const { return flows_.max_flows; }
  const FlowAccounting& flow_accounting() const { return flows_; }
  // Turns the accounting of TCP / UDP on or off: a new rule generation.
  void set_flow_protocols(bool tcp, bool udp);

  // Counters per CPU (index = CPU id).
  std::vector<tw_counters> read_counters() const;

  // The rule generation in force, and how many times it was switched.
  uint32_t active_generation() const { return active_; }
  uint64_t generation_switches() const { return switches_; }

 private:
  struct Rules {
    std::vector<std::pair<tw_cidr4_key, uint32_t>> cidr4;
    std::vector<std::pair<tw_cidr6_key, uint32_t>> cidr6;
    std::vector<std::pair<uint16_t, uint32_t>> ports;
    uint32_t flags = 0;  // TW_SET_* of the filters alone
    uint32_t snaplen = 0;
  };
  capture_bpf* skel_ = nullptr;
  uint8_t* rings_ = nullptr;  // the tw_crings array, mmap'd
  uint32_t ring_count_ = 0;
  uint32_t ring_bytes_;
  size_t ring_stride() const { return TW_CRING_HDR + size_t{ring_bytes_} + TW_CRING_SLACK; }
  Rules rules_;
  std::map<uint32_t, uint32_t> ifaces_;  // ifindex -> TW_IF_* (the set in force)
  bool targeting_ = false;
  FlowAccounting flows_;
  uint32_t active_ = 0;
  uint64_t switches_ = 0;
  bool grace_pending_ = false;  // a switch could not wait for the old generation's readers
  static Rules parse(const CaptureFilters& f);
  void commit(const Rules& r, const std::map<uint32_t, uint32_t>& ifaces, bool targeting);
  void clear_generation(uint32_t gen);
  bool wait_for_readers(uint32_t gen);
  void fill_generation(uint32_t gen, const Rules& r, const std::map<uint32_t, uint32_t>& ifaces, bool targeting);
  int inner_fd(const char* what, uint32_t gen) const;
  void release();
};

}  // namespace tapwire::sensor
