#include "activity_printer.hpp"

#include <arpa/inet.h>
#include <time.h>

#include <cinttypes>
#include <cstdio>
#include <string>

#include "bpf_capture.hpp"
#include "capture_drain.hpp"
#include "capture_store.hpp"
#include "segment.hpp"
#include "tapwire_abi.hpp"
#include "units.hpp"

namespace tapwire::sensor {

void ActivityPrinter::packet(const tw_pkt& p) {
  if (p.flags & TW_PKT_F_CONTINUATION) return;
  uint64_t sec = p.ts_ns / 1000000000ull;
  if (sec != window_start_) {
    if (suppressed_) std::printf("  ... and %" PRIu64 " more packets\n", suppressed_);
    window_start_ = sec;
    printed_in_window_ = 0;
    suppressed_ = 0;
  }
  if (++printed_in_window_ > 20) {
    suppressed_++;
    return;
  }
  char src[64], dst[64];
  auto addr = [](const tw_pkt& pk, const uint8_t* a, uint16_t port, char* out, size_t n) {
    char ip[48];
    inet_ntop(pk.ip_version == 4 ? AF_INET : AF_INET6, a, ip, sizeof ip);
    std::snprintf(out, n, pk.ip_version == 4 ? "%s:%u" : "[%s]:%u", ip, port);
  };
  addr(p, p.saddr, p.sport, src, sizeof src);
  addr(p, p.daddr, p.dport, dst, sizeof dst);
  char flags[8] = {};
  int f = 0;
  if (p.tcp_flags & TW_TCP_SYN) flags[f++] = 'S';
  if (p.tcp_flags & TW_TCP_FIN) flags[f++] = 'F';
  if (p.tcp_flags & TW_TCP_RST) flags[f++] = 'R';
  if (p.tcp_flags & TW_TCP_PSH) flags[f++] = 'P';
  if (p.tcp_flags & TW_TCP_ACK) flags[f++] = '.';
  time_t t = static_cast<time_t>(sec);
  tm tmv{};
  localtime_r(&t, &tmv);
  auto it = attached_.find(p.ifindex);
  std::printf("%02d:%02d:%02d.%06u %s %-7s %s %s > %s %s%s%s len %u%s\n", tmv.tm_hour, tmv.tm_min, tmv.tm_sec,
              static_cast<unsigned>((p.ts_ns % 1000000000ull) / 1000),
              it != attached_.end() ? it->second.name.c_str() : "?", std::string(abi::direction_name(p.direction)).c_str(),
              p.l4_proto == 6 ? "TCP" : "UDP", src, dst, p.l4_proto == 6 ? "[" : "", p.l4_proto == 6 ? flags : "",
              p.l4_proto == 6 ? "]" : "", p.payload_len, (p.flags & TW_PKT_F_TRUNCATED) ? " (truncated)" : "");
}

void ActivityPrinter::summary(const BpfCapture& bpf, const CaptureDrain& drain, const shm::CaptureStore& store) {
  auto per_cpu = bpf.read_counters();
  uint64_t pk = 0, by = 0, dr = 0;
  for (auto& c : per_cpu) {
    pk += c.stat[TW_STAT_PACKETS_CAPTURED];
    by += c.stat[TW_STAT_BYTES_CAPTURED];
    for (auto d : c.drop) dr += d;
  }
  for (auto d : drain.user_drops()) dr += d;
  auto st = store.stats();
  std::printf("-- %" PRIu64 " packets/s, %s/s payload | total %" PRIu64 " packets, %s | drops %" PRIu64
              " | %" PRIu64 " segments, %s stored\n",
              pk - last_packets_, format_size(by - last_bytes_).c_str(), pk, format_size(by).c_str(), dr,
              st.segments, format_size(st.bytes_stored).c_str());
  std::fflush(stdout);
  last_packets_ = pk;
  last_bytes_ = by;
}

}  // namespace tapwire::sensor
