// CaptureStore: version-2 segments for the capture directory. capture_store.hpp.
#include "capture_store.hpp"
#include "shm_util.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <optional>

#include "segment_ring.hpp"

namespace tapwire::shm {
namespace {

using namespace detail;

constexpr uint64_t kBlock = TW_SEG_BLOCK;
constexpr uint64_t kMinSegment = 64ull << 10;
constexpr uint64_t kMinRegion = 64ull << 10;  // a 16 KiB chunk record and the blocks around it, with room
constexpr uint64_t kCtlBytes = 64ull << 10;  // the control records' staging ring
constexpr uint64_t kCreateRetryNs = 1000000000ull;


}  // namespace

struct CaptureStore::Impl {
  StoreOptions opts;
  uint32_t streams = 0;
  uint64_t segment_size = 0;
  uint64_t region_cap = 0, ctl_cap = 0;
  std::optional<SegmentRing> ring;
  std::optional<StreamSegmentWriter> open;
  std::vector<uint64_t> pos;  // per stream; the last entry is the control stream
  // The control records wait here (the same record format as the rings)
  // until publish() writes them to the control region.
  uint8_t* ctl = nullptr;
  uint64_t ctl_prod = 0, ctl_records = 0, ctl_first = 0, ctl_last = 0;
  uint64_t retry_after_ns = 0;
  uint64_t watermark = 0;
  bool last_direct = false;
  std::function<void(CaptureStore&)> on_open;
  StoreStats st;
  CaptureStore* self = nullptr;

  ~Impl() { std::free(ctl); }
  uint32_t ctl_index() const { return streams; }

  bool open_segment() {
    const uint64_t now = coarse_realtime_ns();
    if (now < retry_after_ns) return false;
    std::vector<StreamSpec> specs;
    for (uint32_t i = 0; i < streams; i++) specs.push_back({i, region_cap, pos[i]});
    specs.push_back({TW_SEG_STREAM_CONTROL, ctl_cap, pos[ctl_index()]});
    const uint64_t size = TW_SEG_BLOCK + region_cap * streams + ctl_cap;
    ring->enforce(opts.storage_size, size);
    for (int attempt = 0; attempt < 2 && !open; attempt++) {
      try {
        open.emplace(StreamSegmentWriter::create(ring->dir(), ring->take_seq(), specs));
      } catch (const SegmentError&) {
        if (attempt == 0) ring->delete_oldest();  // ENOSPC and friends: make room once
      }
    }
    if (!open) {
      retry_after_ns = now + kCreateRetryNs;
      return false;
    }
    retry_after_ns = 0;
    last_direct = open->direct();
    if (on_open) on_open(*self);
    return true;
  }

  void seal_open() {
    if (!open) return;
    flush_control();
    open->publish(watermark);
    open->seal();
    const uint64_t seq = open->seq();
    const std::string path = open->path();
    open.reset();
    ring->add_sealed(seq, path);
    ring->enforce(opts.storage_size, 0);
  }

  bool too_old(uint64_t now_ns) const {
    if (!open || opts.max_segment_age_ns == 0) return false;
    const uint64_t created = open->created_ns();
    return now_ns > created && now_ns - created >= opts.max_segment_age_ns;
  }

  // Writes the waiting control records into the open segment's control region.
  bool flush_control() {
    const uint32_t c = ctl_index();
    if (ctl_prod == pos[c] || !open) return ctl_prod == pos[c];
    if (ctl_prod > open->limit(c)) return false;  // the control region is full: the next segment takes them
    const bool ok = open->write(c, {ctl, kCtlBytes}, ctl_prod, ctl_records, ctl_first, ctl_last);
    if (!ok) st.append_failures += ctl_records;
    else st.records_written += ctl_records;
    pos[c] = ctl_prod;
    ctl_records = ctl_first = ctl_last = 0;
    return ok;
  }
};

CaptureStore::CaptureStore(StoreOptions opts, uint32_t streams) : impl_(std::make_unique<Impl>()) {
  auto& s = *impl_;
  s.self = this;
  s.opts = std::move(opts);
  s.streams = std::max(streams, 1u);
  uint64_t seg = std::min(s.opts.segment_size, s.opts.storage_size / 4) / kBlock * kBlock;
  s.segment_size = std::max(seg, kMinSegment);
  s.opts.segment_size = s.segment_size;
  s.ctl_cap = std::clamp<uint64_t>(s.segment_size / 16 / kBlock * kBlock, 16 * kBlock, 64 * kBlock);
  const uint64_t room = s.segment_size > kBlock + s.ctl_cap ? s.segment_size - kBlock - s.ctl_cap : 0;
  s.region_cap = std::max(room / s.streams / kBlock * kBlock, kMinRegion);
  s.pos.assign(s.streams + 1, 0);
  s.ctl = static_cast<uint8_t*>(std::aligned_alloc(kBlock, kCtlBytes));
  if (!s.ctl) throw SegmentError("capture store: out of memory");
  std::memset(s.ctl, 0, kCtlBytes);
  s.ring.emplace(s.opts.dir);
  s.opts.dir = s.ring->dir();
  s.ring->enforce(s.opts.storage_size, 0);
}

CaptureStore::~CaptureStore() {
  try {
    impl_->seal_open();
  } catch (...) {
  }
}

void CaptureStore::on_open(std::function<void(CaptureStore&)> cb) { impl_->on_open = std::move(cb); }
uint64_t CaptureStore::position(uint32_t i) const { return impl_->pos.at(i); }
void CaptureStore::set_position(uint32_t i, uint64_t p) { impl_->pos.at(i) = p; }

uint64_t CaptureStore::limit(uint32_t i) {
  auto& s = *impl_;
  if (s.too_old(coarse_realtime_ns())) s.seal_open();
  if (!s.open && !s.open_segment()) return 0;
  return s.open->limit(i);
}

bool CaptureStore::write(uint32_t i, StreamMemory mem, uint64_t end, uint64_t records, uint64_t first_ts,
                         uint64_t last_ts) {
  auto& s = *impl_;
  const uint64_t from = s.pos.at(i);
  if (s.open && s.open->write(i, mem, end, records, first_ts, last_ts)) {
    s.pos[i] = end;
    s.st.records_written += records;
    s.st.bytes_written += end - from;
    return true;
  }
  s.st.append_failures += records;
  drop(i, end);
  return false;
}

void CaptureStore::drop(uint32_t i, uint64_t end) {
  auto& s = *impl_;
  if (s.pos.at(i) == end) return;
  s.seal_open();  // a region holds its stream without gaps
  s.pos[i] = end;
}

bool CaptureStore::append_control(uint16_t type, std::span<const uint8_t> body, uint64_t ts_ns) {
  auto& s = *impl_;
  const uint64_t size = sizeof(tw_seg_rec8) + ((body.size() + 7) & ~uint64_t{7});
  const uint32_t c = s.ctl_index();
  if (type == 0 || size > kCtlBytes / 4) {
    s.st.append_failures++;
    return false;
  }
  // Room: the block the next write starts with stays, as in a capture ring.
  auto room = [&] { return kCtlBytes - (s.ctl_prod - s.pos[c] / kBlock * kBlock); };
  if (room() < size + kCtlBytes / 4) {
    if (!s.open) s.open_segment();
    if (!s.flush_control() && s.open) {
      s.seal_open();
      if (s.open_segment()) s.flush_control();
    }
    if (room() < size + kCtlBytes / 4) {
      s.st.append_failures++;
      return false;
    }
  }
  uint64_t off = s.ctl_prod & (kCtlBytes - 1);
  if (off + size > kCtlBytes) {  // never wraps: skip to the start, as the rings do
    tw_seg_rec8 skip{static_cast<uint32_t>(kCtlBytes - off - sizeof(tw_seg_rec8)) | TW_SEG_REC8_SKIP, 0, 0};
    std::memcpy(s.ctl + off, &skip, sizeof skip);
    s.ctl_prod += kCtlBytes - off;
    off = 0;
  }
  tw_seg_rec8 rh{static_cast<uint32_t>(body.size()), type, 0};
  std::memcpy(s.ctl + off, &rh, sizeof rh);
  if (!body.empty()) std::memcpy(s.ctl + off + sizeof rh, body.data(), body.size());
  std::memset(s.ctl + off + sizeof rh + body.size(), 0, size - sizeof rh - body.size());
  s.ctl_prod += size;
  s.ctl_records++;
  if (ts_ns && (!s.ctl_first || ts_ns < s.ctl_first)) s.ctl_first = ts_ns;
  s.ctl_last = std::max(s.ctl_last, ts_ns);
  s.st.bytes_written += size;
  return true;
}

void CaptureStore::publish(uint64_t watermark_ns) {
  auto& s = *impl_;
  s.watermark = std::max(s.watermark, watermark_ns);
  // A control record waiting (an interface attached, a loss) opens a segment
  // even without packets: the directory names its interfaces from the start.
  if (!s.open && (s.ctl_prod == s.pos[s.ctl_index()] || !s.open_segment())) return;
  if (!s.flush_control()) {  // the control region is full
    s.seal_open();
    if (s.open_segment()) s.flush_control();
    if (!s.open) return;
  }
  s.open->publish(s.watermark);
}

void CaptureStore::rotate() { impl_->seal_open(); }

void CaptureStore::tick(uint64_t now_ns) {
  if (impl_->too_old(now_ns)) impl_->seal_open();
}

bool CaptureStore::has_open() const { return impl_->open.has_value(); }
bool CaptureStore::direct() const { return impl_->last_direct; }

StoreStats CaptureStore::stats() const {
  auto& s = *impl_;
  StoreStats out = s.st;
  out.segments = s.ring->sealed_count() + (s.open ? 1 : 0);
  out.bytes_stored = s.ring->sealed_bytes() + (s.open ? s.open->file_size() : 0);
  out.segments_deleted = s.ring->deleted();
  out.segments_damaged = s.ring->damaged_count();
  return out;
}

const StoreOptions& CaptureStore::options() const { return impl_->opts; }
const std::vector<std::string>& CaptureStore::damaged() const { return impl_->ring->damaged(); }

}  // namespace tapwire::shm
