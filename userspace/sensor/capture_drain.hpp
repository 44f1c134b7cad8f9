// From the per-CPU capture rings into the capture store: each ring's
// committed records are checked and counted per interface where they lie,
// then written to that CPU's region of the open segment as they are (no copy,
// O_DIRECT). Readers merge the regions by time (shm/FORMAT.md, "Version 2").
// Kernel drops become loss records. The sensor's event loop (sensor.cpp)
// polls the doorbell, runs a timer and calls drain_all().
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <vector>

#include "bpf_capture.hpp"
#include "interfaces.hpp"
#include "ring_drain.hpp"
#include "capture_store.hpp"
#include "segment.hpp"
#include "tapwire_abi.h"

namespace tapwire::sensor {

// Drops counted in userspace, after the kernel handed a record over.
enum UserDrop { kRecordInvalid = 0, kStorageWriteFailed = 1, kUserDropMax };
inline constexpr std::array<const char*, kUserDropMax> kUserDropNames = {"record_invalid", "storage_write_failed"};

struct IfaceCounters {
  uint64_t packets[2] = {0, 0};  // by direction
  uint64_t bytes[2] = {0, 0};
};

class CaptureDrain {
 public:
  // A reader for each of bpf's rings (throws std::runtime_error). `store`
  // (one stream per ring) and `bpf` must outlive the drain.
  CaptureDrain(shm::CaptureStore& store, const BpfCapture& bpf);
  CaptureDrain(const CaptureDrain&) = delete;
  CaptureDrain& operator=(const CaptureDrain&) = delete;

  // Index = CPU id: what each ring holds.
  const std::vector<CaptureRingReader>& rings() const { return rings_; }
  // The doorbell's fd (readable when a ring filled past the wakeup
  // threshold), and taking what rang it.
  int doorbell_fd() const { return doorbell_.fd(); }
  void ack_doorbell();

  // CLOCK_REALTIME - CLOCK_MONOTONIC: the programs add it to their clock,
  // so that the rings (and the segments) hold real time. Set at start and
  // every tick.
  void set_mono_to_real(uint64_t ns);
  // Called with each packet record stored (--print); nothing by default.
  void on_packet(std::function<void(const tw_pkt&)> f) { on_packet_ = std::move(f); }

  // Stores every ring's records stamped at or before a watermark, then
  // publishes the watermark: a reader merging the CPUs' regions by time
  // takes nothing above it, so it never sees a record before an older one
  // that was still on its way. The watermark is kHoldbackNs behind the clock:
  // a record is in its ring microseconds after its timestamp. When a region
  // is full, the watermark is lowered to just below the first record that
  // did not fit, the segment is sealed there and the next one takes the
  // rest, so segments follow each other in time too.
  // Returns true if it stopped at kMaxRecordsPerDrain with more waiting.
  // `everything` (at shutdown) takes all.
  bool drain_all(bool everything = false);

  // Kernel drops become TW_REC_LOSS records, so that whoever reads the
  // segments knows data is missing around that time.
  void write_loss_records(uint64_t now_real);

  const std::array<uint64_t, kUserDropMax>& user_drops() const { return user_drops_; }
  // Records taken from the rings since start.
  uint64_t records_taken() const { return records_taken_; }
  // Nothing waits in any ring.
  bool empty() const {
    for (uint32_t i = 0; i < rings_.size(); i++)
      if (rings_[i].producer() != store_.position(i)) return false;
    return true;
  }
  // By ifindex: what was stored from each interface since start.
  const std::map<uint32_t, IfaceCounters>& per_iface() const { return per_iface_; }

 private:
  shm::CaptureStore& store_;
  const BpfCapture& bpf_;
  std::vector<CaptureRingReader> rings_;
  BpfRingReader doorbell_;
  uint64_t mono_to_real_ = 0;
  std::function<void(const tw_pkt&)> on_packet_;
  std::array<uint64_t, kUserDropMax> user_drops_{};
  std::array<uint64_t, TW_DROP__MAX> drops_logged_{};  // kernel drops already in loss records
  std::map<uint32_t, IfaceCounters> per_iface_;  // node-based: pointers stay valid
  IfaceCounters* last_counters_ = nullptr;
  uint32_t last_ifindex_ = 0;
  uint64_t corrupt_seen_ = 0;
  uint64_t records_taken_ = 0;

  struct Span {
    uint64_t end = 0;  // stream position past the last record taken
    uint64_t records = 0, first_ts = 0, last_ts = 0;
    uint64_t stop_ts = 0;  // timestamp of the first record that did not fit, 0 if none
    bool corrupt = false;  // the ring is broken from `end` on
  };
  // Walks ring i from the store's position: records at or below `watermark`
  // that end at or below `limit`, at most `budget`. `apply` checks, counts
  // and fixes them (the first pass only looks).
  Span walk(uint32_t i, uint64_t watermark, uint64_t limit, uint64_t prod, uint64_t budget, bool apply);
  uint64_t last_watermark_ = 0;

 public:
  // The watermark last published: every record at or below it is stored.
  uint64_t watermark() const { return last_watermark_; }

 private:
  bool check_record(uint8_t* rec, uint64_t body);
};

// TW_REC_IFACE records name the interfaces: one when capture starts on an
// interface, and one for each attached interface at the start of every
// segment (CaptureStore::on_open), so that each segment names its own.
// `ts_ns` places them in time among the packets.
void append_iface_record(shm::CaptureStore& store, const Interface& i, uint64_t ts_ns);
void write_iface_records(shm::CaptureStore& store, const std::map<uint32_t, Interface>& attached, uint64_t ts_ns);

}  // namespace tapwire::sensor
