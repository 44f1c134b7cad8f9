// The processes running when the sensor starts, read from /proc: the identity
// programs report processes as they exec and exit, this names the others.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tapwire::sensor {

struct ProcessInfo {
  uint32_t tgid = 0;
  uint32_t ppid = 0;
  std::string comm;
  std::string exe;  // readlink /proc/PID/exe; empty for kernel threads, or without CAP_SYS_PTRACE for others' processes
  std::string cgroup_path;  // the "0::" line of /proc/PID/cgroup: below the cgroup2 mount; empty if unknown
  uint64_t cgroup_id = 0;  // inode of that directory on the cgroup2 mount; 0 if unknown
};

// Parses /proc/PID/stat: comm (between the first '(' and the last ')') and
// ppid (the second field after it). nullopt if malformed.
std::optional<ProcessInfo> parse_proc_stat(std::string_view stat);
// The cgroup v2 path of a /proc/PID/cgroup text (its "0::" line), or nullopt.
std::optional<std::string> parse_proc_cgroup_v2(std::string_view text);

// Every process (thread group) in proc_root (normally /proc). cgroup ids are
// looked up under cgroup2_mount. Processes that exit during the scan are
// left out; bounded to max_processes.
std::vector<ProcessInfo> scan_proc(const std::string& proc_root, const std::string& cgroup2_mount,
                                   size_t max_processes = 1u << 20);

}  // namespace tapwire::sensor
