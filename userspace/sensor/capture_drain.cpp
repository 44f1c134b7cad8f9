#include "capture_drain.hpp"

#include <cstring>

#include "clock.hpp"

namespace tapwire::sensor {
namespace {

// Bounds one drain pass so that signals and timers are still served under
// a flood; the rest waits for the next pass (a few microseconds later).
constexpr uint64_t kMaxRecordsPerDrain = 1u << 16;
// How long a record waits in its ring so that records of other CPUs stamped
// before it get there first (the time between stamping and committing a
// record is microseconds; softirq processing can stretch it).
constexpr uint64_t kHoldbackNs = 2'000'000;

tw_seg_iface iface_record(const Interface& i) {
  tw_seg_iface rec{};
  rec.ifindex = i.ifindex;
  std::strncpy(rec.name, i.name.c_str(), sizeof rec.name - 1);
  rec.ts_ns = clock_ns(CLOCK_REALTIME);
  return rec;
}

}  // namespace

CaptureDrain::CaptureDrain(shm::SegmentStore& store, const BpfCapture& bpf)
    : store_(store), bpf_(bpf), doorbell_(bpf.doorbell_fd(), TW_DOORBELL_BYTES) {
  for (uint32_t cpu = 0; cpu < bpf.ring_count(); cpu++) rings_.emplace_back(bpf.ring(cpu), bpf.ring_bytes());
}

void CaptureDrain::ack_doorbell() {
  while (!doorbell_.peek().empty()) doorbell_.advance();
  doorbell_.release();
}

void CaptureDrain::on_record(std::span<const uint8_t> rec) {
  if (rec.size() < sizeof(tw_pkt)) {
    user_drops_[kRecordInvalid]++;
    return;
  }
  tw_pkt hdr;
  std::memcpy(&hdr, rec.data(), sizeof hdr);
  if (hdr.cap_len != rec.size() - sizeof(tw_pkt) || hdr.direction > TW_DIR_EGRESS) {
    user_drops_[kRecordInvalid]++;
    return;
  }
  hdr.ts_ns += mono_to_real_;
  auto payload = rec.subspan(sizeof(tw_pkt));
  if (!store_.append(TW_REC_PACKET, {reinterpret_cast<const uint8_t*>(&hdr), sizeof hdr}, payload, hdr.ts_ns)) {
    user_drops_[kStorageWriteFailed]++;
    return;
  }
  if (hdr.ifindex != last_ifindex_ || !last_counters_) {  // one map lookup per run of same-interface records
    last_counters_ = &per_iface_[hdr.ifindex];
    last_ifindex_ = hdr.ifindex;
  }
  auto& c = *last_counters_;
  if (!(hdr.flags & TW_PKT_F_CONTINUATION)) c.packets[hdr.direction]++;
  c.bytes[hdr.direction] += hdr.cap_len;
  if (on_packet_) on_packet_(hdr);
}

bool CaptureDrain::drain_all(bool everything) {
  const size_t n = rings_.size();
  const uint64_t watermark = everything ? UINT64_MAX : clock_ns(CLOCK_MONOTONIC) - kHoldbackNs;
  std::vector<std::span<const uint8_t>> heads(n);
  for (size_t i = 0; i < n; i++) heads[i] = rings_[i].peek();
  bool more = true;
  for (uint64_t done = 1; done <= kMaxRecordsPerDrain; done++) {
    size_t best = n;
    uint64_t best_ts = UINT64_MAX;
    for (size_t i = 0; i < n; i++) {
      if (heads[i].empty()) continue;
      uint64_t ts = 0;
      if (heads[i].size() >= sizeof(uint64_t)) std::memcpy(&ts, heads[i].data(), sizeof ts);
      if (ts < best_ts || best == n) {
        best = i;
        best_ts = ts;
      }
    }
    if (best == n || best_ts > watermark) {
      more = false;
      break;
    }
    on_record(heads[best]);
    records_taken_++;
    rings_[best].advance();
    heads[best] = rings_[best].peek();
    if ((done & 255) == 0)
      for (auto& r : rings_) r.release();
  }
  for (auto& r : rings_) r.release();
  uint64_t corrupt = 0;
  for (auto& r : rings_) corrupt += r.corrupt_bytes();
  if (corrupt != corrupt_seen_) {  // a broken ring was skipped: one invalid "record" each time
    user_drops_[kRecordInvalid]++;
    corrupt_seen_ = corrupt;
  }
  store_.publish();
  return more;
}

void CaptureDrain::write_loss_records(uint64_t now_real) {
  auto per_cpu = bpf_.read_counters();
  for (uint32_t r = 0; r < TW_DROP__MAX; r++) {
    uint64_t total = 0;
    for (auto& c : per_cpu) total += c.drop[r];
    if (total <= drops_logged_[r]) continue;
    tw_seg_loss loss{};
    loss.ts_ns = now_real;
    loss.reason = r;
    loss.count = total - drops_logged_[r];
    if (store_.append(TW_REC_LOSS, {reinterpret_cast<const uint8_t*>(&loss), sizeof loss}, {}, now_real))
      drops_logged_[r] = total;
  }
  store_.publish();
}

void append_iface_record(shm::SegmentStore& store, const Interface& i) {
  auto rec = iface_record(i);
  store.append(TW_REC_IFACE, {reinterpret_cast<const uint8_t*>(&rec), sizeof rec}, {}, rec.ts_ns);
}

void write_iface_records(shm::SegmentWriter& w, const std::map<uint32_t, Interface>& attached) {
  for (auto& [idx, i] : attached) {
    auto rec = iface_record(i);
    w.append(TW_REC_IFACE, {reinterpret_cast<const uint8_t*>(&rec), sizeof rec}, {}, rec.ts_ns);
  }
}

}  // namespace tapwire::sensor
