// Loads the capture BPF programs (bpf/capture.bpf.c) through the bpftool
// skeleton, creates one ring buffer per CPU, and gives userspace its handles
// on the maps: rings to drain, counters to read, filters to set.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tapwire_abi.h"

struct capture_bpf;

namespace tapwire::sensor {

struct CaptureFilters {
  std::vector<std::string> allow_cidrs, deny_cidrs;  // "10.0.0.0/8", "fd00::/8", "1.2.3.4"
  std::vector<uint16_t> allow_ports, deny_ports;
  uint32_t snaplen = 0;  // 0 = whole payload
};

class BpfCapture {
 public:
  // Throws std::runtime_error with a one-line message (no privileges, no BTF, ...).
  BpfCapture(uint32_t ring_bytes_per_cpu, uint64_t wakeup_bytes);
  ~BpfCapture();
  BpfCapture(const BpfCapture&) = delete;
  BpfCapture& operator=(const BpfCapture&) = delete;

  int ingress_prog_fd() const;
  int egress_prog_fd() const;
  // One ring buffer map fd per possible CPU (index = CPU id).
  const std::vector<int>& ring_fds() const { return ring_fds_; }
  uint32_t ring_bytes() const { return ring_bytes_; }

  // Replaces every filter map and setting. Throws on a bad CIDR.
  void set_filters(const CaptureFilters& f);
  // Marks an interface: capture on it, and whether it has an L2 header.
  void set_interface(uint32_t ifindex, bool has_l2);
  void forget_interface(uint32_t ifindex);

  // Pod targeting: with it on, only traffic to or from an address in the
  // target set is captured. The set is changed address by address, so a
  // packet never sees a half-written set.
  void set_targeting(bool on);
  bool targeting() const { return targeting_; }
  void add_target(uint8_t ip_version, const uint8_t addr[16]);
  void remove_target(uint8_t ip_version, const uint8_t addr[16]);

  // Counters per CPU (index = CPU id).
  std::vector<tw_counters> read_counters() const;

 private:
  capture_bpf* skel_ = nullptr;
  std::vector<int> ring_fds_;
  uint32_t ring_bytes_;
  bool iface_allowlist_ = true;
  uint32_t settings_flags_ = 0;
  uint32_t snaplen_ = 0;
  bool targeting_ = false;
  void write_settings();
  void release();
};

}  // namespace tapwire::sensor
