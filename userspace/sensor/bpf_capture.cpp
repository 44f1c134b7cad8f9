#include "bpf_capture.hpp"

#include <arpa/inet.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "capture.skel.h"

namespace tapwire::sensor {
namespace {

int silent_print(enum libbpf_print_level level, const char* fmt, va_list args) {
  // libbpf's verifier logs and warnings only matter when debugging.
  if (level == LIBBPF_WARN && getenv("TAPWIRE_BPF_DEBUG")) return vfprintf(stderr, fmt, args);
  if (level == LIBBPF_DEBUG && getenv("TAPWIRE_BPF_DEBUG")) return vfprintf(stderr, fmt, args);
  return 0;
}

[[noreturn]] void fail(const std::string& what, int err) {
  err = err < 0 ? -err : err;
  std::string hint;
  if (err == EPERM || err == EACCES)
    hint = ": run as root, or with the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON";
  throw std::runtime_error(what + ": " + std::strerror(err) + hint);
}

uint32_t round_up_pow2_pages(uint32_t bytes) {
  uint32_t page = static_cast<uint32_t>(sysconf(_SC_PAGESIZE));
  uint32_t v = page;
  while (v < bytes && v < (1u << 30)) v <<= 1;
  return v;
}

struct Cidr {
  int family;
  uint8_t addr[16];
  uint32_t prefix;
};

Cidr parse_cidr(const std::string& text) {
  Cidr c{};
  std::string addr = text;
  int prefix = -1;
  if (auto slash = text.find('/'); slash != std::string::npos) {
    addr = text.substr(0, slash);
    const std::string p = text.substr(slash + 1);
    char* end = nullptr;
    long v = std::strtol(p.c_str(), &end, 10);
    if (p.empty() || *end != '\0' || v < 0 || v > 128)
      throw std::runtime_error("bad CIDR '" + text + "': the prefix length must be a number 0-128");
    prefix = static_cast<int>(v);
  }
  if (inet_pton(AF_INET, addr.c_str(), c.addr) == 1) {
    c.family = AF_INET;
    if (prefix > 32) throw std::runtime_error("bad CIDR '" + text + "': an IPv4 prefix is at most 32");
    c.prefix = prefix < 0 ? 32 : static_cast<uint32_t>(prefix);
  } else if (inet_pton(AF_INET6, addr.c_str(), c.addr) == 1) {
    c.family = AF_INET6;
    c.prefix = prefix < 0 ? 128 : static_cast<uint32_t>(prefix);
  } else {
    throw std::runtime_error("bad CIDR '" + text + "': expected an IPv4 or IPv6 address with an optional /prefix");
  }
  return c;
}

void clear_map(int fd, size_t key_size) {
  std::vector<uint8_t> key(key_size), next(key_size);
  // Collect first: deleting while iterating restarts the walk on hash maps.
  std::vector<std::vector<uint8_t>> keys;
  void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, next.data()) == 0 && keys.size() < 100000) {
    keys.push_back(next);
    key = next;
    prev = key.data();
  }
  for (auto& k : keys) bpf_map_delete_elem(fd, k.data());
}

}  // namespace

BpfCapture::BpfCapture(uint32_t ring_bytes_per_cpu, uint64_t wakeup_bytes) {
  libbpf_set_print(silent_print);
  ring_bytes_ = round_up_pow2_pages(ring_bytes_per_cpu);
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) fail("cannot count CPUs", ncpu);

  skel_ = capture_bpf::open();
  if (!skel_) fail("cannot open the capture BPF object", errno);
  skel_->rodata->tw_wakeup_bytes = wakeup_bytes;
  bpf_map__set_max_entries(skel_->maps.tw_rings, static_cast<uint32_t>(ncpu));
  // The inner map template's size does not matter: the kernel does not
  // compare max_entries of ring buffers put into the array.
  if (int err = capture_bpf::load(skel_); err) {
    capture_bpf::destroy(skel_);
    skel_ = nullptr;
    fail("cannot load the capture BPF programs", err);
  }
  int outer = bpf_map__fd(skel_->maps.tw_rings);
  for (int cpu = 0; cpu < ncpu; cpu++) {
    char name[16];
    std::snprintf(name, sizeof name, "tw_ring%u", static_cast<unsigned>(cpu) % 100000u);
    int fd = bpf_map_create(BPF_MAP_TYPE_RINGBUF, name, 0, 0, ring_bytes_, nullptr);
    if (fd < 0) {
      int err = errno;
      release();
      fail("cannot create a " + std::to_string(ring_bytes_) + "-byte ring buffer", err);
    }
    ring_fds_.push_back(fd);
    uint32_t key = static_cast<uint32_t>(cpu);
    if (bpf_map_update_elem(outer, &key, &fd, BPF_ANY) != 0) {
      int err = errno;
      release();
      fail("cannot install ring buffer " + std::to_string(cpu), err);
    }
  }
  write_settings();
}

BpfCapture::~BpfCapture() { release(); }

void BpfCapture::release() {
  for (int fd : ring_fds_) close(fd);
  ring_fds_.clear();
  if (skel_) capture_bpf::destroy(skel_);
  skel_ = nullptr;
}

int BpfCapture::ingress_prog_fd() const { return bpf_program__fd(skel_->progs.tw_ingress); }
int BpfCapture::egress_prog_fd() const { return bpf_program__fd(skel_->progs.tw_egress); }

void BpfCapture::write_settings() {
  tw_settings s{};
  s.flags = settings_flags_ | (iface_allowlist_ ? TW_SET_IFACE_ALLOWLIST : 0) | (targeting_ ? TW_SET_TARGETS : 0);
  s.snaplen = snaplen_;
  uint32_t key = 0;
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.tw_settings), &key, &s, BPF_ANY) != 0)
    fail("cannot write capture settings", errno);
}

void BpfCapture::set_filters(const CaptureFilters& f) {
  // Parse everything before touching a map, so a bad rule changes nothing.
  std::vector<std::pair<Cidr, uint32_t>> cidrs;
  for (auto& c : f.allow_cidrs) cidrs.emplace_back(parse_cidr(c), TW_RULE_ALLOW);
  for (auto& c : f.deny_cidrs) cidrs.emplace_back(parse_cidr(c), TW_RULE_DENY);

  int fd4 = bpf_map__fd(skel_->maps.tw_cidr4), fd6 = bpf_map__fd(skel_->maps.tw_cidr6);
  int fdp = bpf_map__fd(skel_->maps.tw_ports);
  clear_map(fd4, sizeof(tw_cidr4_key));
  clear_map(fd6, sizeof(tw_cidr6_key));
  clear_map(fdp, sizeof(uint16_t));
  for (auto& [c, action] : cidrs) {
    int rc;
    if (c.family == AF_INET) {
      tw_cidr4_key k{};
      k.prefixlen = c.prefix;
      std::memcpy(k.addr, c.addr, 4);
      rc = bpf_map_update_elem(fd4, &k, &action, BPF_ANY);
    } else {
      tw_cidr6_key k{};
      k.prefixlen = c.prefix;
      std::memcpy(k.addr, c.addr, 16);
      rc = bpf_map_update_elem(fd6, &k, &action, BPF_ANY);
    }
    if (rc != 0) fail("cannot install a CIDR rule", errno);
  }
  auto put_port = [&](uint16_t port, uint32_t action) {
    if (bpf_map_update_elem(fdp, &port, &action, BPF_ANY) != 0) fail("cannot install a port rule", errno);
  };
  for (auto p : f.allow_ports) put_port(p, TW_RULE_ALLOW);
  for (auto p : f.deny_ports) put_port(p, TW_RULE_DENY);

  settings_flags_ = (f.allow_cidrs.empty() ? 0 : TW_SET_CIDR_ALLOWLIST) |
                    (f.allow_ports.empty() ? 0 : TW_SET_PORT_ALLOWLIST) |
                    (cidrs.empty() ? 0 : TW_SET_CIDR_RULES) |
                    (f.allow_ports.empty() && f.deny_ports.empty() ? 0 : TW_SET_PORT_RULES);
  snaplen_ = f.snaplen;
  write_settings();
}

void BpfCapture::set_interface(uint32_t ifindex, bool has_l2) {
  uint32_t flags = TW_IF_CAPTURE | (has_l2 ? 0 : TW_IF_NO_L2);
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.tw_ifaces), &ifindex, &flags, BPF_ANY) != 0)
    fail("cannot register interface " + std::to_string(ifindex), errno);
}

void BpfCapture::forget_interface(uint32_t ifindex) {
  bpf_map_delete_elem(bpf_map__fd(skel_->maps.tw_ifaces), &ifindex);
}

void BpfCapture::set_targeting(bool on) {
  if (on == targeting_) return;
  targeting_ = on;
  write_settings();
}

void BpfCapture::add_target(uint8_t ip_version, const uint8_t addr[16]) {
  tw_ip_key k{};
  k.ip_version = ip_version;
  std::memcpy(k.addr, addr, ip_version == 6 ? 16 : 4);
  uint32_t one = 1;
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.tw_targets), &k, &one, BPF_ANY) != 0)
    fail("cannot add a target address", errno);
}

void BpfCapture::remove_target(uint8_t ip_version, const uint8_t addr[16]) {
  tw_ip_key k{};
  k.ip_version = ip_version;
  std::memcpy(k.addr, addr, ip_version == 6 ? 16 : 4);
  bpf_map_delete_elem(bpf_map__fd(skel_->maps.tw_targets), &k);
}

std::vector<tw_counters> BpfCapture::read_counters() const {
  int ncpu = libbpf_num_possible_cpus();
  std::vector<tw_counters> out(static_cast<size_t>(ncpu));
  uint32_t key = 0;
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.tw_counters), &key, out.data()) != 0)
    std::memset(out.data(), 0, out.size() * sizeof(tw_counters));
  return out;
}

}  // namespace tapwire::sensor
