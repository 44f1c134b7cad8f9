// Per-direction TCP reassembly.
//
// Positions: sequence numbers are 32 bits and wrap; everything inside is a
// 64-bit stream offset (bytes since the stream's first byte). A sequence
// number is placed by its signed 32-bit distance from the next expected one,
// so the stream may run past 2^32 any number of times.
//
// Semantics chosen here (see also tcp_reassembly.hpp):
// - The stream starts at ISN + 1 when the SYN is seen. Without a SYN it starts
//   at the first byte of the first segment seen that has payload (bare ACKs do
//   not start it: keep-alives carry seq - 1). Bytes that later arrive from
//   before the start are counted in retransmitted_bytes and dropped: data is
//   delivered as soon as it is in order, so there is nothing to prepend to.
//   A second SYN (retransmitted, or with another ISN) does not move the start.
// - Bytes already delivered, already held, or already given up (a declared
//   gap) are dropped and counted in retransmitted_bytes; the first copy wins.
// - The tail a capture cut off a segment ([captured, wire_len)) is held back
//   for one record: if the next record of this direction is the continuation
//   chunk of the same packet, it fills it; otherwise the tail is committed as
//   missing and becomes a gap when the stream reaches it, with no waiting.
// - A hole is given up (a gap, then what follows is delivered) when a
//   buffering cap is exceeded (counted in overflow_gaps) or when the oldest
//   held range is more than max_hole_wait_ns older than the newest packet seen.
//   Adjacent gaps are reported as one on_gap.
// - Memory: held payload is at most max_buffered_bytes plus one record (a
//   record is copied first, then the caps are enforced, so that a record that
//   fills the front hole is not thrown away), and at most
//   max_buffered_segments ranges. Held ranges never overlap, so every byte is
//   copied at most once; each operation is O(log n) in the held ranges plus
//   the ranges one record overlaps.
// - The sink must not call back into this reassembler.
#include "tcp_reassembly.hpp"

#include <algorithm>
#include <iterator>

namespace tapwire::dissect {

namespace {
// TCP flag bits as on the wire (enum tw_tcp_flag in bpf/tapwire_abi.h).
constexpr uint8_t kFin = 0x01, kSyn = 0x02, kRst = 0x04;
// A segment's wire length beyond this is not believed (BIG TCP tops out at
// 512 KiB): no missing tail is inferred from it.
constexpr uint64_t kMaxWirePayload = 16u << 20;
}  // namespace

TcpReassembler::TcpReassembler(ReassemblyLimits limits) : limits_(limits) {}

bool TcpReassembler::syn_seen() const { return syn_; }
bool TcpReassembler::fin_seen() const { return fin_; }
bool TcpReassembler::started() const { return started_; }
uint64_t TcpReassembler::next_offset() const { return next_; }
size_t TcpReassembler::buffered_bytes() const { return held_bytes_; }
const ReassemblyStats& TcpReassembler::stats() const { return stats_; }

int64_t TcpReassembler::offset_of(uint32_t seq) const {
  return static_cast<int64_t>(next_) + static_cast<int32_t>(seq - next_seq_);
}

void TcpReassembler::deliver(std::span<const uint8_t> data, uint64_t ts_ns, StreamSink& sink) {
  report_gap(sink);
  sink.on_data(next_, data, ts_ns);
  next_ += data.size();
  next_seq_ += static_cast<uint32_t>(data.size());
  stats_.bytes_delivered += data.size();
}

// Gives up `len` bytes at next_; reported (merged with adjacent ones) before
// the next delivery or at the end of the call.
void TcpReassembler::skip(uint64_t len) {
  gap_len_ += len;
  next_ += len;
  next_seq_ += static_cast<uint32_t>(len);
}

void TcpReassembler::report_gap(StreamSink& sink) {
  if (!gap_len_) return;
  const uint64_t len = gap_len_;
  gap_len_ = 0;
  stats_.gaps++;
  stats_.gap_bytes += len;
  sink.on_gap(next_ - len, len);
}

// Holds [begin, end) (begin >= next_) except what is held already. `data` is
// the bytes at `begin`, or null for a range known to be missing.
void TcpReassembler::hold(uint64_t begin, uint64_t end, const uint8_t* data, uint64_t ts_ns) {
  const uint64_t origin = begin;
  auto it = held_.upper_bound(begin);  // first range starting after begin
  auto prev = held_.end();  // the range ending at or before begin, if any
  if (it != held_.begin()) {
    prev = std::prev(it);
    if (prev->second.end > begin) {  // begin is inside it
      const uint64_t covered = std::min(prev->second.end, end) - begin;
      if (data) stats_.retransmitted_bytes += covered;
      begin += covered;
    }
  }
  while (begin < end) {
    const uint64_t stop = it == held_.end() ? end : std::min(end, it->first);
    if (stop > begin) {  // new bytes [begin, stop)
      Held* p = prev != held_.end() ? &prev->second : nullptr;
      // Extend the range before when it is the same kind and (for data) the
      // same packet time: chunks of one packet become one range.
      if (p && p->end == begin && (data ? !p->bytes.empty() && p->ts_ns == ts_ns : p->bytes.empty())) {
        p->end = stop;
        if (data) p->bytes.insert(p->bytes.end(), data + (begin - origin), data + (stop - origin));
      } else {
        Held h;
        h.end = stop;
        h.ts_ns = ts_ns;
        if (data) h.bytes.assign(data + (begin - origin), data + (stop - origin));
        prev = held_.emplace_hint(it, begin, std::move(h));
        held_by_age_.emplace(ts_ns, begin);
      }
      if (data) held_bytes_ += stop - begin;
      begin = stop;
    }
    if (begin >= end) break;
    // `it` starts at begin: those bytes are held already.
    const uint64_t covered = std::min(end, it->second.end) - begin;
    if (data) stats_.retransmitted_bytes += covered;
    begin += covered;
    prev = it++;
  }
}

// Delivers the held ranges that start at next_.
void TcpReassembler::drain(StreamSink& sink) {
  while (!held_.empty() && held_.begin()->first == next_) {
    auto it = held_.begin();
    Held h = std::move(it->second);
    held_by_age_.erase({h.ts_ns, it->first});
    held_.erase(it);
    if (h.bytes.empty()) {
      skip(h.end - next_);
    } else {
      held_bytes_ -= h.bytes.size();
      deliver(h.bytes, h.ts_ns, sink);
    }
  }
}

// Declares the hole before the first held range a gap and delivers what
// follows it. False when nothing is held.
bool TcpReassembler::give_up_front_hole(StreamSink& sink) {
  if (held_.empty()) return false;
  skip(held_.begin()->first - next_);
  drain(sink);
  return true;
}

// The last record's uncaptured tail will not come: hold it as missing.
void TcpReassembler::commit_tail(StreamSink& sink) {
  tail_pending_ = false;
  const int64_t b = offset_of(tail_begin_);
  const int64_t e = b + static_cast<int64_t>(static_cast<uint32_t>(tail_end_ - tail_begin_));
  const int64_t from = std::max(b, static_cast<int64_t>(next_));
  if (e <= from) return;
  // Held like data (bytes held already stay), then skipped at once if the
  // stream is there.
  hold(static_cast<uint64_t>(from), static_cast<uint64_t>(e), nullptr, newest_ts_);
  drain(sink);
}

void TcpReassembler::enforce_limits(StreamSink& sink) {
  while (!held_.empty() &&
         (held_bytes_ > limits_.max_buffered_bytes || held_.size() > limits_.max_buffered_segments)) {
    stats_.overflow_gaps++;
    give_up_front_hole(sink);
  }
  while (!held_.empty() && newest_ts_ - held_by_age_.begin()->first > limits_.max_hole_wait_ns)
    give_up_front_hole(sink);
}

void TcpReassembler::segment(uint32_t seq, uint8_t tcp_flags, std::span<const uint8_t> payload, uint32_t chunk_off,
                             uint32_t wire_len, uint64_t ts_ns, StreamSink& sink) {
  // Common case: the next bytes, nothing held, nothing special.
  if (started_ && held_.empty() && !tail_pending_ && !(tcp_flags & (kSyn | kFin | kRst)) &&
      static_cast<uint32_t>(seq + chunk_off) == next_seq_ && uint64_t{chunk_off} + payload.size() == wire_len &&
      !payload.empty()) {
    // newest_ts_ only matters while something is held, and every held range
    // comes through the slow path below, which keeps it up to date.
    sink.on_data(next_, payload, ts_ns);
    next_ += payload.size();
    next_seq_ += static_cast<uint32_t>(payload.size());
    stats_.bytes_delivered += payload.size();
    return;
  }

  const bool syn = tcp_flags & kSyn;
  if (tcp_flags & (kFin | kRst)) fin_ = true;
  if (ts_ns > newest_ts_) newest_ts_ = ts_ns;
  const uint32_t data_seq = seq + (syn ? 1u : 0u) + chunk_off;
  const uint64_t captured = payload.size();
  uint64_t tail = 0;  // bytes of this packet after this record that were not captured
  if (wire_len <= kMaxWirePayload && wire_len > chunk_off + captured) tail = wire_len - chunk_off - captured;

  if (!started_) {
    if (!syn && !captured && !tail) return;  // a bare ACK does not say where the data starts
    started_ = true;
    next_ = 0;
    next_seq_ = syn ? seq + 1 : data_seq;
  }
  if (syn) syn_ = true;

  if (tail_pending_) {
    // Is this record the continuation chunk of the packet that left the tail?
    const bool continues =
        data_seq == tail_begin_ && static_cast<uint32_t>(data_seq + captured + tail) == tail_end_;
    if (continues)
      tail_pending_ = false;
    else
      commit_tail(sink);
  }

  if (captured) {
    int64_t b = offset_of(data_seq);
    const int64_t e = b + static_cast<int64_t>(captured);
    const uint8_t* p = payload.data();
    const int64_t next = static_cast<int64_t>(next_);
    if (e <= next) {
      stats_.retransmitted_bytes += captured;
    } else {
      if (b < next) {  // starts with bytes delivered (or given up) already
        stats_.retransmitted_bytes += static_cast<uint64_t>(next - b);
        p += next - b;
        b = next;
      }
      if (b == next) {
        // In order: pass the caller's bytes straight on, up to the first held range.
        const uint64_t stop = held_.empty() ? static_cast<uint64_t>(e)
                                            : std::min(static_cast<uint64_t>(e), held_.begin()->first);
        const uint64_t n = stop - next_;
        deliver(std::span<const uint8_t>(p, n), ts_ns, sink);
        p += n;
        b += static_cast<int64_t>(n);
      } else {
        stats_.out_of_order_segments++;
      }
      if (b < e) hold(static_cast<uint64_t>(b), static_cast<uint64_t>(e), p, ts_ns);
      drain(sink);
    }
  }

  if (tail) {
    tail_pending_ = true;
    tail_begin_ = data_seq + static_cast<uint32_t>(captured);
    tail_end_ = tail_begin_ + static_cast<uint32_t>(tail);
  }
  enforce_limits(sink);
  report_gap(sink);
}

void TcpReassembler::flush(StreamSink& sink) {
  if (tail_pending_) commit_tail(sink);
  while (give_up_front_hole(sink)) {
  }
  report_gap(sink);
}

}  // namespace tapwire::dissect
