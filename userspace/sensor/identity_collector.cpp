#include "identity_collector.hpp"

#include <fcntl.h>
#include <linux/capability.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "identity.skel.h"
#include "ring_drain.hpp"

namespace tapwire::sensor {
namespace {

int quiet_print(enum libbpf_print_level level, const char* fmt, va_list args) {
  // libbpf's verifier logs and warnings only matter when debugging.
  if (level != LIBBPF_INFO && getenv("TAPWIRE_BPF_DEBUG")) return vfprintf(stderr, fmt, args);
  return 0;
}

// What the identity programs need, found by running with fewer (setpriv
// --bounding-set; tests/integration/test_identity_bpf.py checks it): loading
// cgroup_skb and cgroup_sock programs takes CAP_BPF + CAP_NET_ADMIN, the raw
// tracepoints and their reads of kernel memory CAP_PERFMON (without it the
// verifier refuses them: EINVAL); attaching to the cgroup root then needs no
// more than an fd of its directory. CAP_SYS_ADMIN alone covers all three.
constexpr const char* kCapsHint = "run as root, or with the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN";

bool has_cap(int cap) {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capget, &hdr, data) != 0) return false;
  return (data[cap / 32].effective >> (cap % 32)) & 1u;
}

// The BPF capabilities this process lacks, e.g. "CAP_PERFMON"; empty if none.
std::string missing_caps() {
  if (has_cap(CAP_SYS_ADMIN)) return "";
  std::string out;
  for (auto [cap, name] :
       {std::pair{CAP_BPF, "CAP_BPF"}, {CAP_PERFMON, "CAP_PERFMON"}, {CAP_NET_ADMIN, "CAP_NET_ADMIN"}})
    if (!has_cap(cap)) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

// what: "cannot ..."; then the error, then what to do about it. when_capable:
// the likely cause of EPERM/EACCES/EINVAL when no capability is missing.
[[noreturn]] void fail(const std::string& what, int err, const char* when_capable = nullptr) {
  err = err < 0 ? -err : err;
  std::string hint;
  if (std::string missing = missing_caps(); !missing.empty() && (err == EPERM || err == EACCES || err == EINVAL)) {
    hint = std::string(": ") + kCapsHint + " (missing: " + missing + ")";
  } else if ((err == ESRCH || err == ENOENT || err == EINVAL) && access("/sys/kernel/btf/vmlinux", R_OK) != 0) {
    hint = ": the kernel exposes no BTF (/sys/kernel/btf/vmlinux): use a kernel built with CONFIG_DEBUG_INFO_BTF=y";
  } else if (when_capable && (err == EPERM || err == EACCES || err == EINVAL)) {
    hint = std::string(": ") + when_capable;
  }
  throw std::runtime_error(what + ": " + std::strerror(err) + hint);
}

uint32_t round_up_pow2_pages(uint32_t bytes) {
  uint32_t v = static_cast<uint32_t>(sysconf(_SC_PAGESIZE));
  while (v < bytes && v < (1u << 30)) v <<= 1;
  return v;
}

// CLOCK_REALTIME - CLOCK_MONOTONIC now, in ns: the realtime reading taken
// between two monotonic ones, against their midpoint.
int64_t realtime_offset_ns() {
  timespec m0{}, r{}, m1{};
  clock_gettime(CLOCK_MONOTONIC, &m0);
  clock_gettime(CLOCK_REALTIME, &r);
  clock_gettime(CLOCK_MONOTONIC, &m1);
  auto ns = [](const timespec& t) { return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec; };
  return ns(r) - (ns(m0) + ns(m1)) / 2;
}

constexpr uint8_t kKnownSockFlags = TW_SOCK_F_NO_CREATOR | TW_SOCK_F_ACCEPTED | TW_SOCK_F_UNCONNECTED;

bool valid_addr(const uint8_t* a, uint8_t ip_version) {
  if (ip_version == 6) return true;
  for (int i = 4; i < 16; i++)
    if (a[i]) return false;  // IPv4 in the first 4 bytes, the rest zero
  return true;
}

bool valid_sock(const tw_sock_event& e) {
  if (e.type != TW_IDENT_SOCK_OPEN && e.type != TW_IDENT_SOCK_CLOSE) return false;
  if (e.l4_proto != 6 && e.l4_proto != 17) return false;
  if (e.ip_version != 4 && e.ip_version != 6) return false;
  if (e.flags & ~kKnownSockFlags) return false;
  if (e.cookie == 0) return false;
  if ((e.flags & TW_SOCK_F_UNCONNECTED) && e.rport != 0) return false;
  return valid_addr(e.laddr, e.ip_version) && valid_addr(e.raddr, e.ip_version);
}

bool valid_exec(const tw_exec_event& e) {
  if (e.type != TW_IDENT_EXEC && e.type != TW_IDENT_EXIT) return false;
  if (e.filename_len >= TW_EXEC_FILENAME_MAX) return false;
  if (e.type == TW_IDENT_EXIT && e.filename_len != 0) return false;
  return e.tgid != 0;
}

}  // namespace

std::string_view ident_event_name(unsigned type) {
  switch (type) {
    case TW_IDENT_SOCK_OPEN: return "sock_open";
    case TW_IDENT_SOCK_CLOSE: return "sock_close";
    case TW_IDENT_EXEC: return "exec";
    case TW_IDENT_EXIT: return "exit";
    default: return "";
  }
}

uint64_t IdentityCounters::total_drops() const {
  uint64_t n = invalid_records;
  for (auto d : drops) n += d;
  return n;
}

static IdentityOptions with_ring_bytes(uint32_t ring_bytes) {
  IdentityOptions o;
  o.ring_bytes = ring_bytes;
  return o;
}

IdentityCollector::IdentityCollector(uint32_t ring_bytes) : IdentityCollector(with_ring_bytes(ring_bytes)) {}

IdentityCollector::IdentityCollector(const IdentityOptions& opt) {
  libbpf_set_print(quiet_print);
  cgroup2_mount_ = opt.cgroup2_mount.empty() ? find_cgroup2_mount() : opt.cgroup2_mount;
  struct stat st {};
  if (stat(cgroup2_mount_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw std::runtime_error("cannot use the cgroup v2 root " + cgroup2_mount_ + ": " + std::strerror(errno) +
                             ": give the cgroup2 mount point");
  cgroups_ = std::make_unique<CgroupResolver>(cgroup2_mount_);
  ring_bytes_ = round_up_pow2_pages(opt.ring_bytes);

  skel_ = identity_bpf::open();
  if (!skel_) fail("cannot open the identity BPF object", errno);
  skel_->rodata->tw_ident_wakeup_bytes = opt.wakeup_bytes;
  // 1: the kernel lets cgroup_skb programs call it; 0 or an error: it does not.
  skel_->rodata->tw_skb_netns_cookie =
      opt.skb_netns_cookie_helper &&
      libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SKB, BPF_FUNC_get_netns_cookie, nullptr) == 1;
  if (int err = bpf_map__set_max_entries(skel_->maps.tw_ident_ring, ring_bytes_); err) {
    release();
    fail("cannot size the identity ring buffer to " + std::to_string(ring_bytes_) + " bytes", err);
  }
  if (int err = identity_bpf::load(skel_); err) {
    release();
    fail("cannot load the identity BPF programs", err,
         "the kernel's verifier refused them: set TAPWIRE_BPF_DEBUG=1 to see its log");
  }
  try {
    ring_ = std::make_unique<BpfRingReader>(bpf_map__fd(skel_->maps.tw_ident_ring), ring_bytes_);
    attach();
  } catch (...) {
    release();
    throw;
  }
}

void IdentityCollector::attach() {
  int cg = open(cgroup2_mount_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg < 0) fail("cannot open the cgroup v2 root " + cgroup2_mount_, errno);
  // Creation and release first, so that sockets announced by the packet
  // programs are known from their start and get their close.
  struct {
    bpf_program* prog;
    const char* what;
  } const cgroup_progs[] = {
      {skel_->progs.tw_sock_create, "cgroup/sock_create"},
      {skel_->progs.tw_sock_release, "cgroup/sock_release"},
      {skel_->progs.tw_ident_ingress, "cgroup_skb/ingress"},
      {skel_->progs.tw_ident_egress, "cgroup_skb/egress"},
  };
  struct {
    bpf_program* prog;
    const char* tp;
  } const tps[] = {
      {skel_->progs.tw_process_exec, "sched_process_exec"},
      {skel_->progs.tw_process_exit, "sched_process_exit"},
  };
  for (auto& t : tps) {
    bpf_link* l = bpf_program__attach_raw_tracepoint(t.prog, t.tp);
    if (!l) {
      int err = errno;
      close(cg);
      fail(std::string("cannot attach the identity program to the raw tracepoint ") + t.tp, err);
    }
    links_.push_back(l);
  }
  for (auto& p : cgroup_progs) {
    // A link: BPF_F_ALLOW_MULTI semantics, next to other agents' programs.
    bpf_link* l = bpf_program__attach_cgroup(p.prog, cg);
    if (!l) {
      int err = errno;
      close(cg);
      fail(std::string("cannot attach the identity programs (") + p.what + ") to the cgroup v2 root " +
               cgroup2_mount_,
           err,
           "another program is attached there without BPF_F_ALLOW_MULTI (exclusive): have its owner attach it "
           "with BPF_F_ALLOW_MULTI or as a bpf_link");
    }
    links_.push_back(l);
  }
  close(cg);  // the links hold the cgroup
}

IdentityCollector::~IdentityCollector() { release(); }

void IdentityCollector::release() {
  // Destroying a link detaches exactly that program.
  for (auto it = links_.rbegin(); it != links_.rend(); ++it) bpf_link__destroy(*it);
  links_.clear();
  ring_.reset();
  if (skel_) identity_bpf::destroy(skel_);
  skel_ = nullptr;
}

int IdentityCollector::ring_fd() const { return bpf_map__fd(skel_->maps.tw_ident_ring); }

size_t IdentityCollector::drain(const std::function<void(const tw_sock_event&)>& on_sock,
                                const std::function<void(const tw_exec_event&)>& on_exec, size_t max) {
  const int64_t offset = realtime_offset_ns();
  auto to_realtime = [offset](uint64_t mono) { return static_cast<uint64_t>(static_cast<int64_t>(mono) + offset); };
  size_t handed = 0, since_release = 0;
  while (handed < max) {
    auto rec = ring_->peek();
    if (rec.empty()) break;
    // Copy out (the record is read in place), then give the space back.
    if (rec.size() == sizeof(tw_sock_event)) {
      tw_sock_event e;
      std::memcpy(&e, rec.data(), sizeof e);
      ring_->advance();
      if (valid_sock(e)) {
        e.comm[sizeof e.comm - 1] = '\0';
        e.ts_ns = to_realtime(e.ts_ns);
        if (on_sock) on_sock(e);
        handed++;
      } else {
        invalid_records_++;
      }
    } else if (rec.size() == sizeof(tw_exec_event)) {
      tw_exec_event e;
      std::memcpy(&e, rec.data(), sizeof e);
      ring_->advance();
      if (valid_exec(e)) {
        e.comm[sizeof e.comm - 1] = '\0';
        e.filename[e.filename_len] = '\0';
        e.ts_ns = to_realtime(e.ts_ns);
        if (on_exec) on_exec(e);
        handed++;
      } else {
        invalid_records_++;
      }
    } else {
      ring_->advance();
      invalid_records_++;
    }
    // Give space back now and then, so that a long drain does not keep
    // the producers out of a full ring.
    if (++since_release >= 256) {
      ring_->release();
      since_release = 0;
    }
  }
  ring_->release();
  return handed;
}

IdentityCounters IdentityCollector::counters() const {
  IdentityCounters out;
  out.invalid_records = invalid_records_;
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) return out;
  std::vector<tw_ident_counters> per_cpu(static_cast<size_t>(ncpu));
  uint32_t key = 0;
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.tw_ident_counters), &key, per_cpu.data()) != 0) return out;
  for (auto& c : per_cpu) {
    for (size_t i = 0; i < out.emitted.size(); i++) out.emitted[i] += c.emitted[i];
    for (size_t i = 0; i < out.drops.size(); i++) out.drops[i] += c.drop[i];
  }
  return out;
}

std::vector<ProcessInfo> IdentityCollector::scan_processes() const { return scan_proc("/proc", cgroup2_mount_); }

std::optional<std::string> IdentityCollector::cgroup_path(uint64_t cgroup_id) { return cgroups_->path(cgroup_id); }

std::vector<uint32_t> IdentityCollector::prog_ids() const {
  std::vector<uint32_t> ids;
  bpf_program* p;
  bpf_object__for_each_program(p, skel_->obj) {
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(bpf_program__fd(p), &info, &len) == 0) ids.push_back(info.id);
  }
  return ids;
}

}  // namespace tapwire::sensor
