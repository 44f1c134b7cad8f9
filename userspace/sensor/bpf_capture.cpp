#include "bpf_capture.hpp"

#include <arpa/inet.h>
#include <sys/mman.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <set>
#include <stdexcept>

#include "capture.skel.h"
#include "cidr.hpp"

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

// Empties a map. Collects the keys first: deleting while iterating restarts
// the walk on hash maps. Returns false if a key could not be deleted.
bool clear_map(int fd, size_t key_size) {
  std::vector<uint8_t> key(key_size), next(key_size);
  std::vector<std::vector<uint8_t>> keys;
  void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, next.data()) == 0 && keys.size() < 100000) {
    keys.push_back(next);
    key = next;
    prev = key.data();
  }
  bool ok = true;
  for (auto& k : keys) ok &= bpf_map_delete_elem(fd, k.data()) == 0 || errno == ENOENT;
  return ok;
}

template <typename K>
size_t distinct_keys(const std::vector<std::pair<K, uint32_t>>& v) {
  std::set<std::vector<uint8_t>> keys;
  for (auto& [k, a] : v) {
    auto* b = reinterpret_cast<const uint8_t*>(&k);
    keys.emplace(b, b + sizeof k);
  }
  return keys.size();
}

}  // namespace

BpfCapture::BpfCapture(uint32_t ring_bytes_per_cpu, uint64_t wakeup_bytes, FlowAccounting flows) : flows_(flows) {
  if (flows_.max_flows < 1) flows_.max_flows = 1;
  libbpf_set_print(silent_print);
  ring_bytes_ = round_up_pow2_pages(ring_bytes_per_cpu);
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) fail("cannot count CPUs", ncpu);

  skel_ = capture_bpf::open();
  if (!skel_) fail("cannot open the capture BPF object", errno);
  skel_->rodata->tw_wakeup_bytes = wakeup_bytes;
  skel_->rodata->tw_cring_bytes = ring_bytes_;
  ring_count_ = static_cast<uint32_t>(ncpu);
  bpf_map__set_max_entries(skel_->maps.tw_crings, ring_count_);
  bpf_map__set_value_size(skel_->maps.tw_crings, static_cast<uint32_t>(ring_stride()));
  bpf_map__set_max_entries(skel_->maps.tw_flows, flows_.max_flows);
  if (int err = capture_bpf::load(skel_); err) {
    capture_bpf::destroy(skel_);
    skel_ = nullptr;
    fail("cannot load the capture BPF programs", err);
  }
  // The rings: one mapping of the whole array, each value a ring (the
  // stride is a multiple of the page size, so every ring is page-aligned).
  void* m = mmap(nullptr, ring_stride() * ring_count_, PROT_READ | PROT_WRITE, MAP_SHARED,
                 bpf_map__fd(skel_->maps.tw_crings), 0);
  if (m == MAP_FAILED) {
    int err = errno;
    release();
    fail("cannot map the " + std::to_string(ring_count_) + " capture rings of " + std::to_string(ring_bytes_) +
             " bytes",
         err);
  }
  rings_ = static_cast<uint8_t*>(m);
  if (!skel_->bss) {
    release();
    throw std::runtime_error("cannot map the capture programs' global data: this kernel lacks BPF_F_MMAPABLE "
                             "(Linux 5.5 or later is needed)");
  }
  // The first rule set: no filter, no interface yet. Generation 0 starts
  // with empty settings, so this also turns the interface allowlist on
  // before anything is attached.
  commit(rules_, ifaces_, targeting_);
}

BpfCapture::~BpfCapture() { release(); }

void BpfCapture::release() {
  if (rings_) munmap(rings_, ring_stride() * ring_count_);
  rings_ = nullptr;
  if (skel_) capture_bpf::destroy(skel_);
  skel_ = nullptr;
}

int BpfCapture::doorbell_fd() const { return bpf_map__fd(skel_->maps.tw_doorbell); }

int BpfCapture::ingress_prog_fd() const { return bpf_program__fd(skel_->progs.tw_ingress); }
int BpfCapture::egress_prog_fd() const { return bpf_program__fd(skel_->progs.tw_egress); }

int BpfCapture::inner_fd(const char* what, uint32_t gen) const {
  const auto& m = skel_->maps;
  const std::string w = what;
  bpf_map* g[2] = {nullptr, nullptr};
  if (w == "cidr4") g[0] = m.tw_cidr4_g0, g[1] = m.tw_cidr4_g1;
  if (w == "cidr6") g[0] = m.tw_cidr6_g0, g[1] = m.tw_cidr6_g1;
  if (w == "ports") g[0] = m.tw_ports_g0, g[1] = m.tw_ports_g1;
  if (w == "ifaces") g[0] = m.tw_ifaces_g0, g[1] = m.tw_ifaces_g1;
  static_assert(TW_RULE_GENERATIONS == 2, "one inner map per generation in the skeleton");
  return bpf_map__fd(g[gen & 1]);
}

BpfCapture::Rules BpfCapture::parse(const CaptureFilters& f) {
  Rules r;
  auto add = [&](const std::string& text, uint32_t action) {
    Cidr c = parse_cidr(text);
    if (c.family == AF_INET) {
      tw_cidr4_key k{};
      k.prefixlen = c.prefix;
      std::memcpy(k.addr, c.addr, 4);
      r.cidr4.emplace_back(k, action);
    } else {
      tw_cidr6_key k{};
      k.prefixlen = c.prefix;
      std::memcpy(k.addr, c.addr, 16);
      r.cidr6.emplace_back(k, action);
    }
  };
  // Allows first, then denies: a prefix given both ways ends up denied.
  for (auto& c : f.allow_cidrs) add(c, TW_RULE_ALLOW);
  for (auto& c : f.deny_cidrs) add(c, TW_RULE_DENY);
  for (auto p : f.allow_ports) r.ports.emplace_back(p, TW_RULE_ALLOW);
  for (auto p : f.deny_ports) r.ports.emplace_back(p, TW_RULE_DENY);
  const size_t n4 = distinct_keys(r.cidr4), n6 = distinct_keys(r.cidr6), np = distinct_keys(r.ports);
  if (n4 > TW_MAX_RULES || n6 > TW_MAX_RULES)
    throw std::runtime_error("too many CIDR rules (" + std::to_string(n4) + " IPv4, " + std::to_string(n6) +
                             " IPv6): at most " + std::to_string(TW_MAX_RULES) + " of each");
  if (np > TW_MAX_RULES)
    throw std::runtime_error("too many port rules (" + std::to_string(np) + "): at most " +
                             std::to_string(TW_MAX_RULES));
  r.flags = (f.allow_cidrs.empty() ? 0 : TW_SET_CIDR_ALLOWLIST) | (f.allow_ports.empty() ? 0 : TW_SET_PORT_ALLOWLIST) |
            (r.cidr4.empty() && r.cidr6.empty() ? 0 : TW_SET_CIDR_RULES) | (r.ports.empty() ? 0 : TW_SET_PORT_RULES);
  r.snaplen = f.snaplen;
  return r;
}

void BpfCapture::clear_generation(uint32_t gen) {
  bool ok = clear_map(inner_fd("cidr4", gen), sizeof(tw_cidr4_key)) &&
            clear_map(inner_fd("cidr6", gen), sizeof(tw_cidr6_key)) &&
            clear_map(inner_fd("ports", gen), sizeof(uint16_t)) && clear_map(inner_fd("ifaces", gen), sizeof(uint32_t));
  tw_settings none{};
  if (!ok || bpf_map_update_elem(bpf_map__fd(skel_->maps.tw_settings), &gen, &none, BPF_ANY) != 0)
    fail("cannot clear rule generation " + std::to_string(gen), errno);
}

void BpfCapture::fill_generation(uint32_t gen, const Rules& r, const std::map<uint32_t, uint32_t>& ifaces,
                                 bool targeting) {
  auto put = [&](const char* what, const void* key, const void* value) {
    if (bpf_map_update_elem(inner_fd(what, gen), key, value, BPF_ANY) != 0)
      fail(std::string("cannot install a rule (") + what + ")", errno);
  };
  for (auto& [k, action] : r.cidr4) put("cidr4", &k, &action);
  for (auto& [k, action] : r.cidr6) put("cidr6", &k, &action);
  for (auto& [port, action] : r.ports) put("ports", &port, &action);
  for (auto& [idx, flags] : ifaces) put("ifaces", &idx, &flags);
  tw_settings s{};
  s.flags = r.flags | TW_SET_IFACE_ALLOWLIST | (targeting ? TW_SET_TARGETS : 0) |
            (flows_.tcp ? TW_SET_FLOWS_TCP : 0) | (flows_.udp ? TW_SET_FLOWS_UDP : 0);
  s.snaplen = r.snaplen;
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.tw_settings), &gen, &s, BPF_ANY) != 0)
    fail("cannot write capture settings", errno);
}

// Returns once no program can still be reading generation gen's rules.
// Packets that read the generation number just before a switch may still be
// in a program. An update of an array-of-maps returns only after an RCU
// grace period (the kernel waits for running non-sleepable BPF programs, so
// that userspace knows they all see the new value: kernel/bpf/syscall.c,
// maybe_wait_bpf_programs), and TC programs run inside RCU read-side
// sections: putting gen's own inner map back into its slot changes nothing
// but returns only when those packets are done.
bool BpfCapture::wait_for_readers(uint32_t gen) {
  int outer = bpf_map__fd(skel_->maps.tw_ifaces), inner = inner_fd("ifaces", gen);
  return bpf_map_update_elem(outer, &gen, &inner, BPF_ANY) == 0;
}

void BpfCapture::commit(const Rules& r, const std::map<uint32_t, uint32_t>& ifaces, bool targeting) {
  const uint32_t old = active_, next = (active_ + 1) % TW_RULE_GENERATIONS;
  // The generation not in force has no reader (the previous switch waited
  // for them) and is empty unless a clean-up failed: start from nothing.
  if (grace_pending_) {
    if (!wait_for_readers(next)) fail("cannot switch rule generations", errno);
    grace_pending_ = false;
  }
  try {
    clear_generation(next);
    fill_generation(next, r, ifaces, targeting);
  } catch (...) {
    try {
      clear_generation(next);
    } catch (...) {
    }
    throw;  // the rules in force are untouched
  }
  // The switch: one aligned 4-byte store into the programs' mmap'd .bss.
  // Every packet from here on reads the new generation.
  __atomic_store_n(&skel_->bss->tw_active_gen, next, __ATOMIC_SEQ_CST);
  active_ = next;
  switches_++;
  if (!wait_for_readers(old)) {
    // The old rules stay as they are (a packet still on them sees a whole
    // set); the next switch waits again before it reuses them.
    grace_pending_ = true;
    return;
  }
  try {
    clear_generation(old);
  } catch (const std::exception&) {
    // Left for the next switch, which starts by clearing its generation.
  }
}

void BpfCapture::set_filters(const CaptureFilters& f, const std::set<uint32_t>* keep_ifaces) {
  Rules r = parse(f);  // a bad rule throws before any map is touched
  std::map<uint32_t, uint32_t> ifaces = ifaces_;
  if (keep_ifaces)
    std::erase_if(ifaces, [&](const auto& e) { return !keep_ifaces->count(e.first); });
  commit(r, ifaces, targeting_);
  rules_ = std::move(r);
  ifaces_ = std::move(ifaces);
}

void BpfCapture::set_interface(uint32_t ifindex, bool has_l2) {
  uint32_t flags = TW_IF_CAPTURE | (has_l2 ? 0 : TW_IF_NO_L2);
  if (bpf_map_update_elem(inner_fd("ifaces", active_), &ifindex, &flags, BPF_ANY) != 0)
    fail("cannot register interface " + std::to_string(ifindex), errno);
  ifaces_[ifindex] = flags;
}

void BpfCapture::forget_interface(uint32_t ifindex) {
  bpf_map_delete_elem(inner_fd("ifaces", active_), &ifindex);
  ifaces_.erase(ifindex);
}

void BpfCapture::set_targeting(bool on) {
  if (on == targeting_) return;
  commit(rules_, ifaces_, on);
  targeting_ = on;
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

int BpfCapture::flows_fd() const { return bpf_map__fd(skel_->maps.tw_flows); }
int BpfCapture::flow_ends_fd() const { return bpf_map__fd(skel_->maps.tw_flow_ends); }

void BpfCapture::set_flow_protocols(bool tcp, bool udp) {
  if (tcp == flows_.tcp && udp == flows_.udp) return;
  const FlowAccounting before = flows_;
  flows_.tcp = tcp;
  flows_.udp = udp;
  try {
    commit(rules_, ifaces_, targeting_);
  } catch (...) {
    flows_ = before;
    throw;
  }
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
