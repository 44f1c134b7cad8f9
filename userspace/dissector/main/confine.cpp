#include "confine.hpp"

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <vector>

namespace tapwire::dissect {
namespace {

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }
std::string errno_text(const char* call) { return std::string(call) + ": " + std::strerror(errno); }

// ---------------------------------------------------------- the allow-list --
// Derived from strace of real runs of tapwire-dissector and of its glibc-malloc
// twin: live on a sensor's data dir (DB in the data dir; JSON lines with a
// checkpoint file; a restart that resumes; retention deleting segments under
// it), a segment directory, pcap files to a DB, a file and stdout, and the
// error paths. Everything before the filter (loading, argument parsing,
// user lookup) needs no entry. Where glibc picks between equivalent calls
// by version or architecture (rename/renameat2, access/faccessat2, ...) all
// variants are listed; a name this architecture lacks is skipped.

// Reading segments, pcap files and the identity stream; writing the DB,
// JSON lines, the checkpoint and dissector.json (written whole, renamed).
// SQLite also takes its byte-range locks (fcntl, below), syncs (fdatasync;
// fsync on the directory), truncates and deletes its -wal/-shm/-journal,
// checks a temp directory with access(), resolves relative and linked DB
// paths (getcwd, readlink), gives a -wal/-journal it creates the DB's mode
// (fchmod, when the umask made it differ: seen on a DB of an earlier,
// root-run version) and, as uid 0, the DB's owner (fchown: a dissector
// started by hand as root keeps its uid). openat and fchmod never set the
// setuid, setgid or sticky bits (rules below).
constexpr const char* kFileCalls[] = {
    "close",     "read",      "pread64",    "write",    "pwrite64",   "writev",    "lseek",
    "newfstatat", "fstat",    "statx",      "getdents64", "ftruncate", "fsync",    "fdatasync",
    "rename",    "renameat",  "renameat2",  "unlink",   "unlinkat",   "access",    "faccessat",
    "faccessat2", "readlink", "readlinkat", "getcwd",   "fchown",
};

// Memory: mimalloc reserves and commits (mmap, mprotect), decommits
// (madvise) and frees; glibc malloc grows the heap (brk) and moves large
// blocks (mremap); segments and the SQLite -shm are mapped. mmap and
// mprotect are allowed without PROT_EXEC only (rules below): nothing is
// ever made executable.
constexpr const char* kMemoryCalls[] = {"brk", "munmap", "mremap", "madvise"};

// Time: clock_gettime and gettimeofday are vDSO calls that become system
// calls on clock sources without a vDSO; the idle loop sleeps 50 ms.
constexpr const char* kTimeCalls[] = {"clock_gettime", "clock_getres", "gettimeofday", "clock_nanosleep",
                                      "nanosleep"};

// The process itself: SQLite checks its pid (fork detection) and euid;
// signal delivery and return (SIGTERM/SIGINT stop it cleanly; a sleep cut
// short by one is restarted by the kernel); exit; a futex wake at exit;
// getrandom for libraries that seed lazily. rt_sigprocmask and tgkill (to
// its own pid with SIGABRT only, rule below) let abort() report an
// assertion as SIGABRT rather than as SIGSYS.
constexpr const char* kProcessCalls[] = {"getpid", "geteuid", "rt_sigreturn", "restart_syscall", "exit",
                                         "exit_group", "futex", "getrandom", "rt_sigprocmask"};

// fcntl: descriptor flags and SQLite's POSIX record locks; nothing else
// (no F_SETOWN/F_SETSIG, leases or pipe sizes).
constexpr int kFcntlCommands[] = {F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_GETLK, F_SETLK, F_SETLKW};

// Not on the list, among others: socket and every network call, execve,
// fork/clone, ptrace, ioctl, kill, setuid and friends, mount, bpf,
// perf_event_open, io_uring, chmod/fchmodat, link/symlink, mkdir.

void add_rules(scmp_filter_ctx ctx) {
  auto allow = [&](const char* name, std::initializer_list<scmp_arg_cmp> args = {}) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr < 0) return;  // not a system call on this architecture
    std::vector<scmp_arg_cmp> a(args);
    int rc = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, static_cast<unsigned>(a.size()), a.data());
    if (rc != 0) fail(std::string("seccomp: cannot allow ") + name + ": " + std::strerror(-rc));
  };
  for (const char* s : kFileCalls) allow(s);
  for (const char* s : kMemoryCalls) allow(s);
  for (const char* s : kTimeCalls) allow(s);
  for (const char* s : kProcessCalls) allow(s);
  allow("openat", {SCMP_A3(SCMP_CMP_MASKED_EQ, S_ISUID | S_ISGID | S_ISVTX, 0)});
  allow("fchmod", {SCMP_A1(SCMP_CMP_MASKED_EQ, S_ISUID | S_ISGID | S_ISVTX, 0)});
  allow("mmap", {SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)});
  allow("mprotect", {SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)});
  for (int cmd : kFcntlCommands) allow("fcntl", {SCMP_A1(SCMP_CMP_EQ, static_cast<scmp_datum_t>(cmd))});
  allow("tgkill", {SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(getpid())),
                   SCMP_A2(SCMP_CMP_EQ, static_cast<scmp_datum_t>(SIGABRT))});
}

void install_seccomp() {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
  if (!ctx) fail("seccomp: cannot create a filter");
  try {
    add_rules(ctx);
  } catch (...) {
    seccomp_release(ctx);
    throw;
  }
  int rc = seccomp_load(ctx);
  seccomp_release(ctx);
  if (rc != 0)
    fail(std::string("cannot install the seccomp filter: ") + std::strerror(-rc) +
         " (a kernel without seccomp filters? --keep-priority runs unconfined)");
}

// ---------------------------------------------------------------- the rest --

// SIGUSR1 under TAPWIRE_DISSECTOR_SELFTEST=forbidden-syscall (confine.hpp).
void forbidden_syscall(int) { syscall(SYS_socket, AF_INET, SOCK_STREAM, 0); }

std::string lower_priority() {
  std::string warn;
  if (setpriority(PRIO_PROCESS, 0, 19) != 0) warn += " nice";
  sched_param sp{};
  if (sched_setscheduler(0, SCHED_IDLE, &sp) != 0) warn += " sched_idle";
  constexpr int kIoprioClassIdle = 3, kIoprioWhoProcess = 1, kIoprioClassShift = 13;
  if (syscall(SYS_ioprio_set, kIoprioWhoProcess, 0, kIoprioClassIdle << kIoprioClassShift) != 0) warn += " ioprio";
  return warn;
}

// Raising one's own oom_score_adj needs no privilege; done while /proc/self
// is still ours to write (switching user makes the process non-dumpable and
// its /proc files root's).
bool raise_oom_score_adj() {
  int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, "1000", 4) == 4;
  close(fd);
  return ok;
}

struct Target {
  uid_t uid;
  gid_t gid;
  std::string user, group;
};

Target resolve(const ConfineOptions& o) {
  std::vector<char> buf(1 << 16);
  passwd pw{};
  passwd* pwr = nullptr;
  if (getpwnam_r(o.user.c_str(), &pw, buf.data(), buf.size(), &pwr) != 0 || !pwr)
    fail("--user " + o.user + ": no such user; give an unprivileged account (the sensor uses tapwire, else nobody)");
  Target t{pw.pw_uid, pw.pw_gid, o.user, ""};
  if (!o.group.empty()) {
    group gr{};
    group* grr = nullptr;
    if (getgrnam_r(o.group.c_str(), &gr, buf.data(), buf.size(), &grr) != 0 || !grr)
      fail("--group " + o.group + ": no such group; give an unprivileged group (the sensor uses tapwire, else nogroup)");
    t.gid = gr.gr_gid;
    t.group = o.group;
  } else {
    group gr{};
    group* grr = nullptr;
    t.group = getgrgid_r(t.gid, &gr, buf.data(), buf.size(), &grr) == 0 && grr ? gr.gr_name : std::to_string(t.gid);
  }
  if (t.uid == 0 || t.gid == 0) fail("--user/--group: " + o.user + ":" + t.group + " is root; give an unprivileged account");
  return t;
}

// The bounding set needs CAP_SETPCAP to shrink, so this runs while still
// root: root started by hand has it; the sensor's systemd unit does not hand
// it down (its bounding set is already small, and no_new_privs keeps exec
// from gaining anything from it).
void drop_bounding_set() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct caps[2] = {};
  if (syscall(SYS_capget, &hdr, caps) != 0 || !(caps[0].effective & (1u << CAP_SETPCAP))) return;
  for (int cap = 0; cap <= CAP_LAST_CAP; cap++) prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
}

void drop_capabilities() {
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct none[2] = {};
  if (syscall(SYS_capset, &hdr, none) != 0) fail(errno_text("capset (dropping capabilities)"));
}

// Checked rather than trusted: a step that silently did not hold would
// leave a dissector that looks confined and is not.
void verify(const Target* t) {
  uid_t r, e, s;
  gid_t gr, ge, gs;
  if (getresuid(&r, &e, &s) != 0 || getresgid(&gr, &ge, &gs) != 0) fail(errno_text("getresuid"));
  if (t && (r != t->uid || e != t->uid || s != t->uid || gr != t->gid || ge != t->gid || gs != t->gid))
    fail("switching to " + t->user + ":" + t->group + " did not hold; refusing to run");
  if (t && getgroups(0, nullptr) != 0) fail("supplementary groups remain after dropping them; refusing to run");
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct caps[2] = {};
  if (syscall(SYS_capget, &hdr, caps) != 0) fail(errno_text("capget"));
  for (const auto& c : caps)
    if (c.effective || c.permitted || c.inheritable) fail("capabilities remain after dropping them; refusing to run");
  if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) fail("no_new_privs did not stick; refusing to run");
}

}  // namespace

Confinement confine(const ConfineOptions& opts) {
  Confinement out;
  out.warnings = lower_priority();
  if (!raise_oom_score_adj()) out.warnings += " oom_score_adj";
  // Files it creates: its group may read them (the data dir is setgid to
  // it), nobody else.
  umask(027);

  drop_bounding_set();
  std::optional<Target> target;
  if (!opts.user.empty()) {
    target = resolve(opts);
    if (geteuid() == 0) {
      if (setgroups(0, nullptr) != 0) fail(errno_text("setgroups"));
      if (setresgid(target->gid, target->gid, target->gid) != 0)
        fail(errno_text(("setresgid " + std::to_string(target->gid)).c_str()));
      if (setresuid(target->uid, target->uid, target->uid) != 0)
        fail(errno_text(("setresuid " + std::to_string(target->uid)).c_str()));
    } else if (getuid() != target->uid) {
      fail("--user " + opts.user + " needs root (running as uid " + std::to_string(getuid()) + ")");
    }
  }
  drop_capabilities();
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail(errno_text("prctl(PR_SET_NO_NEW_PRIVS)"));
  verify(target ? &*target : nullptr);

  if (const char* t = getenv("TAPWIRE_DISSECTOR_SELFTEST"); t && std::strcmp(t, "forbidden-syscall") == 0) {
    struct sigaction sa {};
    sa.sa_handler = forbidden_syscall;
    sigaction(SIGUSR1, &sa, nullptr);
  }
  install_seccomp();  // last: nothing after it may need a call outside the list
  return out;
}

}  // namespace tapwire::dissect
