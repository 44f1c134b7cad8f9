#include "status_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>

namespace tapwire {

std::string status_file_path(const std::string& data_dir) { return data_dir + "/status.json"; }

bool write_status_file(const std::string& data_dir, const nlohmann::json& status) {
  // Interface and Kubernetes names need not be UTF-8: replaced, never a throw.
  return write_file_atomic(status_file_path(data_dir),
                           status.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n", 0644);
}

bool write_file_atomic(const std::string& path, const std::string& text, mode_t mode) {
  const std::string tmp = path + ".tmp";
  int fd = -1;
  for (int attempt = 0; attempt < 2; attempt++) {
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd >= 0 || errno != EEXIST) break;
    ::unlink(tmp.c_str());  // left by a crash, or planted: removed, never opened
  }
  if (fd < 0) return false;
  size_t off = 0;
  bool ok = ::fchmod(fd, mode) == 0;  // whatever the umask
  while (ok && off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ok = false;
    else off += static_cast<size_t>(n);
  }
  int err = errno;
  if (::close(fd) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (ok && ::rename(tmp.c_str(), path.c_str()) == 0) return true;
  if (ok) err = errno;
  ::unlink(tmp.c_str());
  errno = err;
  return false;
}

std::optional<nlohmann::json> read_status_file(const std::string& data_dir) {
  std::ifstream in(status_file_path(data_dir));
  if (!in) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

}  // namespace tapwire
