#include "identity_procfs.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <unordered_map>

#include "identity_cgroups.hpp"

namespace tapwire::sensor {
namespace {

// Small /proc files in one read; nullopt if the process is gone.
std::optional<std::string> read_small(const std::string& path, size_t max = 64 * 1024) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string out;
  char buf[4096];
  while (out.size() < max) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

bool parse_u32(std::string_view s, uint32_t& out) {
  if (s.empty() || s.size() > 10) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > UINT32_MAX) return false;
  out = static_cast<uint32_t>(v);
  return true;
}

}  // namespace

std::optional<ProcessInfo> parse_proc_stat(std::string_view stat) {
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
  size_t open_paren = stat.find('(');
  size_t close_paren = stat.rfind(')');
  if (open_paren == std::string_view::npos || close_paren == std::string_view::npos || close_paren < open_paren)
    return std::nullopt;
  ProcessInfo p;
  if (!parse_u32(stat.substr(0, open_paren == 0 ? 0 : open_paren - 1), p.tgid)) return std::nullopt;
  p.comm = std::string(stat.substr(open_paren + 1, close_paren - open_paren - 1));
  std::string_view rest = stat.substr(close_paren + 1);
  // " S 1234 ..."
  size_t i = 0;
  auto next_field = [&]() -> std::string_view {
    while (i < rest.size() && rest[i] == ' ') i++;
    size_t j = i;
    while (j < rest.size() && rest[j] != ' ' && rest[j] != '\n') j++;
    std::string_view f = rest.substr(i, j - i);
    i = j;
    return f;
  };
  std::string_view state = next_field();
  std::string_view ppid = next_field();
  if (state.empty() || !parse_u32(ppid, p.ppid)) return std::nullopt;
  return p;
}

std::optional<std::string> parse_proc_cgroup_v2(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.substr(0, 3) == "0::") return std::string(line.substr(3));
  }
  return std::nullopt;
}

std::vector<ProcessInfo> scan_proc(const std::string& proc_root, const std::string& cgroup2_mount,
                                   size_t max_processes) {
  std::vector<ProcessInfo> out;
  DIR* d = opendir(proc_root.c_str());
  if (!d) return out;
  std::unordered_map<std::string, uint64_t> ids;  // many processes share a cgroup: stat each once
  while (dirent* e = readdir(d)) {
    if (out.size() >= max_processes) break;
    uint32_t tgid;
    if (!parse_u32(e->d_name, tgid) || tgid == 0) continue;
    const std::string base = proc_root + "/" + e->d_name;
    auto stat = read_small(base + "/stat");
    if (!stat) continue;  // gone
    auto p = parse_proc_stat(*stat);
    if (!p) continue;
    p->tgid = tgid;
    char exe[4096];
    ssize_t n = readlink((base + "/exe").c_str(), exe, sizeof exe - 1);
    if (n > 0) p->exe.assign(exe, static_cast<size_t>(n));
    if (auto cg = read_small(base + "/cgroup")) {
      if (auto path = parse_proc_cgroup_v2(*cg)) {
        p->cgroup_path = *path;
        auto [it, inserted] = ids.try_emplace(*path, 0);
        if (inserted) {
          // "/" names the mount itself.
          auto id = cgroup_id_of(cgroup2_mount + (*path == "/" ? "" : *path));
          it->second = id.value_or(0);
        }
        p->cgroup_id = it->second;
      }
    }
    out.push_back(std::move(*p));
  }
  closedir(d);
  return out;
}

}  // namespace tapwire::sensor
