#include "kube_watcher.hpp"

#include "child_process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace tapwire::sensor {
namespace {

constexpr uint64_t kSecond = 1'000'000'000ull;
constexpr uint64_t kMaxBackoff = 60 * kSecond;
constexpr size_t kMaxFrame = identity::kMaxWorkloadJson;
// Unparsed bytes held at most: one whole frame and a read's worth.
constexpr size_t kMaxBuffered = kMaxFrame + 4 + (1u << 16);

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by ") + strsignal(WTERMSIG(status));
  return "stopped";
}

}  // namespace

KubeWatcher::KubeWatcher(KubeWatcherOptions opts) : opts_(std::move(opts)) {}

KubeWatcher::~KubeWatcher() { stop(); }

void KubeWatcher::start(uint64_t now_ns) {
  want_running_ = true;
  if (pid_ > 0) return;
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) {
    restart_later(now_ns, std::string("cannot create a pipe: ") + std::strerror(errno));
    return;
  }
  // Objects on its stdout; its stderr stays the sensor's, for its log lines.
  std::vector<std::string> argv = {opts_.watcher_path};
  argv.insert(argv.end(), opts_.args.begin(), opts_.args.end());
  pid_t pid = spawn_child(argv, p[1]);
  if (pid < 0) {
    close(p[0]);
    close(p[1]);
    restart_later(now_ns, std::string("cannot start: ") + std::strerror(errno));
    return;
  }
  close(p[1]);
  fcntl(p[0], F_SETFL, O_NONBLOCK);
  fd_ = p[0];
  pid_ = pid;
  buf_.clear();
  started_at_ = now_ns;
  if (st_.starts++ > 0) st_.restarts++;
  std::fprintf(stderr, "tapwire-sensor: Kubernetes watcher started (pid %d)\n", pid);
}

void KubeWatcher::stop() {
  want_running_ = false;
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  stop_child(pid_, 5 * kSecond);
  pid_ = -1;
}

void KubeWatcher::restart_later(uint64_t now_ns, const std::string& why) {
  last_exit_ = why;
  if (now_ns - started_at_ > 60 * kSecond) backoff_ns_ = kSecond;  // it ran a while: not a crash loop
  restart_at_ = now_ns + backoff_ns_;
  backoff_ns_ = std::min(backoff_ns_ * 2, kMaxBackoff);
  std::fprintf(stderr, "tapwire-sensor: Kubernetes watcher %s; restarting in %.0f s\n", why.c_str(),
               static_cast<double>(restart_at_ - now_ns) / 1e9);
}

void KubeWatcher::on_readable(const std::function<void(identity::Workload&&)>& cb) {
  if (fd_ < 0) return;
  uint8_t chunk[1 << 16];
  for (int reads = 0; reads < 64; reads++) {  // bounded: the loop serves other events in between
    ssize_t n = read(fd_, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;  // EAGAIN: all read
    if (n == 0) {  // the child closed its stdout: it is exiting (SIGCHLD reaps it)
      close(fd_);
      fd_ = -1;
      break;
    }
    st_.bytes += static_cast<uint64_t>(n);
    buf_.insert(buf_.end(), chunk, chunk + n);
    const FrameScan scan = scan_frames(buf_, [&](std::string_view payload) {
      std::string why;
      auto w = identity::parse_workload(payload, &why);
      if (!w) {
        st_.invalid++;
        if (last_invalid_ != why)
          std::fprintf(stderr, "tapwire-sensor: Kubernetes watcher sent an object refused: %s\n", why.c_str());
        last_invalid_ = why;
        return;
      }
      st_.frames++;
      cb(std::move(*w));
    });
    if (scan.bad) {
      // Framing is lost: nothing after this can be trusted. Start afresh.
      st_.invalid++;
      last_invalid_ = "frame length " + std::to_string(scan.bad_len) + " out of range";
      std::fprintf(stderr, "tapwire-sensor: Kubernetes watcher wrote a bad frame (%s); restarting it\n",
                   last_invalid_.c_str());
      buf_.clear();
      if (pid_ > 0) kill(pid_, SIGKILL);
      close(fd_);
      fd_ = -1;
      return;
    }
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(scan.consumed));
    if (buf_.size() > kMaxBuffered) buf_.clear();  // cannot happen with the checks above; a last guard
  }
}

void KubeWatcher::on_child_exit(uint64_t now_ns) {
  if (pid_ <= 0) return;
  int status;
  if (waitpid(pid_, &status, WNOHANG) != pid_) return;
  pid_ = -1;
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  if (want_running_) restart_later(now_ns, describe_exit(status));
}

void KubeWatcher::tick(uint64_t now_ns) {
  if (want_running_ && pid_ <= 0 && now_ns >= restart_at_) start(now_ns);
}

nlohmann::json KubeWatcher::status() const {
  return {{"running", pid_ > 0},
          {"pid", pid_ > 0 ? pid_ : 0},
          {"frames", st_.frames},
          {"invalid", st_.invalid},
          {"restarts", st_.restarts},
          {"last_exit", last_exit_},
          {"last_invalid", last_invalid_}};
}

}  // namespace tapwire::sensor
