#include "identity_records.hpp"

#include <cstring>

namespace tapwire::identity {
namespace {

template <typename T>
bool read_struct(std::span<const uint8_t> body, T& out) {
  if (body.size() < sizeof(T)) return false;
  std::memcpy(&out, body.data(), sizeof(T));
  return true;
}

template <typename T>
void put(std::vector<uint8_t>& out, const T& v) {
  auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}

bool fail(std::string* error, const std::string& why) {
  if (error) *error = why;
  return false;
}

}  // namespace

uint64_t record_ts(const IdentityRecord& r) {
  return std::visit(
      [](const auto& x) -> uint64_t {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, SocketRecord>) return x.ev.ts_ns;
        else return x.ts_ns;
      },
      r);
}

bool record_in_dump(const IdentityRecord& r) {
  return std::visit(
      [](const auto& x) -> bool {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, SocketRecord>) return x.ev.flags & TW_SOCK_F_DUMP;
        else if constexpr (std::is_same_v<T, DumpRecord>) return true;
        else return x.flags & TW_IDENT_REC_F_DUMP;
      },
      r);
}

std::string comm_string(const char (&comm)[16]) { return std::string(comm, strnlen(comm, sizeof comm)); }

std::optional<IdentityRecord> decode_identity(uint16_t type, std::span<const uint8_t> body, std::string* error) {
  switch (type) {
    case TW_REC_SOCKET: {
      SocketRecord r;
      if (!read_struct(body, r.ev)) return fail(error, "socket record shorter than its struct"), std::nullopt;
      if (r.ev.type != TW_IDENT_SOCK_OPEN && r.ev.type != TW_IDENT_SOCK_CLOSE)
        return fail(error, "socket record of unknown event type"), std::nullopt;
      if (r.ev.ip_version != 4 && r.ev.ip_version != 6)
        return fail(error, "socket record with IP version " + std::to_string(r.ev.ip_version)), std::nullopt;
      return r;
    }
    case TW_REC_PROCESS: {
      tw_seg_process h;
      if (!read_struct(body, h)) return fail(error, "process record shorter than its struct"), std::nullopt;
      if (sizeof h + h.exe_len > body.size() || h.exe_len > kMaxPathBytes)
        return fail(error, "process record's path runs past its body"), std::nullopt;
      ProcessRecord r;
      r.ts_ns = h.ts_ns;
      r.cgroup_id = h.cgroup_id;
      r.tgid = h.tgid;
      r.ppid = h.ppid;
      r.type = h.type;
      r.flags = h.flags;
      r.comm = comm_string(h.comm);
      r.exe.assign(reinterpret_cast<const char*>(body.data() + sizeof h), h.exe_len);
      return r;
    }
    case TW_REC_CGROUP: {
      tw_seg_cgroup h;
      if (!read_struct(body, h)) return fail(error, "cgroup record shorter than its struct"), std::nullopt;
      if (sizeof h + h.path_len > body.size() || h.path_len > kMaxPathBytes)
        return fail(error, "cgroup record's path runs past its body"), std::nullopt;
      CgroupRecord r;
      r.ts_ns = h.ts_ns;
      r.cgroup_id = h.cgroup_id;
      r.flags = h.flags;
      r.path.assign(reinterpret_cast<const char*>(body.data() + sizeof h), h.path_len);
      return r;
    }
    case TW_REC_WORKLOAD: {
      tw_seg_workload h;
      if (!read_struct(body, h)) return fail(error, "workload record shorter than its struct"), std::nullopt;
      std::string why;
      auto w = parse_workload(
          std::string_view(reinterpret_cast<const char*>(body.data() + sizeof h), body.size() - sizeof h), &why);
      if (!w) return fail(error, "workload record: " + why), std::nullopt;
      return WorkloadRecord{h.ts_ns, h.flags, std::move(*w)};
    }
    case TW_REC_DUMP: {
      tw_seg_dump h;
      if (!read_struct(body, h)) return fail(error, "dump record shorter than its struct"), std::nullopt;
      if (h.phase != TW_DUMP_BEGIN && h.phase != TW_DUMP_END) return fail(error, "dump record of unknown phase"), std::nullopt;
      return DumpRecord{h.ts_ns, h.phase, h.records};
    }
  }
  fail(error, "not an identity record type: " + std::to_string(type));
  return std::nullopt;
}

std::pair<std::vector<uint8_t>, uint16_t> encode(const IdentityRecord& rec) {
  std::vector<uint8_t> out;
  uint16_t type = 0;
  std::visit(
      [&](const auto& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, SocketRecord>) {
          type = TW_REC_SOCKET;
          put(out, r.ev);
        } else if constexpr (std::is_same_v<T, ProcessRecord>) {
          type = TW_REC_PROCESS;
          tw_seg_process h{};
          h.ts_ns = r.ts_ns;
          h.cgroup_id = r.cgroup_id;
          h.tgid = r.tgid;
          h.ppid = r.ppid;
          h.type = r.type;
          h.flags = r.flags;
          const size_t n = std::min(r.exe.size(), kMaxPathBytes);
          h.exe_len = static_cast<uint16_t>(n);
          std::memcpy(h.comm, r.comm.data(), std::min(r.comm.size(), sizeof h.comm - 1));
          put(out, h);
          out.insert(out.end(), r.exe.begin(), r.exe.begin() + static_cast<std::ptrdiff_t>(n));
        } else if constexpr (std::is_same_v<T, CgroupRecord>) {
          type = TW_REC_CGROUP;
          tw_seg_cgroup h{};
          h.ts_ns = r.ts_ns;
          h.cgroup_id = r.cgroup_id;
          h.flags = r.flags;
          const size_t n = std::min(r.path.size(), kMaxPathBytes);
          h.path_len = static_cast<uint16_t>(n);
          put(out, h);
          out.insert(out.end(), r.path.begin(), r.path.begin() + static_cast<std::ptrdiff_t>(n));
        } else if constexpr (std::is_same_v<T, WorkloadRecord>) {
          type = TW_REC_WORKLOAD;
          tw_seg_workload h{};
          h.ts_ns = r.ts_ns;
          h.flags = r.flags;
          put(out, h);
          std::string text = to_json(r.workload);
          out.insert(out.end(), text.begin(), text.end());
        } else {
          type = TW_REC_DUMP;
          tw_seg_dump h{};
          h.ts_ns = r.ts_ns;
          h.phase = r.phase;
          h.records = r.records;
          put(out, h);
        }
      },
      rec);
  return {std::move(out), type};
}

}  // namespace tapwire::identity
