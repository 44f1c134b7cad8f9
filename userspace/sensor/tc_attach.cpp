#include "tc_attach.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/netlink.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <vector>

#include <nlohmann/json.hpp>

namespace tapwire::sensor {
namespace {

// tcx (Linux 6.6) postdates the system's UAPI headers: the values are ABI.
constexpr auto kTcxIngress = static_cast<bpf_attach_type>(46);  // BPF_TCX_INGRESS
constexpr auto kTcxEgress = static_cast<bpf_attach_type>(47);  // BPF_TCX_EGRESS
constexpr uint32_t kBpfFBefore = 1u << 3;  // BPF_F_BEFORE: with no relative program, the first place

constexpr bpf_tc_attach_point kPoints[2] = {BPF_TC_INGRESS, BPF_TC_EGRESS};
constexpr const char* kHookNames[2] = {"ingress", "egress"};
constexpr uint32_t kParents[2] = {TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS), TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)};

std::string errstr(int err) { return std::strerror(err < 0 ? -err : err); }

bpf_tc_hook make_hook(uint32_t ifindex, bpf_tc_attach_point point) {
  bpf_tc_hook h{};
  h.sz = sizeof(h);
  h.ifindex = static_cast<int>(ifindex);
  h.attach_point = point;
  return h;
}

bpf_tc_opts tc_opts(uint32_t priority, int prog_fd = 0) {
  bpf_tc_opts o{};
  o.sz = sizeof(o);
  o.handle = kTcHandle;
  o.priority = priority;
  o.prog_fd = prog_fd;
  return o;
}

uint32_t prog_id_of_fd(int fd) {
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  return bpf_obj_get_info_by_fd(fd, &info, &len) == 0 ? info.id : 0;
}

std::string prog_name(uint32_t prog_id) {
  int fd = bpf_prog_get_fd_by_id(prog_id);
  if (fd < 0) return {};
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  std::string name;
  if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) name = info.name;
  close(fd);
  return name;
}

bool is_capture_prog_name(const std::string& n) { return n == "tw_ingress" || n == "tw_egress"; }

// Processes of this PID namespace holding a file descriptor on the program
// (the program itself, or a link to it): a live sensor's program has one, a
// program only a dead run's TC filter keeps alive has none.
std::vector<int> prog_holders(uint32_t prog_id) {
  std::vector<int> pids;
  DIR* proc = opendir("/proc");
  if (!proc) return pids;
  const int self = getpid();
  while (dirent* p = readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(p->d_name, &end, 10);
    if (*end != '\0' || pid <= 0 || pid == self) continue;
    const std::string base = std::string("/proc/") + p->d_name;
    DIR* fds = opendir((base + "/fd").c_str());
    if (!fds) continue;
    bool holds = false;
    while (dirent* f = readdir(fds)) {
      if (f->d_name[0] == '.') continue;
      char target[64] = {};
      ssize_t n = readlink((base + "/fd/" + f->d_name).c_str(), target, sizeof target - 1);
      if (n <= 0 || (std::strcmp(target, "anon_inode:bpf-prog") != 0 && std::strcmp(target, "anon_inode:bpf_link") != 0))
        continue;
      std::ifstream info(base + "/fdinfo/" + f->d_name);
      std::string line;
      while (std::getline(info, line))
        if (line.rfind("prog_id:", 0) == 0 && std::strtoul(line.c_str() + 8, nullptr, 10) == prog_id) holds = true;
      if (holds) break;
    }
    closedir(fds);
    if (holds) pids.push_back(static_cast<int>(pid));
  }
  closedir(proc);
  return pids;
}

// ---------------------------------------------------------------- netlink --

struct TcFilter {
  uint32_t prio = 0;
  uint16_t protocol = 0;  // network order
  uint32_t handle = 0;  // 0: the line of a priority group itself, not a filter
  uint32_t chain = 0;
  std::string kind;
  uint32_t prog_id = 0;  // bpf filters
};

// The filters on one clsact hook (every chain), as `tc filter show dev X
// ingress` lists them. nullopt if they cannot be listed (no clsact qdisc,
// the interface is gone).
std::optional<std::vector<TcFilter>> dump_filters(uint32_t ifindex, uint32_t parent) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) return std::nullopt;
  timeval tv{5, 0};  // bounded: the kernel answers at once, or never
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct {
    nlmsghdr n;
    tcmsg t;
  } req{};
  req.n.nlmsg_len = NLMSG_LENGTH(sizeof(tcmsg));
  req.n.nlmsg_type = RTM_GETTFILTER;
  req.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.n.nlmsg_seq = 1;
  req.t.tcm_family = AF_UNSPEC;
  req.t.tcm_ifindex = static_cast<int>(ifindex);
  req.t.tcm_parent = parent;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (sendto(fd, &req, req.n.nlmsg_len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
    close(fd);
    return std::nullopt;
  }
  std::vector<TcFilter> out;
  alignas(nlmsghdr) static thread_local char buf[1 << 16];
  for (int round = 0; round < 4096; round++) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, static_cast<unsigned>(n)); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) {
        close(fd);
        return out;
      }
      if (h->nlmsg_type == NLMSG_ERROR) {
        auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(h));
        close(fd);
        if (e->error == 0) return out;
        return std::nullopt;
      }
      if (h->nlmsg_type != RTM_NEWTFILTER) continue;
      auto* t = static_cast<tcmsg*>(NLMSG_DATA(h));
      TcFilter f;
      f.prio = TC_H_MAJ(t->tcm_info) >> 16;
      f.protocol = static_cast<uint16_t>(TC_H_MIN(t->tcm_info));
      f.handle = t->tcm_handle;
      int len = static_cast<int>(h->nlmsg_len) - static_cast<int>(NLMSG_LENGTH(sizeof(tcmsg)));
      for (auto* a = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(t) + NLMSG_ALIGN(sizeof(tcmsg)));
           RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        const int type = a->rta_type & NLA_TYPE_MASK;
        if (type == TCA_KIND)
          f.kind.assign(static_cast<const char*>(RTA_DATA(a)), strnlen(static_cast<const char*>(RTA_DATA(a)), RTA_PAYLOAD(a)));
        else if (type == TCA_CHAIN && RTA_PAYLOAD(a) >= 4)
          std::memcpy(&f.chain, RTA_DATA(a), 4);
        else if (type == TCA_OPTIONS) {
          int olen = static_cast<int>(RTA_PAYLOAD(a));
          for (auto* o = static_cast<rtattr*>(RTA_DATA(a)); RTA_OK(o, olen); o = RTA_NEXT(o, olen))
            if ((o->rta_type & NLA_TYPE_MASK) == TCA_BPF_ID && RTA_PAYLOAD(o) >= 4) std::memcpy(&f.prog_id, RTA_DATA(o), 4);
        }
      }
      out.push_back(std::move(f));
    }
  }
  close(fd);
  return std::nullopt;  // no end of dump: cannot tell
}

// A filter a tapwire sensor attached: its handle, one of its priorities,
// protocol all, and a program named like the capture programs.
bool is_tapwire_filter(const TcFilter& f) {
  return f.kind == "bpf" && f.handle == kTcHandle && (f.prio == kTcPriority || f.prio == kTcFallbackPriority) &&
         f.protocol == htons(ETH_P_ALL) && f.prog_id && is_capture_prog_name(prog_name(f.prog_id));
}

// Removes a clsact qdisc if no filter of anyone is left on either hook.
// Returns true if it was removed.
bool remove_clsact_if_unused(uint32_t ifindex) {
  for (uint32_t parent : kParents) {
    auto f = dump_filters(ifindex, parent);
    if (!f || !f->empty()) return false;  // in use, or cannot tell: leave it
  }
  bpf_tc_hook hook = make_hook(ifindex, static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS));
  return bpf_tc_hook_destroy(&hook) == 0;
}

// ------------------------------------------------------------- state file --

// Writes the file in one step: a new file (O_CREAT|O_EXCL|O_NOFOLLOW, 0600)
// renamed over the old one. rename() replaces a link at the path, never what
// it points to. Returns an errno, 0 on success.
int write_file_atomically(const std::string& path, const std::string& content) {
  for (int attempt = 0; attempt < 16; attempt++) {
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, 0) != static_cast<ssize_t>(sizeof r)) r = static_cast<uint64_t>(getpid()) * 7919 + attempt;
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, ".tmp.%016llx", static_cast<unsigned long long>(r));
    const std::string tmp = path + suffix;
    int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      if (errno == EEXIST) continue;
      return errno;
    }
    int err = fchmod(fd, 0600) == 0 ? 0 : errno;
    size_t done = 0;
    while (!err && done < content.size()) {
      ssize_t n = write(fd, content.data() + done, content.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) err = n < 0 ? errno : EIO;
      else done += static_cast<size_t>(n);
    }
    if (close(fd) != 0 && !err) err = errno;
    if (!err && rename(tmp.c_str(), path.c_str()) != 0) err = errno;
    if (err) unlink(tmp.c_str());
    return err;
  }
  return EEXIST;
}

struct StateEntry {
  std::string name;
  bool created_qdisc = false;
};

// The interfaces of a previous run's state file, if the file can be trusted:
// a regular file (not a link), owned by this user, writable by no one else.
// Anything else is ignored with a warning: it could have been planted to
// make the sensor remove another agent's qdisc.
std::map<uint32_t, StateEntry> read_state(const std::string& path) {
  std::map<uint32_t, StateEntry> out;
  int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno != ENOENT)
      std::fprintf(stderr, "tapwire-sensor: ignoring %s: %s\n", path.c_str(),
                   errno == ELOOP ? "it is a symbolic link" : std::strerror(errno));
    return out;
  }
  struct stat st{};
  std::string why;
  if (fstat(fd, &st) != 0)
    why = std::strerror(errno);
  else if (!S_ISREG(st.st_mode))
    why = "not a regular file";
  else if (st.st_uid != geteuid())
    why = "owned by uid " + std::to_string(st.st_uid) + ", not " + std::to_string(geteuid());
  else if (st.st_mode & (S_IWGRP | S_IWOTH))
    why = "writable by group or others";
  else if (st.st_size > (1 << 20))
    why = "larger than 1 MiB";
  if (!why.empty()) {
    close(fd);
    std::fprintf(stderr, "tapwire-sensor: ignoring %s: %s\n", path.c_str(), why.c_str());
    return out;
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  ssize_t n = read(fd, text.data(), text.size());
  close(fd);
  text.resize(n > 0 ? static_cast<size_t>(n) : 0);
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object() || !j.contains("interfaces") || !j["interfaces"].is_array()) return out;
  for (auto& e : j["interfaces"]) {
    if (!e.is_object() || !e.contains("ifindex") || !e["ifindex"].is_number_unsigned()) continue;
    StateEntry s;
    s.name = e.value("name", std::string());
    s.created_qdisc = e.value("created_qdisc", false);
    out[e["ifindex"].get<uint32_t>()] = s;
  }
  return out;
}

}  // namespace

std::optional<AttachMode> parse_attach_mode(const std::string& text) {
  if (text == "auto") return AttachMode::kAuto;
  if (text == "tcx") return AttachMode::kTcx;
  if (text == "tc") return AttachMode::kTc;
  return std::nullopt;
}

const char* attach_mode_name(AttachMode m) {
  return m == AttachMode::kTcx ? "tcx" : m == AttachMode::kTc ? "tc" : "auto";
}

bool kernel_has_tcx() {
  unsigned lo = if_nametoindex("lo");
  uint32_t attach_flags = 0, count = 0;
  return bpf_prog_query(static_cast<int>(lo ? lo : 1), kTcxIngress, 0, &attach_flags, nullptr, &count) == 0;
}

TcAttacher::TcAttacher(int ingress_prog_fd, int egress_prog_fd, std::string state_file, AttachMode mode)
    : prog_fds_{ingress_prog_fd, egress_prog_fd}, state_file_(std::move(state_file)), mode_(mode) {
  const bool tcx = kernel_has_tcx();
  if (mode_ == AttachMode::kTcx && !tcx)
    throw std::runtime_error("this kernel has no tcx links (Linux 6.6 or later): use --attach tc or auto");
  if (mode_ == AttachMode::kAuto) mode_ = tcx ? AttachMode::kTcx : AttachMode::kTc;
  for (int h = 0; h < 2; h++) prog_ids_[h] = prog_id_of_fd(prog_fds_[h]);
}

TcAttacher::~TcAttacher() { detach_all(); }

int TcAttacher::cleanup_leftovers(const std::string& state_file) {
  const auto state = read_state(state_file);
  int removed = 0;
  if (struct if_nameindex* ifs = if_nameindex()) {
    for (auto* i = ifs; i->if_index != 0; i++) {
      int here = 0;
      for (int h = 0; h < 2; h++) {
        auto filters = dump_filters(i->if_index, kParents[h]);
        if (!filters) continue;
        for (auto& f : *filters) {
          if (!is_tapwire_filter(f) || !prog_holders(f.prog_id).empty()) continue;  // not ours, or a live sensor's
          bpf_tc_hook hook = make_hook(i->if_index, kPoints[h]);
          bpf_tc_opts o = tc_opts(f.prio);
          if (bpf_tc_detach(&hook, &o) == 0) here++;
        }
      }
      removed += here;
      auto s = state.find(i->if_index);
      if (s != state.end() && s->second.created_qdisc && s->second.name == i->if_name) remove_clsact_if_unused(i->if_index);
    }
    if_freenameindex(ifs);
  }
  unlink(state_file.c_str());  // ours to replace; unlink removes a link, not its target
  return removed;
}

void TcAttacher::attach(uint32_t ifindex, const std::string& name) {
  if (attached_.count(ifindex)) return;
  Attachment& a = attached_[ifindex];
  a.name = name;
  try {
    if (mode_ == AttachMode::kTcx)
      attach_tcx(ifindex, a);
    else
      attach_tc(ifindex, a);
  } catch (...) {
    detach(ifindex);
    throw;
  }
  save_state();
}

void TcAttacher::attach_tcx(uint32_t ifindex, Attachment& a) {
  for (int h = 0; h < 2; h++) {
    // First in the hook's list: the capture sees packets before programs
    // that end processing; the others keep their order among themselves.
    bpf_link_create_opts o{};
    o.sz = sizeof(o);
    o.flags = kBpfFBefore;
    int fd = bpf_link_create(prog_fds_[h], static_cast<int>(ifindex), h ? kTcxEgress : kTcxIngress, &o);
    if (fd < 0)
      throw std::runtime_error("cannot attach to " + a.name + " " + kHookNames[h] + " (tcx link): " + errstr(fd));
    a.hooks[h].link_fd = fd;
  }
}

void TcAttacher::attach_tc(uint32_t ifindex, Attachment& a) {
  bpf_tc_hook qdisc = make_hook(ifindex, static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS));
  int rc = bpf_tc_hook_create(&qdisc);
  if (rc != 0 && rc != -EEXIST) throw std::runtime_error("cannot add a clsact qdisc to " + a.name + ": " + errstr(rc));
  // Recorded before the filters, so that a crash right after leaves a state
  // file that lets the next run remove the qdisc (if nothing else uses it).
  a.created_qdisc = rc == 0;
  save_state();
  for (int h = 0; h < 2; h++) {
    bpf_tc_hook hook = make_hook(ifindex, kPoints[h]);
    int err = -EINVAL;
    uint32_t used = 0;
    for (uint32_t prio : {kTcPriority, kTcFallbackPriority}) {
      bpf_tc_opts o = tc_opts(prio, prog_fds_[h]);
      err = bpf_tc_attach(&hook, &o);
      if (err == -EEXIST) {
        // Our handle and priority are taken: by a dead run's filter that the
        // start-up clean-up did not see (replace it), by a live sensor (stop),
        // or by another agent's filter (leave it, try the other priority).
        bpf_tc_opts q = tc_opts(prio);
        if (bpf_tc_query(&hook, &q) == 0 && is_capture_prog_name(prog_name(q.prog_id))) {
          auto holders = prog_holders(q.prog_id);
          if (!holders.empty())
            throw std::runtime_error("another tapwire-sensor (pid " + std::to_string(holders[0]) + ") captures on " +
                                     a.name + " " + kHookNames[h] + ": stop it first");
          o = tc_opts(prio, prog_fds_[h]);
          o.flags = BPF_TC_F_REPLACE;
          err = bpf_tc_attach(&hook, &o);
        }
      }
      // EINVAL at priority 1: another agent's filters of another kind or
      // protocol hold it; the fallback priority is tapwire's own.
      if (err == 0 || !(err == -EINVAL || err == -EEXIST)) {
        used = prio;
        break;
      }
    }
    if (err != 0)
      throw std::runtime_error("cannot attach to " + a.name + " " + kHookNames[h] + " (TC filter): " + errstr(err));
    a.hooks[h].priority = used;
    save_state();
  }
}

void TcAttacher::detach(uint32_t ifindex) {
  auto it = attached_.find(ifindex);
  if (it == attached_.end()) return;
  Attachment& a = it->second;
  for (int h = 0; h < 2; h++) {
    Hook& k = a.hooks[h];
    if (k.link_fd >= 0) {
      close(k.link_fd);  // the link's last reference: the kernel detaches it
      k.link_fd = -1;
    }
    if (k.priority) {
      // Only the filter that runs our program: whatever holds the handle now.
      bpf_tc_hook hook = make_hook(ifindex, kPoints[h]);
      bpf_tc_opts q = tc_opts(k.priority);
      if (bpf_tc_query(&hook, &q) == 0 && q.prog_id == prog_ids_[h]) {
        bpf_tc_opts d = tc_opts(k.priority);
        bpf_tc_detach(&hook, &d);
      }
      k.priority = 0;
    }
  }
  if (a.created_qdisc) remove_clsact_if_unused(ifindex);
  attached_.erase(it);
  save_state();
}

void TcAttacher::detach_all() {
  std::vector<uint32_t> all;
  for (auto& [idx, a] : attached_) all.push_back(idx);
  for (auto idx : all) detach(idx);
  unlink(state_file_.c_str());
}

void TcAttacher::save_state() {
  nlohmann::json j;
  j["pid"] = getpid();
  j["mode"] = attach_mode_name(mode_);
  j["interfaces"] = nlohmann::json::array();
  for (auto& [idx, a] : attached_) {
    nlohmann::json hooks = nlohmann::json::array();
    for (int h = 0; h < 2; h++)
      if (a.hooks[h].priority)
        hooks.push_back({{"hook", kHookNames[h]}, {"handle", kTcHandle}, {"priority", a.hooks[h].priority},
                         {"prog_id", prog_ids_[h]}});
    j["interfaces"].push_back({{"ifindex", idx}, {"name", a.name}, {"created_qdisc", a.created_qdisc}, {"filters", hooks}});
  }
  if (int err = write_file_atomically(state_file_, j.dump() + "\n"); err && !state_warned_) {
    state_warned_ = true;
    std::fprintf(stderr, "tapwire-sensor: cannot write %s: %s (a crash would leave TC filters for the next start to find)\n",
                 state_file_.c_str(), std::strerror(err));
  }
}

}  // namespace tapwire::sensor
