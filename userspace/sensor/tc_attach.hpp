// Attaches the capture programs to interfaces with TC clsact (ingress and
// egress), remembers which clsact qdiscs it created (in a state file in the
// data dir, so that a restart after a crash can remove them), and detaches
// cleanly.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace tapwire::sensor {

// Our filters are recognised by this handle and priority (and the program
// names tw_ingress / tw_egress).
inline constexpr uint32_t kTcHandle = 0x7477;
inline constexpr uint32_t kTcPriority = 1;

class TcAttacher {
 public:
  TcAttacher(int ingress_prog_fd, int egress_prog_fd, std::string state_file);
  ~TcAttacher();  // detaches everything
  TcAttacher(const TcAttacher&) = delete;
  TcAttacher& operator=(const TcAttacher&) = delete;

  // Removes what a previous run that died left behind: its filters on every
  // interface of this network namespace, and the clsact qdiscs its state file
  // says it created. Returns the number of filters removed.
  static int cleanup_leftovers(const std::string& state_file);

  // Throws std::runtime_error with a one-line message.
  void attach(uint32_t ifindex, const std::string& name);
  // Detaches from one interface; quiet if the interface is already gone.
  void detach(uint32_t ifindex);
  void detach_all();
  bool attached(uint32_t ifindex) const { return attached_.count(ifindex) != 0; }
  size_t count() const { return attached_.size(); }

 private:
  struct Attachment {
    std::string name;
    bool created_qdisc;
  };
  int ingress_fd_, egress_fd_;
  std::string state_file_;
  std::map<uint32_t, Attachment> attached_;
  void save_state() const;
};

}  // namespace tapwire::sensor
