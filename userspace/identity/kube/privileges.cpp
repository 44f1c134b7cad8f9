#include "privileges.hpp"

#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace tapwire::kube_watch {

namespace {

std::string err(const std::string& what) { return what + ": " + std::strerror(errno); }

bool capget_all(__user_cap_data_struct (&data)[2]) {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  return syscall(SYS_capget, &hdr, data) == 0;
}

}  // namespace

std::string drop_privileges(const std::string& user) {
  std::string done;
  if (getuid() == 0 || geteuid() == 0) {
    std::vector<char> buf(16384);
    struct passwd pw {};
    struct passwd* res = nullptr;
    int rc = getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &res);
    if (rc != 0 || !res)
      throw PrivilegeError("--user " + user + ": no such user; pass --user NAME of an unprivileged account");
    if (pw.pw_uid == 0 || pw.pw_gid == 0)
      throw PrivilegeError("--user " + user + " has uid or gid 0; pass an unprivileged account");
    uid_t uid = pw.pw_uid;
    gid_t gid = pw.pw_gid;
    if (setgroups(0, nullptr) != 0) throw PrivilegeError(err("setgroups"));
    if (setresgid(gid, gid, gid) != 0) throw PrivilegeError(err("setresgid " + std::to_string(gid)));
    if (setresuid(uid, uid, uid) != 0) throw PrivilegeError(err("setresuid " + std::to_string(uid)));
    done = "running as " + user + " (uid " + std::to_string(uid) + ", gid " + std::to_string(gid) + ")";
  }
  // A non-root parent may still have handed down capabilities: drop them.
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct none[2] = {};
  if (syscall(SYS_capset, &hdr, none) != 0) throw PrivilegeError(err("capset (dropping capabilities)"));
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) throw PrivilegeError(err("prctl(PR_SET_NO_NEW_PRIVS)"));

  // Check, rather than trust, that the drop holds.
  uid_t r, e, s;
  gid_t gr, ge, gs;
  if (getresuid(&r, &e, &s) != 0 || getresgid(&gr, &ge, &gs) != 0) throw PrivilegeError(err("getresuid"));
  if (r == 0 || e == 0 || s == 0 || gr == 0 || ge == 0 || gs == 0)
    throw PrivilegeError("still root after dropping privileges; refusing to run as root");
  if (setuid(0) == 0 || seteuid(0) == 0)
    throw PrivilegeError("could become root again after dropping privileges; refusing to run");
  __user_cap_data_struct caps[2] = {};
  if (!capget_all(caps)) throw PrivilegeError(err("capget"));
  for (const auto& c : caps)
    if (c.effective || c.permitted || c.inheritable)
      throw PrivilegeError("capabilities remain after dropping them; refusing to run");
  if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) throw PrivilegeError("no_new_privs did not stick; refusing to run");
  if (done.empty()) done = "running as uid " + std::to_string(r) + " (not root: no user change)";
  return done + ", no capabilities, no_new_privs";
}

}  // namespace tapwire::kube_watch
