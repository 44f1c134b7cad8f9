// Runs tapwire-dissector as a child of the sensor while L7 dissection is
// enabled: starts it on enable, stops it on disable, restarts it with
// backoff if it dies, and disables dissection by itself after `stop_after`
// without activity (an enable, a connected `tapwire tail`, a query). Raw
// capture is never affected. Non-blocking: the sensor's loop calls tick()
// and on_child_exit() (SIGCHLD).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tapwire::sensor {

// The unprivileged account the dissector runs as when the sensor is root.
struct DissectorAccount {
  std::string user, group;
  uid_t uid = 0;
  gid_t gid = 0;
};

// `user` and `group` by name; "" picks the default: the `tapwire` user and
// group (configs/systemd/tapwire.sysusers) where they exist, else nobody and
// nogroup. Throws std::runtime_error (one line) for an unknown name or root.
DissectorAccount resolve_dissector_account(const std::string& user, const std::string& group);

struct SupervisorOptions {
  std::string dissector_path;  // the tapwire-dissector binary
  // Passed as --user/--group: the dissector switches to it before it reads
  // anything (userspace/dissector/main/confine.hpp). Unset: it keeps the
  // sensor's uid (a sensor that is not root).
  std::optional<DissectorAccount> account;
  std::string data_dir;
  uint64_t stop_after_ns = 5ull * 60 * 1000000000ull;  // 0: never stops by itself
  std::vector<std::string> extra_args;  // appended to the dissector's command line
};

class DissectorSupervisor {
 public:
  explicit DissectorSupervisor(SupervisorOptions opts);
  ~DissectorSupervisor();  // stops the child (waits up to 5 s, then SIGKILL)

  void enable(uint64_t now_ns, const char* why);
  void disable(const char* why);
  void activity(uint64_t now_ns);
  void on_child_exit(uint64_t now_ns);  // reap; schedule a restart if still enabled
  void tick(uint64_t now_ns);  // restarts due, idle stop, SIGKILL of a child that ignores SIGTERM
  void set_stop_after(uint64_t ns) { opts_.stop_after_ns = ns; }
  void set_extra_args(std::vector<std::string> args) { opts_.extra_args = std::move(args); }  // from the next start

  bool enabled() const { return enabled_; }
  pid_t pid() const { return pid_; }
  nlohmann::json status(uint64_t now_ns) const;

 private:
  SupervisorOptions opts_;
  bool enabled_ = false;
  pid_t pid_ = -1;
  bool stopping_ = false;
  uint64_t stop_deadline_ = 0;
  uint64_t started_at_ = 0, last_activity_ = 0, restart_at_ = 0;
  uint64_t backoff_ns_ = 1'000'000'000ull;
  uint64_t restarts_ = 0, starts_ = 0;
  std::string last_exit_, last_change_;
  void start(uint64_t now_ns);
  void stop();
};

}  // namespace tapwire::sensor
