// Writes the identity stream (DATA_DIR/identity/, docs/IDENTITY.md): socket,
// process, cgroup and workload records as they happen, and at the start of
// every identity segment a state dump of everything still alive, so that any
// segment and those after it tell who was who at any time they cover. Keeps
// that live state, bounded.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "identity_records.hpp"
#include "segment.hpp"

namespace tapwire::sensor {

struct IdentityRecorderOptions {
  std::string dir;  // DATA_DIR/identity
  uint64_t storage_size = 256ull << 20;
  uint64_t segment_size = 32ull << 20;
  uint64_t max_segment_age_ns = 600ull * 1000000000ull;  // a dump at least this often
  size_t max_sockets = 1'000'000;  // live sockets remembered for dumps
  size_t max_processes = 500'000;
  size_t max_cgroups = 200'000;
  size_t max_objects = 1'000'000;  // Kubernetes objects
};

struct IdentityRecorderStats {
  uint64_t records = 0;  // written, dumps included
  uint64_t dumps = 0, dump_records = 0;
  uint64_t dumps_incomplete = 0;  // a dump that did not fit its segment
  uint64_t write_failures = 0;  // records that could not be stored
  uint64_t evicted = 0;  // live entries forgotten because a cap was reached
  uint64_t live_sockets = 0, live_processes = 0, cgroups = 0, objects = 0;
};

class IdentityRecorder {
 public:
  // cgroup_path: the path of a cgroup id below the cgroup2 mount, if it exists.
  IdentityRecorder(IdentityRecorderOptions opts, std::function<std::optional<std::string>(uint64_t)> cgroup_path);
  ~IdentityRecorder();
  IdentityRecorder(const IdentityRecorder&) = delete;
  IdentityRecorder& operator=(const IdentityRecorder&) = delete;

  void set_self(const identity::SelfObject& self, uint64_t now_ns);
  void socket(const tw_sock_event& ev);  // ts_ns CLOCK_REALTIME
  void process(const identity::ProcessRecord& p);
  void workload(const identity::Workload& w, uint64_t now_ns);
  void publish();
  void tick(uint64_t now_real_ns);
  void rotate();  // seals the open identity segment (snapshots)

  const IdentityRecorderStats& stats() const { return st_; }
  const shm::SegmentStore& store() const { return *store_; }

 private:
  IdentityRecorderOptions opts_;
  std::function<std::optional<std::string>(uint64_t)> cgroup_path_;
  std::unique_ptr<shm::SegmentStore> store_;
  IdentityRecorderStats st_;
  identity::SelfObject self_;
  uint64_t self_ts_ = 0;
  // Live state, restated by every dump. Sockets by cookie (an unconnected UDP
  // socket may be announced at several local addresses).
  std::unordered_map<uint64_t, std::vector<tw_sock_event>> sockets_;
  std::unordered_map<uint32_t, identity::ProcessRecord> processes_;
  std::unordered_map<uint64_t, identity::CgroupRecord> cgroups_;
  std::map<std::string, identity::WorkloadRecord> objects_;  // by state key
  uint64_t segment_size_ = 0;  // of the store now
  uint64_t last_dump_bytes_ = 0;
  std::map<std::string, uint64_t> object_bytes_;  // JSON size of each object kept, by state key
  uint64_t objects_bytes_ = 0;
  uint64_t state_bytes() const;
  bool warned_incomplete_ = false;
  void open_store(uint64_t segment_size);
  void append(const identity::IdentityRecord& r);
  void note_cgroup(uint64_t id, uint64_t ts);
  void dump(shm::SegmentWriter& w);
};

}  // namespace tapwire::sensor
