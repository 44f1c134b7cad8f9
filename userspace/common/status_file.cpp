#include "status_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

namespace tapwire {

std::string status_file_path(const std::string& data_dir) { return data_dir + "/status.json"; }

bool write_status_file(const std::string& data_dir, const nlohmann::json& status) {
  const std::string path = status_file_path(data_dir);
  const std::string tmp = path + ".tmp";
  const std::string text = status.dump(2) + "\n";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n <= 0) {
      ::close(fd);
      ::unlink(tmp.c_str());
      return false;
    }
    off += static_cast<size_t>(n);
  }
  ::close(fd);
  return ::rename(tmp.c_str(), path.c_str()) == 0;
}

std::optional<nlohmann::json> read_status_file(const std::string& data_dir) {
  std::ifstream in(status_file_path(data_dir));
  if (!in) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

}  // namespace tapwire
