// Reads one BPF ring buffer map through its mmap'd pages, without copying:
// each record is handed to a callback as a view into the ring, and its space
// is given back to the kernel after the callback has stored it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "tapwire_abi.h"

// Records are read in place; the caller stores a record before advance()
// and release() hand its space back to the kernel.

namespace tapwire::sensor {

class BpfRingReader {
 public:
  BpfRingReader(int map_fd, uint32_t ring_bytes);  // throws std::runtime_error
  ~BpfRingReader();
  BpfRingReader(BpfRingReader&&) noexcept;
  BpfRingReader(const BpfRingReader&) = delete;
  BpfRingReader& operator=(const BpfRingReader&) = delete;
  BpfRingReader& operator=(BpfRingReader&&) = delete;

  int fd() const { return fd_; }
  // Bytes the producer has written that are not consumed yet.
  uint64_t pending() const;

  // The next committed record, without consuming it; empty if none.
  std::span<const uint8_t> peek();
  // Consumes the record peek() returned.
  void advance();
  // Gives consumed space back to the kernel (one release store).
  void release();

 private:
  int fd_;
  uint64_t mask_;
  size_t page_;
  uint8_t* consumer_ = nullptr;  // RW page with consumer_pos
  uint8_t* producer_ = nullptr;  // RO: producer_pos page, then data mapped twice
  uint64_t* consumer_pos() const { return reinterpret_cast<uint64_t*>(consumer_); }
  uint64_t* producer_pos() const { return reinterpret_cast<uint64_t*>(producer_); }
  const uint8_t* data() const { return producer_ + page_; }
  uint64_t cons_ = 0;  // our consumer position, ahead of the published one
  uint64_t prod_ = 0;  // last producer position seen
  uint64_t head_next_ = 0;  // consumer position after the peeked record
};

// Reads one capture ring (tapwire_abi.h, struct tw_cring_hdr) in place,
// with the same interface: records are views into the ring, and their space
// goes back to the programs on release(). A ring whose header says something
// impossible (a record longer than the ring) is given up: everything in it
// is skipped and counted in corrupt_bytes().
class CaptureRingReader {
 public:
  CaptureRingReader(uint8_t* ring, uint32_t ring_bytes);

  uint64_t pending() const;
  std::span<const uint8_t> peek();
  void advance() { cons_ = head_next_; }
  void release();
  uint64_t corrupt_bytes() const { return corrupt_bytes_; }

  // The ring as the segment writer sees it: its data area (mapped writable:
  // the drain turns an invalid record into a skip record in place), the
  // producer's position, and giving space back up to a position.
  uint8_t* data() const { return data_; }
  uint64_t bytes() const { return bytes_; }
  uint64_t producer() const { return __atomic_load_n(&hdr_->prod, __ATOMIC_ACQUIRE); }
  uint64_t consumer() const { return __atomic_load_n(&hdr_->cons, __ATOMIC_ACQUIRE); }
  void release_to(uint64_t pos) { __atomic_store_n(&hdr_->cons, pos, __ATOMIC_RELEASE); }
  // CLOCK_REALTIME - CLOCK_MONOTONIC for the programs' timestamps.
  void set_real_offset(uint64_t off) { __atomic_store_n(&hdr_->real_off, off, __ATOMIC_RELAXED); }
  void add_corrupt(uint64_t n) { corrupt_bytes_ += n; }

 private:
  tw_cring_hdr* hdr_;
  uint8_t* data_;
  uint64_t bytes_;
  uint64_t cons_ = 0;
  uint64_t prod_ = 0;
  uint64_t head_next_ = 0;
  uint64_t corrupt_bytes_ = 0;
};

// Kernel ring buffer record header: length with two flag bits, page offset.
inline constexpr uint32_t kRingBusyBit = 1u << 31;
inline constexpr uint32_t kRingDiscardBit = 1u << 30;
inline constexpr uint32_t kRingHeaderSize = 8;

}  // namespace tapwire::sensor
