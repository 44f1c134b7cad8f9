// tapwire-tcx: tcx links (Linux 6.6+) for the integration tests, where this
// system's bpftool and iproute2 predate them.
//
//   tapwire-tcx query DEV
//       the programs on DEV's tcx ingress and egress hooks, in run order, as
//       one JSON object: {"ingress":[{"prog_id","link_id","name"}...],"egress":[...]}
//   tapwire-tcx attach OBJ PROG DEV ingress|egress PIN_DIR [--first]
//       loads OBJ as another agent would, attaches its program PROG to DEV's
//       hook with a tcx link (last, or first with --first), and pins the link
//       (PIN_DIR/link) and the object's maps (PIN_DIR/maps/) so that they
//       outlive this process; removing PIN_DIR/link detaches. Prints
//       {"prog_id","link_id"}.
//
// Run it in the network namespace of DEV (ip netns exec). Exit 1 with one
// line on stderr on failure; 2 on bad usage.
#include <net/if.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

constexpr uint32_t kTcxIngress = 46, kTcxEgress = 47;  // BPF_TCX_INGRESS/EGRESS (newer than the system headers)
constexpr uint32_t kBpfFBefore = 1u << 3;  // BPF_F_BEFORE
constexpr int kBpfProgQuery = 16;  // BPF_PROG_QUERY

// The BPF_PROG_QUERY part of union bpf_attr as of Linux 6.6 (link ids and
// revision), padded: the kernel wants the bytes it does not know zeroed.
struct QueryAttr {
  uint32_t target_ifindex;
  uint32_t attach_type;
  uint32_t query_flags;
  uint32_t attach_flags;
  uint64_t prog_ids;
  uint32_t count;
  uint32_t pad;
  uint64_t prog_attach_flags;
  uint64_t link_ids;
  uint64_t link_attach_flags;
  uint64_t revision;
  uint8_t zero[128];
};

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "tapwire-tcx: %s\n", msg.c_str());
  std::exit(1);
}

int quiet(enum libbpf_print_level, const char*, va_list) { return 0; }

unsigned ifindex_of(const char* dev) {
  unsigned idx = if_nametoindex(dev);
  if (!idx) die(std::string("no interface ") + dev + " in this network namespace");
  return idx;
}

nlohmann::json query(unsigned ifindex, uint32_t type) {
  std::vector<uint32_t> progs(64), links(64);
  QueryAttr a{};
  a.target_ifindex = ifindex;
  a.attach_type = type;
  a.prog_ids = reinterpret_cast<uintptr_t>(progs.data());
  a.link_ids = reinterpret_cast<uintptr_t>(links.data());
  a.count = static_cast<uint32_t>(progs.size());
  if (syscall(__NR_bpf, kBpfProgQuery, &a, sizeof a) != 0)
    die(std::string("BPF_PROG_QUERY (tcx) failed: ") + std::strerror(errno) +
        (errno == EINVAL ? " (no tcx in this kernel: Linux 6.6 or later)" : ""));
  nlohmann::json out = nlohmann::json::array();
  for (uint32_t i = 0; i < a.count && i < progs.size(); i++) {
    std::string name;
    int fd = bpf_prog_get_fd_by_id(progs[i]);
    if (fd >= 0) {
      bpf_prog_info info{};
      uint32_t len = sizeof info;
      if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) name = info.name;
      close(fd);
    }
    out.push_back({{"prog_id", progs[i]}, {"link_id", links[i]}, {"name", name}});
  }
  return out;
}

int attach(int argc, char** argv) {
  if (argc < 7) return 2;
  const char *obj_path = argv[2], *prog_name = argv[3], *dev = argv[4], *hook = argv[5];
  const std::string pin = argv[6];
  const bool first = argc > 7 && std::string(argv[7]) == "--first";
  uint32_t type;
  if (std::string(hook) == "ingress")
    type = kTcxIngress;
  else if (std::string(hook) == "egress")
    type = kTcxEgress;
  else
    return 2;
  unsigned idx = ifindex_of(dev);
  bpf_object* obj = bpf_object__open_file(obj_path, nullptr);
  if (!obj) die(std::string("cannot open ") + obj_path + ": " + std::strerror(errno));
  if (int err = bpf_object__load(obj)) die(std::string("cannot load ") + obj_path + ": " + std::strerror(-err));
  bpf_program* prog = bpf_object__find_program_by_name(obj, prog_name);
  if (!prog) die(std::string("no program ") + prog_name + " in " + obj_path);
  bpf_link_create_opts o{};
  o.sz = sizeof o;
  o.flags = first ? kBpfFBefore : 0;
  int link = bpf_link_create(bpf_program__fd(prog), static_cast<int>(idx), static_cast<bpf_attach_type>(type), &o);
  if (link < 0) die(std::string("cannot attach a tcx link to ") + dev + " " + hook + ": " + std::strerror(-link));
  mkdir(pin.c_str(), 0700);
  if (int err = bpf_obj_pin(link, (pin + "/link").c_str()))
    die("cannot pin the link at " + pin + "/link: " + std::strerror(errno ? errno : -err));
  if (int err = bpf_object__pin_maps(obj, (pin + "/maps").c_str()))
    die("cannot pin the maps under " + pin + "/maps: " + std::strerror(-err));
  bpf_link_info li{};
  uint32_t len = sizeof li;
  bpf_obj_get_info_by_fd(link, &li, &len);
  std::printf("%s\n", nlohmann::json({{"prog_id", li.prog_id}, {"link_id", li.id}}).dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  libbpf_set_print(quiet);
  const std::string cmd = argc > 1 ? argv[1] : "";
  int rc = 2;
  if (cmd == "query" && argc == 3) {
    unsigned idx = ifindex_of(argv[2]);
    std::printf("%s\n", nlohmann::json({{"ingress", query(idx, kTcxIngress)}, {"egress", query(idx, kTcxEgress)}})
                            .dump()
                            .c_str());
    rc = 0;
  } else if (cmd == "attach") {
    rc = attach(argc, argv);
  }
  if (rc == 2)
    std::fprintf(stderr,
                 "usage: tapwire-tcx query DEV | tapwire-tcx attach OBJ PROG DEV ingress|egress PIN_DIR [--first]\n");
  return rc;
}
