// tapwire serve runs without capabilities: it reads files of the data
// directory and talks to the sensor's control socket (served to the
// sensor's uid and root by SO_PEERCRED), neither of which needs one. Root
// keeps its uid by default (the data directory and the control socket are
// root's), but no capability, so that it cannot, for one, read or write
// files past their permission bits or load BPF; --user switches to an
// account of its own instead (then without the control socket's requests).
#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "server.hpp"

namespace tapwire::serve {
namespace {

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what + ": " + std::strerror(errno)); }

bool capget_all(__user_cap_data_struct (&caps)[2]) {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  return syscall(SYS_capget, &hdr, caps) == 0;
}

}  // namespace

bool has_capabilities() {
  __user_cap_data_struct caps[2] = {};
  if (!capget_all(caps)) return true;  // cannot tell: assume the worst
  for (const auto& c : caps)
    if (c.effective || c.permitted) return true;
  return false;
}

void drop_privileges(const PrivilegeOptions& o) {
  __user_cap_data_struct caps[2] = {};
  if (!capget_all(caps)) fail("capget");
  const bool setpcap = caps[0].effective & (1u << CAP_SETPCAP);
  if (setpcap) {
    // Whatever it runs later (tapwire dissect) can never gain one back: not
    // from the bounding set, nor by being root at exec.
    for (int cap = 0; cap <= CAP_LAST_CAP; cap++) prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
    prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                                 SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED,
          0, 0, 0);
  }
  if (!o.user.empty()) {
    std::vector<char> buf(1 << 16);
    passwd pw{};
    passwd* pwr = nullptr;
    if (getpwnam_r(o.user.c_str(), &pw, buf.data(), buf.size(), &pwr) != 0 || !pwr)
      throw std::runtime_error("--user " + o.user + ": no such user");
    uid_t uid = pw.pw_uid;
    gid_t gid = pw.pw_gid;
    if (!o.group.empty()) {
      group gr{};
      group* grr = nullptr;
      if (getgrnam_r(o.group.c_str(), &gr, buf.data(), buf.size(), &grr) != 0 || !grr)
        throw std::runtime_error("--group " + o.group + ": no such group");
      gid = gr.gr_gid;
    }
    if (geteuid() == 0) {
      if (setgroups(0, nullptr) != 0) fail("setgroups");
      if (setresgid(gid, gid, gid) != 0) fail("setresgid");
      if (setresuid(uid, uid, uid) != 0) fail("setresuid");
    } else if (getuid() != uid) {
      throw std::runtime_error("--user " + o.user + " needs root");
    }
  }
  if (o.user.empty() && geteuid() == 0) {
    // Without CAP_DAC_READ_SEARCH, root reads what the dissector (another
    // user) wrote only through the data directory's group.
    std::vector<gid_t> gs(o.groups.begin(), o.groups.end());
    if (setgroups(gs.size(), gs.data()) != 0) fail("setgroups");
  }
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct none[2] = {};
  if (syscall(SYS_capset, &hdr, none) != 0) fail("capset (dropping capabilities)");
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail("prctl(PR_SET_NO_NEW_PRIVS)");
  // Checked rather than trusted.
  if (!capget_all(caps)) fail("capget");
  for (const auto& c : caps)
    if (c.effective || c.permitted || c.inheritable)
      throw std::runtime_error("capabilities remain after dropping them; refusing to serve");
  if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) throw std::runtime_error("no_new_privs did not stick; refusing to serve");
}

}  // namespace tapwire::serve
