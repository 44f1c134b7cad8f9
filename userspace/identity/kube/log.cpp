#include "log.hpp"

#include <unistd.h>

#include <mutex>

namespace tapwire::kube_watch {

void log_line(const std::string& msg) {
  static std::mutex mu;
  std::string line = "tapwire-kube-watch: " + msg + "\n";
  std::lock_guard lk(mu);
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {  // one write per line when it fits the pipe; stderr is best effort
    ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n <= 0) return;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace tapwire::kube_watch
