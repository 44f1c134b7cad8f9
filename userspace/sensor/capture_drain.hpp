// From the per-CPU capture rings into the segment store: the rings are
// merged in time order, each packet record is checked, stored and counted
// per interface, and kernel drops become loss records. The sensor's event
// loop (sensor.cpp) polls the rings and calls drain_all().
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
  // and `bpf` must outlive the drain.
  CaptureDrain(shm::SegmentStore& store, const BpfCapture& bpf);
  CaptureDrain(const CaptureDrain&) = delete;
  CaptureDrain& operator=(const CaptureDrain&) = delete;

  // Index = CPU id: what each ring holds.
  const std::vector<CaptureRingReader>& rings() const { return rings_; }
  // The doorbell's fd (readable when a ring filled past the wakeup
  // threshold), and taking what rang it.
  int doorbell_fd() const { return doorbell_.fd(); }
  void ack_doorbell();

  // CLOCK_REALTIME - CLOCK_MONOTONIC: the programs stamp records with the
  // monotonic clock, segments hold real time. Set at start and every tick.
  void set_mono_to_real(uint64_t ns) { mono_to_real_ = ns; }
  // Called with each packet record stored (--print); nothing by default.
  void on_packet(std::function<void(const tw_pkt&)> f) { on_packet_ = std::move(f); }

  // Merges the per-CPU rings by timestamp, so that a segment holds records
  // in time order (as far as they have arrived): a flow's two directions are
  // often handled by different CPUs.
  // Returns true if it stopped at kMaxRecordsPerDrain with more waiting.
  // Records younger than kHoldbackNs stay in their ring until the next pass:
  // a packet stamped earlier on another CPU may still be on its way into
  // that CPU's ring, and taking the younger one first would put the segment
  // out of time order. `everything` (at shutdown) takes all.
  bool drain_all(bool everything = false);

  // Kernel drops become TW_REC_LOSS records, so that whoever reads the
  // segments knows data is missing around that time.
  void write_loss_records(uint64_t now_real);

  const std::array<uint64_t, kUserDropMax>& user_drops() const { return user_drops_; }
  // Records taken from the rings since start.
  uint64_t records_taken() const { return records_taken_; }
  // Nothing waits in any ring.
  bool empty() const {
    for (const auto& r : rings_)
      if (r.pending()) return false;
    return true;
  }
  // By ifindex: what was stored from each interface since start.
  const std::map<uint32_t, IfaceCounters>& per_iface() const { return per_iface_; }

 private:
  shm::SegmentStore& store_;
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

  void on_record(std::span<const uint8_t> rec);
};

// TW_REC_IFACE records name the interfaces: one when capture starts on an
// interface, and one for each attached interface at the start of every
// segment (SegmentStore::on_open), so that each segment names its own.
void append_iface_record(shm::SegmentStore& store, const Interface& i);
void write_iface_records(shm::SegmentWriter& w, const std::map<uint32_t, Interface>& attached);

}  // namespace tapwire::sensor
