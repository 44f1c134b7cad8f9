#include "ring_drain.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace tapwire::sensor {

BpfRingReader::BpfRingReader(int map_fd, uint32_t ring_bytes)
    : fd_(map_fd), mask_(ring_bytes - 1), page_(static_cast<size_t>(sysconf(_SC_PAGESIZE))) {
  void* c = mmap(nullptr, page_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (c == MAP_FAILED) throw std::runtime_error(std::string("cannot map a ring buffer: ") + std::strerror(errno));
  // The data area is mapped twice in a row so a record that wraps around the
  // end reads as one contiguous range.
  void* p = mmap(nullptr, page_ + 2 * static_cast<size_t>(ring_bytes), PROT_READ, MAP_SHARED, fd_,
                 static_cast<off_t>(page_));
  if (p == MAP_FAILED) {
    int err = errno;
    munmap(c, page_);
    throw std::runtime_error(std::string("cannot map a ring buffer: ") + std::strerror(err));
  }
  consumer_ = static_cast<uint8_t*>(c);
  producer_ = static_cast<uint8_t*>(p);
  cons_ = __atomic_load_n(consumer_pos(), __ATOMIC_ACQUIRE);
}

BpfRingReader::BpfRingReader(BpfRingReader&& o) noexcept
    : fd_(o.fd_),
      mask_(o.mask_),
      page_(o.page_),
      consumer_(o.consumer_),
      producer_(o.producer_),
      cons_(o.cons_),
      prod_(o.prod_),
      head_next_(o.head_next_) {
  o.consumer_ = nullptr;
  o.producer_ = nullptr;
}

BpfRingReader::~BpfRingReader() {
  if (consumer_) munmap(consumer_, page_);
  if (producer_) munmap(producer_, page_ + 2 * (mask_ + 1));
}

uint64_t BpfRingReader::pending() const {
  return __atomic_load_n(producer_pos(), __ATOMIC_ACQUIRE) - __atomic_load_n(consumer_pos(), __ATOMIC_ACQUIRE);
}

std::span<const uint8_t> BpfRingReader::peek() {
  for (;;) {
    if (cons_ >= prod_) {
      prod_ = __atomic_load_n(producer_pos(), __ATOMIC_ACQUIRE);
      if (cons_ >= prod_) return {};
    }
    const uint8_t* hdr = data() + (cons_ & mask_);
    uint32_t len = __atomic_load_n(reinterpret_cast<const uint32_t*>(hdr), __ATOMIC_ACQUIRE);
    if (len & kRingBusyBit) return {};  // reserved, not committed yet: records after it wait
    uint32_t sample = len & ~(kRingBusyBit | kRingDiscardBit);
    uint64_t next = cons_ + ((static_cast<uint64_t>(sample) + kRingHeaderSize + 7) & ~uint64_t{7});
    if (len & kRingDiscardBit) {
      cons_ = next;
      continue;
    }
    head_next_ = next;
    return {hdr + kRingHeaderSize, sample};
  }
}

void BpfRingReader::advance() { cons_ = head_next_; }

void BpfRingReader::release() { __atomic_store_n(consumer_pos(), cons_, __ATOMIC_RELEASE); }

CaptureRingReader::CaptureRingReader(uint8_t* ring, uint32_t ring_bytes)
    : hdr_(reinterpret_cast<tw_cring_hdr*>(ring)), data_(ring + TW_CRING_HDR), bytes_(ring_bytes) {
  cons_ = head_next_ = __atomic_load_n(&hdr_->cons, __ATOMIC_ACQUIRE);
}

uint64_t CaptureRingReader::pending() const {
  return __atomic_load_n(&hdr_->prod, __ATOMIC_ACQUIRE) - __atomic_load_n(&hdr_->cons, __ATOMIC_ACQUIRE);
}

std::span<const uint8_t> CaptureRingReader::peek() {
  for (;;) {
    if (cons_ >= prod_) {
      prod_ = __atomic_load_n(&hdr_->prod, __ATOMIC_ACQUIRE);
      if (cons_ >= prod_) return {};
    }
    const uint64_t off = cons_ & (bytes_ - 1);
    tw_cring_rec rec;
    std::memcpy(&rec, data_ + off, sizeof rec);
    const uint64_t body = rec.len & ~TW_CRING_SKIP;
    const uint64_t next = cons_ + ((sizeof rec + body + 7) & ~uint64_t{7});
    // The programs never write a record past the data area's end, nor past
    // what they published: anything else is a broken ring.
    if (off + sizeof rec + body > bytes_ || next > prod_) {
      corrupt_bytes_ += prod_ - cons_;
      cons_ = head_next_ = prod_;
      return {};
    }
    if (rec.len & TW_CRING_SKIP) {
      cons_ = next;
      continue;
    }
    head_next_ = next;
    return {data_ + off + sizeof rec, static_cast<size_t>(body)};
  }
}

void CaptureRingReader::release() { __atomic_store_n(&hdr_->cons, cons_, __ATOMIC_RELEASE); }

}  // namespace tapwire::sensor
