// The dissector's confinement. It parses bytes that anyone on the network
// chose, so once its command line is read it gives up everything it does
// not need, for the rest of its life:
//   - priority: nice 19, SCHED_IDLE, idle I/O (best effort: warnings only);
//   - oom_score_adj 1000: under memory pressure the kernel kills it, not the
//     sensor (it restarts and resumes from its checkpoint);
//   - an unprivileged user and group (--user/--group; the sensor passes the
//     `tapwire` user and group when they exist, else nobody/nogroup), no
//     supplementary groups, no capabilities (effective, permitted, ambient,
//     and the bounding set where it may be dropped), not dumpable;
//   - no_new_privs and a seccomp allow-list (confine.cpp lists it by group):
//     any other system call kills the process (SIGSYS).
// `--keep-priority` (tests, benchmarks) skips all of it.
//
// Test hook: with TAPWIRE_DISSECTOR_SELFTEST=forbidden-syscall in its
// environment, the confined dissector calls socket(2), which is not on the
// allow-list, when it receives SIGUSR1: the kernel must kill it then
// (tests/integration/test_privileges.py). Without the variable SIGUSR1 keeps
// its default action.
#pragma once

#include <string>

namespace tapwire::dissect {

struct ConfineOptions {
  // Switch to this user (and to `group`, or else the user's primary group).
  // Needs root (CAP_SETUID, CAP_SETGID); "" keeps the current uid.
  std::string user;
  std::string group;
};

struct Confinement {
  std::string warnings;  // what best-effort steps could not do (" nice sched_idle ..."), for one line
};

// Confines the calling process as described above. Single-threaded callers
// only (the seccomp filter and the credentials are this thread's). Throws
// std::runtime_error with one line when a step that must hold fails.
Confinement confine(const ConfineOptions& opts);

}  // namespace tapwire::dissect
