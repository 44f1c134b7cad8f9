#include "identity_cgroups.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace tapwire::sensor {
namespace {

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_mountinfo(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); i++) {
    auto octal = [&](size_t k, char hi) { return s[k] >= '0' && s[k] <= hi; };
    if (s[i] == '\\' && i + 3 < s.size() && octal(i + 1, '3') && octal(i + 2, '7') && octal(i + 3, '7')) {
      out.push_back(static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::vector<std::string_view> split_ws(std::string_view line) {
  std::vector<std::string_view> f;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && line[i] == ' ') i++;
    size_t j = i;
    while (j < line.size() && line[j] != ' ') j++;
    if (j > i) f.push_back(line.substr(i, j - i));
    i = j;
  }
  return f;
}

}  // namespace

std::string find_cgroup2_mount(std::string_view mountinfo) {
  std::string best;
  int best_rank = -1;
  size_t pos = 0;
  while (pos < mountinfo.size()) {
    size_t nl = mountinfo.find('\n', pos);
    if (nl == std::string_view::npos) nl = mountinfo.size();
    std::string_view line = mountinfo.substr(pos, nl - pos);
    pos = nl + 1;
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    auto f = split_ws(line);
    size_t sep = 0;
    while (sep < f.size() && f[sep] != "-") sep++;
    if (sep < 5 || sep + 1 >= f.size() || f[sep + 1] != "cgroup2") continue;
    std::string mnt = unescape_mountinfo(f[4]);
    // A bind mount of a subtree (root other than "/") does not show every cgroup.
    int rank = (f[3] == "/" ? 2 : 0) + (mnt == "/sys/fs/cgroup" ? 1 : 0);
    if (rank > best_rank) {
      best_rank = rank;
      best = mnt;
    }
  }
  return best;
}

std::string find_cgroup2_mount() {
  std::ifstream in("/proc/self/mountinfo");
  if (!in)
    throw std::runtime_error(std::string("cannot read /proc/self/mountinfo: ") + std::strerror(errno) +
                             ": is /proc mounted?");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string m = find_cgroup2_mount(ss.str());
  if (m.empty())
    throw std::runtime_error(
        "no cgroup v2 file system is mounted (none in /proc/self/mountinfo): mount one, e.g. "
        "`mount -t cgroup2 none /sys/fs/cgroup`, or boot with systemd.unified_cgroup_hierarchy=1");
  return m;
}

std::optional<uint64_t> cgroup_id_of(const std::string& dir) {
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return std::nullopt;
  return static_cast<uint64_t>(st.st_ino);
}

CgroupResolver::CgroupResolver(std::string mount, size_t max_entries, size_t max_dirs,
                               std::chrono::milliseconds min_rewalk)
    : mount_(std::move(mount)), max_entries_(max_entries ? max_entries : 1), max_dirs_(max_dirs),
      min_rewalk_(min_rewalk) {}

void CgroupResolver::remember(uint64_t id, std::string path) {
  auto [it, inserted] = paths_.try_emplace(id, std::move(path));
  if (!inserted) return;  // an id names one directory for the machine's life
  order_.push_back(id);
  while (paths_.size() > max_entries_ && !order_.empty()) {
    paths_.erase(order_.front());
    order_.pop_front();
  }
}

void CgroupResolver::walk() {
  walks_++;
  last_walk_ = std::chrono::steady_clock::now();
  if (auto root = cgroup_id_of(mount_)) remember(*root, "/");
  // Depth first, iteratively; paths below the mount.
  std::vector<std::string> todo{""};
  size_t visited = 0;
  while (!todo.empty() && visited < max_dirs_) {
    std::string rel = std::move(todo.back());
    todo.pop_back();
    visited++;
    std::string abs = mount_ + rel;
    DIR* d = opendir(abs.c_str());
    if (!d) continue;  // removed meanwhile, or not readable: skip that subtree
    while (dirent* e = readdir(d)) {
      if (e->d_type != DT_DIR) continue;  // cgroupfs reports d_type; control files are DT_REG
      if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
      std::string child = rel + "/" + e->d_name;
      // On kernfs d_ino is the node's id, which is the cgroup id.
      remember(static_cast<uint64_t>(e->d_ino), child);
      todo.push_back(std::move(child));
    }
    closedir(d);
  }
}

std::optional<std::string> CgroupResolver::path(uint64_t id) {
  if (auto it = paths_.find(id); it != paths_.end()) return it->second;
  auto now = std::chrono::steady_clock::now();
  if (last_walk_ && now - *last_walk_ < min_rewalk_) return std::nullopt;
  walk();
  if (auto it = paths_.find(id); it != paths_.end()) return it->second;
  return std::nullopt;
}

}  // namespace tapwire::sensor
