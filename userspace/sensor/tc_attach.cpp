#include "tc_attach.hpp"

#include <net/if.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <vector>

#include <nlohmann/json.hpp>

namespace tapwire::sensor {
namespace {

bpf_tc_hook make_hook(uint32_t ifindex, bpf_tc_attach_point point) {
  bpf_tc_hook h{};
  h.sz = sizeof(h);
  h.ifindex = static_cast<int>(ifindex);
  h.attach_point = point;
  return h;
}

bpf_tc_opts our_opts(int prog_fd = 0) {
  bpf_tc_opts o{};
  o.sz = sizeof(o);
  o.handle = kTcHandle;
  o.priority = kTcPriority;
  o.prog_fd = prog_fd;
  return o;
}

bool is_our_prog(uint32_t prog_id) {
  int fd = bpf_prog_get_fd_by_id(prog_id);
  if (fd < 0) return false;
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  bool ours = false;
  if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0)
    ours = std::strcmp(info.name, "tw_ingress") == 0 || std::strcmp(info.name, "tw_egress") == 0;
  close(fd);
  return ours;
}

// Detaches our filter at one hook if one is there. Returns 1 if removed.
int detach_ours(uint32_t ifindex, bpf_tc_attach_point point) {
  bpf_tc_hook hook = make_hook(ifindex, point);
  bpf_tc_opts q = our_opts();
  if (bpf_tc_query(&hook, &q) != 0) return 0;
  if (!is_our_prog(q.prog_id)) return 0;
  bpf_tc_opts d = our_opts();
  return bpf_tc_detach(&hook, &d) == 0 ? 1 : 0;
}

void destroy_clsact(uint32_t ifindex) {
  bpf_tc_hook hook = make_hook(ifindex, static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS));
  bpf_tc_hook_destroy(&hook);
}

}  // namespace

TcAttacher::TcAttacher(int ingress_prog_fd, int egress_prog_fd, std::string state_file)
    : ingress_fd_(ingress_prog_fd), egress_fd_(egress_prog_fd), state_file_(std::move(state_file)) {}

TcAttacher::~TcAttacher() { detach_all(); }

int TcAttacher::cleanup_leftovers(const std::string& state_file) {
  int removed = 0;
  if (struct if_nameindex* ifs = if_nameindex()) {
    for (auto* i = ifs; i->if_index != 0; i++) {
      removed += detach_ours(i->if_index, BPF_TC_INGRESS);
      removed += detach_ours(i->if_index, BPF_TC_EGRESS);
    }
    if_freenameindex(ifs);
  }
  std::ifstream in(state_file);
  if (in) {
    auto j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_object() && j.contains("interfaces") && j["interfaces"].is_array()) {
      for (auto& e : j["interfaces"]) {
        if (!e.is_object() || !e.value("created_qdisc", false)) continue;
        // Only if the interface still is the one we knew (same index and name).
        uint32_t idx = e.value("ifindex", 0u);
        char name[IF_NAMESIZE] = {};
        if (idx && if_indextoname(idx, name) && e.value("name", std::string()) == name) destroy_clsact(idx);
      }
    }
  }
  std::remove(state_file.c_str());
  return removed;
}

void TcAttacher::attach(uint32_t ifindex, const std::string& name) {
  if (attached_.count(ifindex)) return;
  bpf_tc_hook hook = make_hook(ifindex, static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS));
  int rc = bpf_tc_hook_create(&hook);
  bool created = rc == 0;
  if (rc != 0 && rc != -EEXIST)
    throw std::runtime_error("cannot add a clsact qdisc to " + name + ": " + std::strerror(-rc));
  // Record the qdisc before attaching, so that a crash right after leaves a
  // state file that lets the next run remove it.
  attached_[ifindex] = Attachment{name, created};
  save_state();

  const struct {
    bpf_tc_attach_point point;
    int fd;
    const char* what;
  } hooks[] = {{BPF_TC_INGRESS, ingress_fd_, "ingress"}, {BPF_TC_EGRESS, egress_fd_, "egress"}};
  for (auto& h : hooks) {
    bpf_tc_hook hk = make_hook(ifindex, h.point);
    bpf_tc_opts o = our_opts(h.fd);
    int err = bpf_tc_attach(&hk, &o);
    if (err == -EEXIST) {  // ours from a run we could not clean up: replace it
      o = our_opts(h.fd);
      o.flags = BPF_TC_F_REPLACE;
      err = bpf_tc_attach(&hk, &o);
    }
    if (err != 0) {
      detach(ifindex);
      throw std::runtime_error(std::string("cannot attach to ") + name + " " + h.what + ": " + std::strerror(-err));
    }
  }
}

void TcAttacher::detach(uint32_t ifindex) {
  auto it = attached_.find(ifindex);
  if (it == attached_.end()) return;
  detach_ours(ifindex, BPF_TC_INGRESS);
  detach_ours(ifindex, BPF_TC_EGRESS);
  if (it->second.created_qdisc) destroy_clsact(ifindex);
  attached_.erase(it);
  save_state();
}

void TcAttacher::detach_all() {
  std::vector<uint32_t> all;
  for (auto& [idx, a] : attached_) all.push_back(idx);
  for (auto idx : all) detach(idx);
  std::remove(state_file_.c_str());
}

void TcAttacher::save_state() const {
  nlohmann::json j;
  j["pid"] = getpid();
  j["interfaces"] = nlohmann::json::array();
  for (auto& [idx, a] : attached_)
    j["interfaces"].push_back({{"ifindex", idx}, {"name", a.name}, {"created_qdisc", a.created_qdisc}});
  const std::string tmp = state_file_ + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump() << "\n";
  }
  std::rename(tmp.c_str(), state_file_.c_str());
}

}  // namespace tapwire::sensor
