#include "dissector_supervisor.hpp"

#include "child_process.hpp"

#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "clock.hpp"

namespace tapwire::sensor {
namespace {

constexpr uint64_t kSecond = 1'000'000'000ull;
constexpr uint64_t kMaxBackoff = 30 * kSecond;
constexpr uint64_t kStopGrace = 5 * kSecond;

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + strsignal(WTERMSIG(status));
  return "ended";
}

}  // namespace

DissectorAccount resolve_dissector_account(const std::string& user, const std::string& group) {
  std::vector<char> buf(1 << 16);
  DissectorAccount a;
  struct passwd pw{}, *pwr = nullptr;
  for (const char* name : {"tapwire", "nobody"}) {
    const std::string want = user.empty() ? name : user;
    if (getpwnam_r(want.c_str(), &pw, buf.data(), buf.size(), &pwr) == 0 && pwr) {
      a.user = want;
      a.uid = pw.pw_uid;
      break;
    }
    if (!user.empty()) throw std::runtime_error("--dissector-user " + user + ": no such user");
  }
  if (a.user.empty()) throw std::runtime_error("neither user tapwire nor nobody exists: give --dissector-user");
  struct group gr{}, *grr = nullptr;
  for (const char* name : {"tapwire", "nogroup"}) {
    const std::string want = group.empty() ? name : group;
    if (getgrnam_r(want.c_str(), &gr, buf.data(), buf.size(), &grr) == 0 && grr) {
      a.group = want;
      a.gid = gr.gr_gid;
      break;
    }
    if (!group.empty()) throw std::runtime_error("--dissector-group " + group + ": no such group");
  }
  if (a.group.empty()) throw std::runtime_error("neither group tapwire nor nogroup exists: give --dissector-group");
  if (a.uid == 0 || a.gid == 0)
    throw std::runtime_error("the dissector must not run as root: give an unprivileged --dissector-user and --dissector-group");
  return a;
}

DissectorSupervisor::DissectorSupervisor(SupervisorOptions opts) : opts_(std::move(opts)) {}

DissectorSupervisor::~DissectorSupervisor() {
  enabled_ = false;
  stop_child(pid_, kStopGrace, stopping_);
  pid_ = -1;
}

void DissectorSupervisor::start(uint64_t now_ns) {
  std::vector<std::string> argv = {opts_.dissector_path, "--data-dir", opts_.data_dir, "-q"};
  if (opts_.account) argv.insert(argv.end(), {"--user", opts_.account->user, "--group", opts_.account->group});
  argv.insert(argv.end(), opts_.extra_args.begin(), opts_.extra_args.end());
  pid_t pid = spawn_child(argv);
  if (pid < 0) {
    last_exit_ = std::string("cannot start: ") + std::strerror(errno);
    restart_at_ = now_ns + backoff_ns_;
    return;
  }
  pid_ = pid;
  stopping_ = false;
  started_at_ = now_ns;
  starts_++;
  std::fprintf(stderr, "tapwire-sensor: dissector started (pid %d)\n", pid);
}

void DissectorSupervisor::stop() {
  if (pid_ <= 0 || stopping_) return;
  kill(pid_, SIGTERM);  // it checkpoints and exits; on_child_exit reaps it
  stopping_ = true;
  stop_deadline_ = mono_ns() + kStopGrace;
}

void DissectorSupervisor::enable(uint64_t now_ns, const char* why) {
  last_activity_ = now_ns;
  if (enabled_) return;
  enabled_ = true;
  last_change_ = std::string("enabled by ") + why;
  backoff_ns_ = kSecond;
  std::fprintf(stderr, "tapwire-sensor: dissection %s\n", last_change_.c_str());
  if (pid_ <= 0) start(now_ns);
}

void DissectorSupervisor::disable(const char* why) {
  if (!enabled_) return;
  enabled_ = false;
  last_change_ = std::string("disabled by ") + why;
  std::fprintf(stderr, "tapwire-sensor: dissection %s\n", last_change_.c_str());
  stop();
}

void DissectorSupervisor::activity(uint64_t now_ns) { last_activity_ = now_ns; }

void DissectorSupervisor::on_child_exit(uint64_t now_ns) {
  if (pid_ <= 0) return;
  int status;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r != pid_) return;
  pid_ = -1;
  last_exit_ = describe_exit(status);
  if (stopping_) {
    stopping_ = false;
    if (enabled_) start(now_ns);  // re-enabled while it was stopping
    return;
  }
  if (!enabled_) return;
  // It died on its own: restart, backing off if it keeps dying quickly.
  if (now_ns - started_at_ > 60 * kSecond) backoff_ns_ = kSecond;
  restart_at_ = now_ns + backoff_ns_;
  backoff_ns_ = std::min(backoff_ns_ * 2, kMaxBackoff);
  std::fprintf(stderr, "tapwire-sensor: dissector %s; restarting in %.0f s\n", last_exit_.c_str(),
               static_cast<double>(restart_at_ - now_ns) / 1e9);
}

void DissectorSupervisor::tick(uint64_t now_ns) {
  if (stopping_ && pid_ > 0 && mono_ns() > stop_deadline_) kill(pid_, SIGKILL);
  if (enabled_ && pid_ <= 0 && !stopping_ && now_ns >= restart_at_) {
    if (starts_ > 0) restarts_++;
    start(now_ns);
  }
  if (enabled_ && opts_.stop_after_ns && now_ns - last_activity_ > opts_.stop_after_ns)
    disable("idle timeout (no activity for tap.capture.dissection.stopAfter)");
}

nlohmann::json DissectorSupervisor::status(uint64_t now_ns) const {
  return {{"enabled", enabled_},
          {"running", pid_ > 0 && !stopping_},
          {"pid", pid_ > 0 ? pid_ : 0},
          {"restarts", restarts_},
          {"stop_after_s", static_cast<double>(opts_.stop_after_ns) / 1e9},
          {"idle_s", enabled_ ? static_cast<double>(now_ns - last_activity_) / 1e9 : 0.0},
          {"last_exit", last_exit_},
          {"last_change", last_change_}};
}

}  // namespace tapwire::sensor
