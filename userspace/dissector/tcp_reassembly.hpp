// Puts one direction of a TCP connection back in order by sequence number:
// out-of-order segments wait (bounded), retransmissions and overlaps are
// delivered once, and bytes that never came are declared as a gap so the
// protocol parser can resynchronise.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <span>
#include <utility>
#include <vector>

namespace tapwire::dissect {

struct ReassemblyLimits {
  size_t max_buffered_bytes = 1 << 20;  // out-of-order payload held per direction
  size_t max_buffered_segments = 2048;  // out-of-order segments held per direction
  // A hole is given up when nothing has come in order for this long (by
  // packet time) while data after it has been held this long.
  uint64_t max_hole_wait_ns = 2'000'000'000;
  // Out-of-order data is held only when it starts less than this far ahead
  // of the next expected byte, or inside the receive window the peer
  // advertised (peer_ack) when that reaches further. Anything beyond is
  // counted and dropped: it never moves the stream.
  uint64_t max_ahead_bytes = 256 << 10;
};

// Receives the stream in order.
class StreamSink {
 public:
  virtual ~StreamSink() = default;
  // Contiguous bytes at stream offset `offset` (bytes since the first one).
  virtual void on_data(uint64_t offset, std::span<const uint8_t> data, uint64_t ts_ns) = 0;
  // `len` bytes at `offset` are missing; the next on_data starts at offset + len.
  virtual void on_gap(uint64_t offset, uint64_t len) = 0;
  // The stream was found beyond the window (capture loss larger than it):
  // it goes on at `offset`, the bytes before it reported by on_gap. Rare.
  virtual void on_resync(uint64_t offset) {}
};

struct ReassemblyStats {
  uint64_t bytes_delivered = 0;
  uint64_t gaps = 0;
  uint64_t gap_bytes = 0;
  uint64_t retransmitted_bytes = 0;  // bytes seen again (duplicates and overlaps), delivered once
  uint64_t out_of_order_segments = 0;
  uint64_t overflow_gaps = 0;  // gaps declared because a buffering cap was hit
  uint64_t out_of_window_segments = 0;  // records beyond the window (or a FIN/RST far from the stream): dropped
  uint64_t out_of_window_bytes = 0;  // their captured bytes
  uint64_t resyncs = 0;  // times the stream was found to have moved on beyond the window (see segment())
};

class TcpReassembler {
 public:
  explicit TcpReassembler(ReassemblyLimits limits = {});

  // One captured segment of this direction. `seq` is the sequence number of
  // its first payload byte; `payload` holds the captured bytes, which may be
  // fewer than `wire_len` (the payload length on the wire) when capture cut
  // the packet: the missing tail is a gap. `chunk_off` is the offset of
  // `payload` within the segment's payload (large packets arrive in chunks).
  // SYN fixes the initial sequence number (data starts at seq + 1); without
  // one, the first segment seen starts the stream. FIN/RST are noted.
  //
  // Returns false when the segment lies outside the window (its data starts
  // beyond it, or a bare FIN/RST is far from the stream): it was dropped, and
  // a FIN or RST on it should not be believed either.
  bool segment(uint32_t seq, uint8_t tcp_flags, std::span<const uint8_t> payload, uint32_t chunk_off,
               uint32_t wire_len, uint64_t ts_ns, StreamSink& sink);

  // What the other direction says about this one: it acknowledges every
  // byte before `ack` and will take `window_bytes` more (its window, scaled).
  // Widens what is held out of order to that window. An acknowledgement of
  // bytes beyond the window that this direction was seen sending means the
  // capture lost them: the stream moves there (a gap), as it does after a
  // long enough contiguous run of out-of-window data.
  void peer_ack(uint32_t ack, uint64_t window_bytes, StreamSink& sink);

  // Gives up waiting: delivers everything buffered, declaring the holes as
  // gaps (on FIN/RST of the connection, idle timeout, shedding, or shutdown).
  void flush(StreamSink& sink);
  // Drops what is held without delivering it (a flow no one parses any more).
  void discard();

  bool syn_seen() const;
  bool fin_seen() const;  // FIN or RST seen in this direction
  bool started() const;  // initial sequence number known
  uint64_t next_offset() const;  // stream offset of the next byte expected
  size_t buffered_bytes() const;  // out-of-order payload bytes held
  // Heap bytes of what is held: payload as allocated and the two index
  // entries of each held range (memory accounting; 0 when nothing is held).
  size_t memory_bytes() const;
  const ReassemblyStats& stats() const;

 private:
  // A held range of the stream, [key, end). Ranges never overlap and all lie
  // beyond next_. Empty `bytes` marks bytes known never to come (the uncaptured
  // tail of a truncated segment): a gap once the stream reaches them.
  struct Held {
    uint64_t end = 0;
    uint64_t ts_ns = 0;
    std::vector<uint8_t> bytes;
  };
  using HeldMap = std::map<uint64_t, Held>;

  static size_t range_memory(const Held& h);
  int64_t offset_of(uint32_t seq) const;
  uint64_t window_end() const;
  void deliver(std::span<const uint8_t> data, uint64_t ts_ns, StreamSink& sink);
  void skip(uint64_t len);
  void report_gap(StreamSink& sink);
  void hold(uint64_t begin, uint64_t end, const uint8_t* data, uint64_t ts_ns);
  void erase_held(HeldMap::iterator it);
  void drop_held_before_next();
  void drain(StreamSink& sink);
  bool give_up_front_hole(StreamSink& sink);
  void commit_tail(StreamSink& sink);
  void enforce_limits(StreamSink& sink);
  void out_of_window(int64_t begin, int64_t end, uint64_t captured, bool first_chunk, uint64_t ts_ns,
                     StreamSink& sink);
  void resync(uint64_t to, StreamSink& sink);

  ReassemblyLimits limits_;
  ReassemblyStats stats_;
  HeldMap held_;  // out-of-order ranges by stream offset
  std::set<std::pair<uint64_t, uint64_t>> held_by_age_;  // (ts_ns, offset) of each held range
  size_t held_bytes_ = 0;
  size_t held_mem_ = 0;  // memory_bytes()
  uint64_t next_ = 0;  // stream offset of the next byte to deliver
  uint32_t next_seq_ = 0;  // its sequence number
  uint64_t newest_ts_ = 0;  // newest packet time seen while anything was held
  uint64_t progress_ts_ = 0;  // time of the last record that extended the stream in order
  uint64_t gap_len_ = 0;  // bytes given up just before next_, not yet reported
  uint64_t peer_edge_ = 0;  // right edge of the peer's advertised window (stream offset), 0: none
  uint64_t seen_end_ = 0;  // end of the furthest data seen, in window or not
  // The current run of out-of-window data: [run_begin_, run_end_), each
  // record starting where the last one ended.
  uint64_t run_begin_ = 0, run_end_ = 0, run_first_ts_ = 0;
  uint32_t run_packets_ = 0;
  uint32_t tail_begin_ = 0, tail_end_ = 0;  // uncaptured tail of the last record (seq)
  bool tail_pending_ = false;
  bool started_ = false, syn_ = false, fin_ = false;
};

}  // namespace tapwire::dissect
