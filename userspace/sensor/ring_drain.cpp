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
}

BpfRingReader::BpfRingReader(BpfRingReader&& o) noexcept
    : fd_(o.fd_), mask_(o.mask_), page_(o.page_), consumer_(o.consumer_), producer_(o.producer_) {
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

}  // namespace tapwire::sensor
