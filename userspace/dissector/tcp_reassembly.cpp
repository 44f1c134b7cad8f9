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
// - Bytes already delivered or already given up (a declared gap) are dropped
//   and counted in retransmitted_bytes. Between two out-of-order copies the
//   first one held wins; a copy that arrives in order wins over a held one
//   (the held bytes are dropped and counted): a stray segment that landed
//   inside the window cannot replace what the stream itself carries.
// - The window: out-of-order data is held only when its packet starts less
//   than max_ahead_bytes past the next expected byte, or inside the receive
//   window the peer advertised (peer_ack), whichever reaches further. A
//   record beyond that is counted (out_of_window_*) and dropped, and never
//   moves the stream: one stray segment 2^31 - 1 ahead cannot blind a flow.
//   The stream does move there (a gap, counted in resyncs) when the capture
//   really lost more than the window: when the out-of-window data is one
//   contiguous run of at least 4 packets and max_ahead_bytes, or of 2 packets
//   spanning max_hole_wait_ns, while nothing came in order since the run
//   began; or when the peer acknowledges bytes inside such a run.
// - The tail a capture cut off a segment ([captured, wire_len)) is held back
//   for one record: if the next record of this direction is the continuation
//   chunk of the same packet, it fills it; otherwise the tail is committed as
//   missing and becomes a gap when the stream reaches it, with no waiting.
// - A hole is given up (a gap, then what follows is delivered) when a
//   buffering cap is exceeded (counted in overflow_gaps) or when, for more
//   than max_hole_wait_ns of packet time, the oldest held range has waited
//   and nothing has come in order: a stream that keeps moving is not given
//   up on because of a stray range held further ahead. Adjacent gaps are
//   reported as one on_gap.
// - Memory: held payload is at most max_buffered_bytes plus one record (a
//   record is copied first, then the caps are enforced, so that a record that
//   fills the front hole is not thrown away), and at most
//   max_buffered_segments ranges. Held ranges never overlap, so every byte is
//   copied at most once; each operation is O(log n) in the held ranges plus
//   the ranges one record overlaps. memory_bytes() counts what that costs on
//   the heap (payload as allocated, and both index nodes of each range).
// - The sink must not call back into this reassembler.
#include "tcp_reassembly.hpp"

#include <algorithm>
#include <iterator>

#include "parse.hpp"

namespace tapwire::dissect {

namespace {
// TCP flag bits as on the wire (enum tw_tcp_flag in bpf/tapwire_abi.h).
constexpr uint8_t kFin = 0x01, kSyn = 0x02, kRst = 0x04;
// A segment's wire length beyond this is not believed (BIG TCP tops out at
// 512 KiB): no missing tail is inferred from it.
constexpr uint64_t kMaxWirePayload = 16u << 20;
// Out-of-window packets in one contiguous run before the stream is taken to
// be there (with max_ahead_bytes of them). One packet (up to 256 KiB in
// chunks) is never enough, whatever its size.
constexpr uint32_t kResyncPackets = 4;
// Size of a red-black tree node's links and colour (libstdc++), before the value.
constexpr size_t kTreeNodeBase = 32;

uint64_t add_sat(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }
}  // namespace

TcpReassembler::TcpReassembler(ReassemblyLimits limits) : limits_(limits) {}

bool TcpReassembler::syn_seen() const { return syn_; }
bool TcpReassembler::fin_seen() const { return fin_; }
bool TcpReassembler::started() const { return started_; }
uint64_t TcpReassembler::next_offset() const { return next_; }
size_t TcpReassembler::buffered_bytes() const { return held_bytes_; }
size_t TcpReassembler::memory_bytes() const { return held_mem_; }
const ReassemblyStats& TcpReassembler::stats() const { return stats_; }

size_t TcpReassembler::range_memory(const Held& h) {
  return proto::heap_bytes(kTreeNodeBase + sizeof(HeldMap::value_type)) +
         proto::heap_bytes(kTreeNodeBase + sizeof(std::pair<uint64_t, uint64_t>)) +
         proto::heap_bytes(h.bytes.capacity());
}

int64_t TcpReassembler::offset_of(uint32_t seq) const {
  return static_cast<int64_t>(next_) + static_cast<int32_t>(seq - next_seq_);
}

uint64_t TcpReassembler::window_end() const {
  return std::max(add_sat(next_, limits_.max_ahead_bytes), peer_edge_);
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
        if (data) {
          const size_t before = proto::heap_bytes(p->bytes.capacity());
          p->bytes.insert(p->bytes.end(), data + (begin - origin), data + (stop - origin));
          held_mem_ += proto::heap_bytes(p->bytes.capacity()) - before;
        }
      } else {
        Held h;
        h.end = stop;
        h.ts_ns = ts_ns;
        if (data) h.bytes.assign(data + (begin - origin), data + (stop - origin));
        prev = held_.emplace_hint(it, begin, std::move(h));
        held_by_age_.emplace(ts_ns, begin);
        held_mem_ += range_memory(prev->second);
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

void TcpReassembler::erase_held(HeldMap::iterator it) {
  held_bytes_ -= it->second.bytes.size();
  held_mem_ -= range_memory(it->second);
  held_by_age_.erase({it->second.ts_ns, it->first});
  held_.erase(it);
}

// The stream has just moved past held bytes (in-order data wins): drops what
// lies before next_, trimming the range that straddles it.
void TcpReassembler::drop_held_before_next() {
  while (!held_.empty() && held_.begin()->first < next_) {
    auto it = held_.begin();
    Held& h = it->second;
    const uint64_t begin = it->first;
    if (h.end <= next_) {
      if (!h.bytes.empty()) stats_.retransmitted_bytes += h.end - begin;
      erase_held(it);
      continue;
    }
    const uint64_t cut = next_ - begin;
    if (!h.bytes.empty()) {
      stats_.retransmitted_bytes += cut;
      h.bytes.erase(h.bytes.begin(), h.bytes.begin() + static_cast<std::ptrdiff_t>(cut));
      held_bytes_ -= cut;  // capacity, and so held_mem_, stays
    }
    held_by_age_.erase({h.ts_ns, begin});
    held_by_age_.emplace(h.ts_ns, next_);
    auto node = held_.extract(it);
    node.key() = next_;
    held_.insert(std::move(node));
    break;  // ranges do not overlap: the others start after this one
  }
}

// Delivers the held ranges that start at next_.
void TcpReassembler::drain(StreamSink& sink) {
  while (!held_.empty() && held_.begin()->first == next_) {
    auto it = held_.begin();
    held_mem_ -= range_memory(it->second);
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
  // The front hole is stale when the oldest held range has waited, and the
  // stream has not moved in order, for longer than the hole wait.
  while (!held_.empty()) {
    const uint64_t since = std::max(progress_ts_, held_by_age_.begin()->first);
    if (newest_ts_ <= since || newest_ts_ - since <= limits_.max_hole_wait_ns) break;
    give_up_front_hole(sink);
  }
}

// [begin, end) (stream offsets; `captured` of them in the record) arrived
// beyond the window: dropped, counted, and remembered as part of a run in
// case the stream really is there.
void TcpReassembler::out_of_window(int64_t begin, int64_t end, uint64_t captured, bool first_chunk, uint64_t ts_ns,
                                   StreamSink& sink) {
  stats_.out_of_window_segments++;
  stats_.out_of_window_bytes += captured;
  const uint64_t b = static_cast<uint64_t>(begin), e = static_cast<uint64_t>(end);
  seen_end_ = std::max(seen_end_, e);
  if (run_packets_ && b >= run_begin_ && b <= run_end_) {
    if (b == run_end_ && e > b && first_chunk) run_packets_++;  // a new packet that continues the run
    run_end_ = std::max(run_end_, e);
  } else {
    run_begin_ = b;
    run_end_ = e;
    run_first_ts_ = ts_ns;
    run_packets_ = 1;
  }
  const bool stalled = progress_ts_ < run_first_ts_;  // nothing in order since the run began
  const bool big = run_packets_ >= kResyncPackets && run_end_ - run_begin_ >= limits_.max_ahead_bytes;
  const bool lasting = run_packets_ >= 2 && ts_ns > run_first_ts_ && ts_ns - run_first_ts_ > limits_.max_hole_wait_ns;
  if (stalled && (big || lasting)) resync(run_end_, sink);
}

// The capture lost more than the window: everything before `to` that is
// held is delivered (holes as gaps), the rest is a gap, and the stream goes
// on at `to`.
void TcpReassembler::resync(uint64_t to, StreamSink& sink) {
  stats_.resyncs++;
  if (tail_pending_) commit_tail(sink);
  while (!held_.empty() && held_.begin()->first < to) give_up_front_hole(sink);
  if (next_ < to) skip(to - next_);
  drain(sink);
  run_packets_ = 0;
  sink.on_resync(next_);
}

void TcpReassembler::peer_ack(uint32_t ack, uint64_t window_bytes, StreamSink& sink) {
  if (!started_) return;
  const int64_t x = offset_of(ack);
  // Only what acknowledges bytes this direction was seen sending is believed.
  if (x < 0 || static_cast<uint64_t>(x) > std::max(seen_end_, next_)) return;
  const uint64_t at = static_cast<uint64_t>(x);
  const bool beyond = at > window_end();
  peer_edge_ = std::max(peer_edge_, add_sat(at, window_bytes));
  if (beyond && run_packets_ && at > run_begin_ && at <= run_end_) {
    resync(run_end_, sink);
    report_gap(sink);
  }
}

bool TcpReassembler::segment(uint32_t seq, uint8_t tcp_flags, std::span<const uint8_t> payload, uint32_t chunk_off,
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
    progress_ts_ = ts_ns;
    return true;
  }

  const bool syn = tcp_flags & kSyn;
  if (tcp_flags & (kFin | kRst)) fin_ = true;
  if (ts_ns > newest_ts_) newest_ts_ = ts_ns;
  const uint32_t data_seq = seq + (syn ? 1u : 0u) + chunk_off;
  const uint64_t captured = payload.size();
  uint64_t tail = 0;  // bytes of this packet after this record that were not captured
  if (wire_len <= kMaxWirePayload && wire_len > chunk_off + captured) tail = wire_len - chunk_off - captured;

  if (!started_) {
    if (!syn && !captured && !tail) return true;  // a bare ACK does not say where the data starts
    started_ = true;
    next_ = 0;
    next_seq_ = syn ? seq + 1 : data_seq;
  }
  if (syn) syn_ = true;

  // The window. A packet is judged by where it starts (a continuation chunk
  // by its packet's first byte), so that a packet is kept or dropped whole.
  const int64_t next = static_cast<int64_t>(next_);
  const int64_t start = offset_of(data_seq - chunk_off);
  const int64_t wend = static_cast<int64_t>(std::min<uint64_t>(window_end(), INT64_MAX));
  if (captured || tail) {
    if (start > next && start >= wend) {
      const int64_t b = offset_of(data_seq);
      out_of_window(b, b + static_cast<int64_t>(captured + tail), captured, chunk_off == 0, ts_ns, sink);
      report_gap(sink);
      return false;
    }
  } else if ((tcp_flags & (kFin | kRst)) && !syn) {
    // A bare FIN or RST carries the sender's next sequence number: far from
    // the stream, it is not this connection's (or not believable).
    if (start > wend || start < next - static_cast<int64_t>(std::min<uint64_t>(limits_.max_ahead_bytes, INT64_MAX / 2))) {
      stats_.out_of_window_segments++;
      return false;
    }
  }

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
    const int64_t nx = static_cast<int64_t>(next_);
    seen_end_ = std::max(seen_end_, static_cast<uint64_t>(std::max<int64_t>(e, 0)));
    if (e <= nx) {
      stats_.retransmitted_bytes += captured;
    } else {
      if (b < nx) {  // starts with bytes delivered (or given up) already
        stats_.retransmitted_bytes += static_cast<uint64_t>(nx - b);
        p += nx - b;
        b = nx;
      }
      if (b == nx) {
        // In order: the caller's bytes go straight on, all of them; held
        // bytes they cover lose (see the top of this file).
        const uint64_t n = static_cast<uint64_t>(e - b);
        deliver(std::span<const uint8_t>(p, n), ts_ns, sink);
        progress_ts_ = ts_ns;
        drop_held_before_next();
      } else {
        stats_.out_of_order_segments++;
        hold(static_cast<uint64_t>(b), static_cast<uint64_t>(e), p, ts_ns);
      }
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
  return true;
}

void TcpReassembler::flush(StreamSink& sink) {
  if (tail_pending_) commit_tail(sink);
  while (give_up_front_hole(sink)) {
  }
  report_gap(sink);
}

void TcpReassembler::discard() {
  held_.clear();
  held_by_age_.clear();
  held_bytes_ = 0;
  held_mem_ = 0;
  tail_pending_ = false;
}

}  // namespace tapwire::dissect
