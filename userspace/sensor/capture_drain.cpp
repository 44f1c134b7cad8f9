#include "capture_drain.hpp"

#include <cstring>

#include "clock.hpp"

namespace tapwire::sensor {
namespace {

// Bounds one drain pass so that signals and timers are still served under
// a flood; the rest waits for the next pass (a few microseconds later).
constexpr uint64_t kMaxRecordsPerDrain = 1u << 16;
// How far the watermark stays behind the clock: the time between stamping
// a record and publishing it in its ring is microseconds; softirq
// processing can stretch it.
constexpr uint64_t kHoldbackNs = 2'000'000;

tw_seg_iface iface_record(const Interface& i, uint64_t ts_ns) {
  tw_seg_iface rec{};
  rec.ifindex = i.ifindex;
  std::strncpy(rec.name, i.name.c_str(), sizeof rec.name - 1);
  rec.ts_ns = ts_ns;
  return rec;
}

uint64_t rec_size(uint64_t body) { return (sizeof(tw_cring_rec) + body + 7) & ~uint64_t{7}; }

}  // namespace

CaptureDrain::CaptureDrain(shm::CaptureStore& store, const BpfCapture& bpf)
    : store_(store), bpf_(bpf), doorbell_(bpf.doorbell_fd(), TW_DOORBELL_BYTES) {
  for (uint32_t cpu = 0; cpu < bpf.ring_count(); cpu++) {
    rings_.emplace_back(bpf.ring(cpu), bpf.ring_bytes());
    // The stream starts where the ring's consumer stands (0 for new rings).
    store_.set_position(cpu, rings_.back().consumer());
  }
}

void CaptureDrain::set_mono_to_real(uint64_t ns) {
  mono_to_real_ = ns;
  for (auto& r : rings_) r.set_real_offset(ns);
}

void CaptureDrain::ack_doorbell() {
  while (!doorbell_.peek().empty()) doorbell_.advance();
  doorbell_.release();
}

// A packet record as the programs write it; anything else is made a skip
// record in place (its bytes still go to disk, readers pass over them) and
// counted.
bool CaptureDrain::check_record(uint8_t* rec, uint64_t body) {
  tw_cring_rec h;
  std::memcpy(&h, rec, sizeof h);
  tw_pkt p;
  bool ok = h.type == TW_REC_PACKET && body >= sizeof p;
  if (ok) {
    std::memcpy(&p, rec + sizeof h, sizeof p);
    ok = p.cap_len == body - sizeof p && p.direction <= TW_DIR_EGRESS;
  }
  if (!ok) {
    h.len = static_cast<uint32_t>(rec_size(body) - sizeof h) | TW_CRING_SKIP;
    h.type = 0;
    std::memcpy(rec, &h, sizeof h);
    user_drops_[kRecordInvalid]++;
    return false;
  }
  if (p.ifindex != last_ifindex_ || !last_counters_) {  // one map lookup per run of same-interface records
    last_counters_ = &per_iface_[p.ifindex];
    last_ifindex_ = p.ifindex;
  }
  auto& c = *last_counters_;
  if (!(p.flags & TW_PKT_F_CONTINUATION)) c.packets[p.direction]++;
  c.bytes[p.direction] += p.cap_len;
  if (on_packet_) on_packet_(p);
  return true;
}

CaptureDrain::Span CaptureDrain::walk(uint32_t i, uint64_t watermark, uint64_t limit, uint64_t prod,
                                      uint64_t budget, bool apply) {
  auto& ring = rings_[i];
  const uint64_t bytes = ring.bytes(), mask = bytes - 1;
  Span sp;
  uint64_t pos = store_.position(i);
  while (pos < prod && sp.records < budget) {
    const uint64_t off = pos & mask;
    uint8_t* at = ring.data() + off;
    tw_cring_rec h;
    std::memcpy(&h, at, sizeof h);
    const uint64_t body = h.len & ~TW_CRING_SKIP;
    const uint64_t next = pos + rec_size(body);
    // The programs never write a record past the data area's end, nor past
    // what they published: anything else is a broken ring.
    if (off + sizeof h + body > bytes || next > prod) {
      sp.corrupt = true;
      break;
    }
    if (next > limit) {
      if (!(h.len & TW_CRING_SKIP) && body >= 8) std::memcpy(&sp.stop_ts, at + sizeof h, 8);
      if (!sp.stop_ts) sp.stop_ts = 1;
      break;
    }
    if (!(h.len & TW_CRING_SKIP)) {
      uint64_t ts = 0;
      if (body >= 8) std::memcpy(&ts, at + sizeof h, 8);
      if (ts > watermark) break;
      if (!apply || check_record(at, body)) {
        sp.records++;
        if (!sp.first_ts) sp.first_ts = ts;
        sp.last_ts = ts;
      }
    }
    pos = next;
  }
  sp.end = pos;
  return sp;
}

bool CaptureDrain::drain_all(bool everything) {
  const uint32_t n = static_cast<uint32_t>(rings_.size());
  uint64_t watermark = everything ? UINT64_MAX : clock_ns(CLOCK_REALTIME) - kHoldbackNs;
  uint64_t budget = kMaxRecordsPerDrain;
  bool more = false;
  for (int round = 0; round < 64 && budget > 0; round++) {
    // Where the open segment (opened here if needed) ends for each ring, and
    // the lowest timestamp that did not fit: the watermark of this round.
    // (A segment is opened only for a ring that holds something.)
    std::vector<uint64_t> limits(n, UINT64_MAX), prods(n);
    uint64_t cut = watermark;
    bool full = false;
    for (uint32_t i = 0; i < n; i++) {
      prods[i] = rings_[i].producer();
      if (prods[i] == store_.position(i)) continue;
      limits[i] = store_.limit(i);
      if (limits[i] == 0 || prods[i] <= limits[i]) continue;  // 0: no segment can be opened (dropped below)
      Span sp = walk(i, watermark, limits[i], prods[i], budget, false);
      if (sp.stop_ts) {
        full = true;
        cut = std::min(cut, sp.stop_ts - 1);
      }
    }
    bool left = false;
    for (uint32_t i = 0; i < n; i++) {
      auto& ring = rings_[i];
      if (prods[i] == store_.position(i)) continue;
      if (limits[i] == 0) {  // nothing can be stored now: give the ring back, counting what it held
        Span sp = walk(i, UINT64_MAX, UINT64_MAX, prods[i], UINT64_MAX, false);
        user_drops_[kStorageWriteFailed] += sp.records;
        store_.drop(i, sp.end);
        ring.release_to(store_.hold_position(i));
        continue;
      }
      Span sp = walk(i, cut, limits[i], prods[i], budget, true);
      budget -= std::min(budget, sp.records);
      if (sp.end > store_.position(i) &&
          !store_.write(i, {ring.data(), ring.bytes()}, sp.end, sp.records, sp.first_ts, sp.last_ts))
        user_drops_[kStorageWriteFailed] += sp.records;
      if (sp.corrupt) {  // a broken ring: the rest is given up and counted
        const uint64_t prod = ring.producer();
        ring.add_corrupt(prod - store_.position(i));
        store_.drop(i, prod);
      }
      records_taken_ += sp.records;
      ring.release_to(store_.hold_position(i));
      if (budget == 0) left = true;
    }
    store_.publish(cut);
    last_watermark_ = std::max(last_watermark_, cut == UINT64_MAX ? clock_ns(CLOCK_REALTIME) : cut);
    if (!full) {
      more = left;
      break;
    }
    store_.rotate();  // a region is full: the next segment starts at `cut`
    more = true;
  }
  uint64_t corrupt = 0;
  for (auto& r : rings_) corrupt += r.corrupt_bytes();
  if (corrupt != corrupt_seen_) {  // a broken ring was skipped: one invalid "record" each time
    user_drops_[kRecordInvalid]++;
    corrupt_seen_ = corrupt;
  }
  return more;
}

void CaptureDrain::write_loss_records(uint64_t now_real) {
  auto per_cpu = bpf_.read_counters();
  for (uint32_t r = 0; r < TW_DROP__MAX; r++) {
    uint64_t total = 0;
    for (auto& c : per_cpu) total += c.drop[r];
    if (total <= drops_logged_[r]) continue;
    tw_seg_loss loss{};
    // Placed at the watermark: after every record already published, before
    // every record still to come (the drops happened in between).
    loss.ts_ns = last_watermark_ ? last_watermark_ : now_real;
    loss.reason = r;
    loss.count = total - drops_logged_[r];
    if (store_.append_control(TW_REC_LOSS, {reinterpret_cast<const uint8_t*>(&loss), sizeof loss}, loss.ts_ns))
      drops_logged_[r] = total;
  }
}

void append_iface_record(shm::CaptureStore& store, const Interface& i, uint64_t ts_ns) {
  auto rec = iface_record(i, ts_ns);
  store.append_control(TW_REC_IFACE, {reinterpret_cast<const uint8_t*>(&rec), sizeof rec}, rec.ts_ns);
}

void write_iface_records(shm::CaptureStore& store, const std::map<uint32_t, Interface>& attached, uint64_t ts_ns) {
  for (auto& [idx, i] : attached) append_iface_record(store, i, ts_ns);
}

}  // namespace tapwire::sensor
