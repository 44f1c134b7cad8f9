// The sensor's children (tapwire-dissector, tapwire-kube-watch): started so
// that they die with the sensor and take signals again, stopped with a grace
// period. One place for both, so that every child is treated alike.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tapwire::sensor {

// Forks and execs argv (argv[0] is the path). The child gets SIGTERM when the
// sensor dies, an empty signal mask, /dev/null as stdin when stdout_fd >= 0
// and that fd as its stdout. Returns the child's pid, or -1 with errno set.
pid_t spawn_child(const std::vector<std::string>& argv, int stdout_fd = -1);

// SIGTERM (unless `signalled` already), up to `grace_ns` to exit, then
// SIGKILL; always reaps it.
void stop_child(pid_t pid, uint64_t grace_ns, bool signalled = false);

}  // namespace tapwire::sensor
