// Reads one BPF ring buffer map through its mmap'd pages, without copying:
// each record is handed to a callback as a view into the ring, and its space
// is given back to the kernel after the callback has stored it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

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

  // Calls fn(record) for each committed record, up to max_records. Returns
  // the number of records consumed.
  template <typename Fn>
  size_t drain(Fn&& fn, size_t max_records = SIZE_MAX);

 private:
  int fd_;
  uint64_t mask_;
  size_t page_;
  uint8_t* consumer_ = nullptr;  // RW page with consumer_pos
  uint8_t* producer_ = nullptr;  // RO: producer_pos page, then data mapped twice
  uint64_t* consumer_pos() const { return reinterpret_cast<uint64_t*>(consumer_); }
  uint64_t* producer_pos() const { return reinterpret_cast<uint64_t*>(producer_); }
  const uint8_t* data() const { return producer_ + page_; }
};

// Kernel ring buffer record header: length with two flag bits, page offset.
inline constexpr uint32_t kRingBusyBit = 1u << 31;
inline constexpr uint32_t kRingDiscardBit = 1u << 30;
inline constexpr uint32_t kRingHeaderSize = 8;

template <typename Fn>
size_t BpfRingReader::drain(Fn&& fn, size_t max_records) {
  size_t n = 0;
  uint64_t cons = __atomic_load_n(consumer_pos(), __ATOMIC_ACQUIRE);
  uint64_t prod = __atomic_load_n(producer_pos(), __ATOMIC_ACQUIRE);
  while (cons < prod && n < max_records) {
    const uint8_t* hdr = data() + (cons & mask_);
    uint32_t len = __atomic_load_n(reinterpret_cast<const uint32_t*>(hdr), __ATOMIC_ACQUIRE);
    if (len & kRingBusyBit) break;  // reserved, not yet committed by the producer
    uint32_t sample = len & ~(kRingBusyBit | kRingDiscardBit);
    if (!(len & kRingDiscardBit)) fn(std::span<const uint8_t>(hdr + kRingHeaderSize, sample));
    cons += (static_cast<uint64_t>(sample) + kRingHeaderSize + 7) & ~uint64_t{7};
    n++;
    // Give space back in batches: one release store per 64 records.
    if ((n & 63) == 0) __atomic_store_n(consumer_pos(), cons, __ATOMIC_RELEASE);
    if (cons >= prod) prod = __atomic_load_n(producer_pos(), __ATOMIC_ACQUIRE);
  }
  __atomic_store_n(consumer_pos(), cons, __ATOMIC_RELEASE);
  return n;
}

}  // namespace tapwire::sensor
