// Attaches the capture programs to the TC ingress and egress hooks of
// interfaces, next to whatever other agents attached there, and detaches
// only what is tapwire's.
//
// Two ways (AttachMode):
//  - tcx links (Linux 6.6+): one BPF link per hook, put first in the hook's
//    program list. The links belong to the sensor's file descriptors: when
//    the process ends, however it ends (kill -9 included), the kernel
//    removes them. Other programs keep their places and their order.
//  - TC filters (older kernels, or --attach tc): a cls_bpf filter with
//    tapwire's handle on a clsact qdisc. Filters outlive their process, so a
//    restart removes those a dead run left: filters carrying tapwire's handle
//    and priority whose program is named tw_ingress/tw_egress and held by no
//    live process. Other filters are never touched. A clsact qdisc is removed
//    only if tapwire created it (the state file says so) and no filter of
//    anyone is left on it.
//
// The state file (DATA_DIR/tc-state.json) records what was attached and
// which clsact qdiscs tapwire created. It is written with O_CREAT|O_EXCL|
// O_NOFOLLOW, mode 0600, into a temporary file renamed over the old one, and
// trusted on reading only if it is a regular file (not a link) owned by this
// user and writable by no one else.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace tapwire::sensor {

// --attach tc|tcx|auto. auto: tcx links where the kernel has them, TC
// filters elsewhere.
enum class AttachMode { kAuto, kTcx, kTc };
std::optional<AttachMode> parse_attach_mode(const std::string& text);
const char* attach_mode_name(AttachMode m);

// Our TC filters: this handle, at this priority (the first one, so that the
// capture sees packets before filters that end classification), or at the
// fallback priority when priority 1 is held by another agent's filters of
// another kind or protocol (the kernel refuses to mix them in one priority).
inline constexpr uint32_t kTcHandle = 0x7477;
inline constexpr uint32_t kTcPriority = 1;
inline constexpr uint32_t kTcFallbackPriority = 0x7477;

// Whether this kernel has tcx links (BPF_TCX_INGRESS/EGRESS, Linux 6.6+):
// asks for the tcx programs of the loopback interface, which changes nothing.
bool kernel_has_tcx();

class TcAttacher {
 public:
  // mode kAuto resolves to kTcx or kTc here; kTcx throws (one line) on a
  // kernel without tcx links.
  TcAttacher(int ingress_prog_fd, int egress_prog_fd, std::string state_file, AttachMode mode = AttachMode::kAuto);
  ~TcAttacher();  // detaches everything
  TcAttacher(const TcAttacher&) = delete;
  TcAttacher& operator=(const TcAttacher&) = delete;

  // kTcx or kTc.
  AttachMode mode() const { return mode_; }

  // Removes the TC filters a previous run that died left on the interfaces
  // of this network namespace, and the clsact qdiscs it created when nothing
  // else uses them. Returns the number of filters removed. Warnings (an
  // untrusted state file) go to stderr.
  static int cleanup_leftovers(const std::string& state_file);

  // Throws std::runtime_error with a one-line message; then nothing of this
  // attempt stays attached.
  void attach(uint32_t ifindex, const std::string& name);
  // Detaches from one interface; quiet if the interface is already gone.
  void detach(uint32_t ifindex);
  void detach_all();
  bool attached(uint32_t ifindex) const { return attached_.count(ifindex) != 0; }
  size_t count() const { return attached_.size(); }

 private:
  struct Hook {
    int link_fd = -1;  // tcx
    uint32_t priority = 0;  // TC filter; 0: not attached
  };
  struct Attachment {
    std::string name;
    bool created_qdisc = false;  // TC: we created the clsact qdisc
    Hook hooks[2];  // ingress, egress
  };
  int prog_fds_[2];
  uint32_t prog_ids_[2] = {0, 0};
  std::string state_file_;
  AttachMode mode_;
  std::map<uint32_t, Attachment> attached_;
  bool state_warned_ = false;
  void attach_tcx(uint32_t ifindex, Attachment& a);
  void attach_tc(uint32_t ifindex, Attachment& a);
  void save_state();
};

}  // namespace tapwire::sensor
