// Loads the identity programs (bpf/identity.bpf.c), attaches them to the root
// of the cgroup v2 hierarchy and to the sched_process_exec/exit raw
// tracepoints, and drains their ring buffer: which process and cgroup own the
// sockets that carry the captured traffic (docs/IDENTITY.md).
//
// Attachments are bpf_links: the cgroup programs join whatever else is
// attached to the root (multi-attach), and the destructor detaches exactly
// these links, nothing of other agents.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "identity_cgroups.hpp"
#include "identity_procfs.hpp"
#include "tapwire_abi.h"

struct identity_bpf;
struct bpf_link;

namespace tapwire::sensor {

class BpfRingReader;

// Names for metrics and logs, indexed like tw_ident_counters.
inline constexpr std::array<std::string_view, TW_IDENT_DROP__MAX> kIdentDropNames = {
    "ringbuf_full",
    "no_storage",
    "bad_header",
};
// Event type names (enum tw_ident_event_type); "" for unused slots.
std::string_view ident_event_name(unsigned type);

struct IdentityCounters {
  std::array<uint64_t, TW_IDENT_TYPE_SLOTS> emitted{};  // by enum tw_ident_event_type, summed over CPUs
  std::array<uint64_t, TW_IDENT_DROP__MAX> drops{};  // by enum tw_ident_drop_reason, summed over CPUs
  // Userspace: records read from the ring that failed validation (size,
  // type, field ranges) and were skipped. Never expected: a sign of an ABI
  // mismatch between the programs and this build.
  uint64_t invalid_records = 0;
  uint64_t total_drops() const;
};

struct IdentityOptions {
  uint32_t ring_bytes = 4u << 20;  // rounded up to a power of two of pages
  uint64_t wakeup_bytes = 64u << 10;  // the programs wake a poller once this much is queued
  std::string cgroup2_mount;  // empty: found in /proc/self/mountinfo
  // The netns cookie of sockets older than the hooks: from the cgroup_skb
  // helper where the kernel has it (added in 2025), else from the socket's BTF type.
  // false forces the latter (tests of what older kernels do).
  bool skb_netns_cookie_helper = true;
};

// Not thread-safe: one thread drains, reads counters and resolves cgroups.
class IdentityCollector {
 public:
  // Loads and attaches. Throws std::runtime_error with one line saying what
  // failed, why, and what to do (privileges, no cgroup2, no BTF...).
  explicit IdentityCollector(uint32_t ring_bytes = 4u << 20);
  explicit IdentityCollector(const IdentityOptions& opt);
  ~IdentityCollector();
  IdentityCollector(const IdentityCollector&) = delete;
  IdentityCollector& operator=(const IdentityCollector&) = delete;

  // The ring buffer's map fd: poll/epoll it for readability. The programs
  // wake it only once wakeup_bytes are queued, so drain on a timer too.
  int ring_fd() const;
  uint32_t ring_bytes() const { return ring_bytes_; }

  // Hands up to max records to the callbacks, in ring order, with ts_ns
  // converted to CLOCK_REALTIME; records that fail validation are skipped
  // and counted (counters().invalid_records). Returns the records handed
  // over. Callbacks get a copy: they may keep it.
  size_t drain(const std::function<void(const tw_sock_event&)>& on_sock,
               const std::function<void(const tw_exec_event&)>& on_exec, size_t max = SIZE_MAX);

  IdentityCounters counters() const;

  // The processes running now, from /proc (the events cover later ones).
  std::vector<ProcessInfo> scan_processes() const;

  // The path below the cgroup2 mount of a cgroup id from an event ("/" for
  // the root); nullopt if no such cgroup is found (gone before it was
  // seen). Misses walk the hierarchy, at most once per second.
  std::optional<std::string> cgroup_path(uint64_t cgroup_id);

  const std::string& cgroup2_mount() const { return cgroup2_mount_; }

  // IDs of the loaded programs (bpftool prog show id N; run-time stats).
  std::vector<uint32_t> prog_ids() const;

 private:
  void attach();
  void release();

  identity_bpf* skel_ = nullptr;
  std::vector<bpf_link*> links_;
  std::unique_ptr<BpfRingReader> ring_;
  uint32_t ring_bytes_ = 0;
  std::string cgroup2_mount_;
  std::unique_ptr<CgroupResolver> cgroups_;
  uint64_t invalid_records_ = 0;
};

}  // namespace tapwire::sensor
