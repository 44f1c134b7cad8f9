#include "interfaces.hpp"

#include <net/if.h>
#include <net/if_arp.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace tapwire::sensor {
namespace {

bool fill(int sock, Interface& i) {
  ifreq r{};
  std::strncpy(r.ifr_name, i.name.c_str(), IFNAMSIZ - 1);
  if (ioctl(sock, SIOCGIFFLAGS, &r) != 0) return false;
  i.loopback = (r.ifr_flags & IFF_LOOPBACK) != 0;
  if (ioctl(sock, SIOCGIFHWADDR, &r) == 0) {
    unsigned type = r.ifr_hwaddr.sa_family;
    i.has_l2 = type == ARPHRD_ETHER || type == ARPHRD_LOOPBACK;
  }
  return true;
}

bool looks_like_regex(const std::string& s) {
  return s.find_first_of("^$*+?()[]{}|\\") != std::string::npos;
}

}  // namespace

std::vector<Interface> list_interfaces() {
  std::vector<Interface> out;
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (struct if_nameindex* ifs = if_nameindex()) {
    for (auto* p = ifs; p->if_index != 0; p++) {
      Interface i;
      i.ifindex = p->if_index;
      i.name = p->if_name;
      if (sock >= 0) fill(sock, i);
      out.push_back(i);
    }
    if_freenameindex(ifs);
  }
  if (sock >= 0) close(sock);
  return out;
}

bool describe_interface(uint32_t ifindex, Interface& out) {
  char name[IF_NAMESIZE] = {};
  if (!if_indextoname(ifindex, name)) return false;
  out.ifindex = ifindex;
  out.name = name;
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return false;
  bool ok = fill(sock, out);
  close(sock);
  return ok;
}

InterfaceSelector::InterfaceSelector(const std::vector<std::string>& patterns) {
  auto existing = list_interfaces();
  for (auto& p : patterns) {
    bool exists = false;
    for (auto& i : existing) exists |= i.name == p;
    if (exists || !looks_like_regex(p)) {
      if (!exists)
        throw std::runtime_error("no interface named '" + p +
                                 "' in this network namespace (see `ip link`; a regular expression also works)");
      names_.push_back(p);
      continue;
    }
    try {
      regexes_.emplace_back(p, std::regex::extended);
    } catch (const std::regex_error& e) {
      throw std::runtime_error("bad interface pattern '" + p + "': " + e.what());
    }
  }
}

bool InterfaceSelector::matches(const Interface& i) const {
  if (!has_patterns()) return !i.loopback;
  for (auto& n : names_)
    if (n == i.name) return true;
  for (auto& r : regexes_)
    if (std::regex_match(i.name, r)) return true;
  return false;
}

LinkMonitor::LinkMonitor() {
  fd_ = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE);
  if (fd_ < 0) throw std::runtime_error(std::string("cannot open a netlink socket: ") + std::strerror(errno));
  sockaddr_nl sa{};
  sa.nl_family = AF_NETLINK;
  sa.nl_groups = RTMGRP_LINK;
  if (bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    int err = errno;
    close(fd_);
    throw std::runtime_error(std::string("cannot watch interfaces (netlink): ") + std::strerror(err));
  }
}

LinkMonitor::~LinkMonitor() { close(fd_); }

std::vector<LinkEvent> LinkMonitor::read_events() {
  std::vector<LinkEvent> out;
  alignas(nlmsghdr) char buf[16384];
  for (int round = 0; round < 64; round++) {
    ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    if (n <= 0) break;  // EAGAIN, or ENOBUFS (events lost: the caller rescans)
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, static_cast<unsigned>(n));
         h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type != RTM_NEWLINK && h->nlmsg_type != RTM_DELLINK) continue;
      auto* ifi = static_cast<ifinfomsg*>(NLMSG_DATA(h));
      LinkEvent e{h->nlmsg_type == RTM_NEWLINK, static_cast<uint32_t>(ifi->ifi_index), {}};
      int len = static_cast<int>(IFLA_PAYLOAD(h));
      for (auto* a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len))
        if (a->rta_type == IFLA_IFNAME)
          e.name.assign(static_cast<const char*>(RTA_DATA(a)), strnlen(static_cast<const char*>(RTA_DATA(a)), RTA_PAYLOAD(a)));
      out.push_back(std::move(e));
    }
  }
  return out;
}

}  // namespace tapwire::sensor
