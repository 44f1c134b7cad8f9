// The objects of one resource that a watcher has reported, as uid →
// namespace/name only: enough to report a delete for an object that vanished
// while the watch was away (found by a relist). Canonical UUIDs are kept as
// 16 bytes and namespaces are shared, so 100k pods cost a few MB.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kube_object.hpp"

namespace tapwire::identity::kube {

class ObjectSet {
 public:
  // A full list starts: what is not put() again before sweep() is gone.
  void begin_list() { ++gen_; }
  void put(const ObjectRef& ref);
  std::optional<ObjectRef> erase(std::string_view uid);
  // Removes the objects not seen since begin_list() and hands each to fn.
  void sweep(const std::function<void(const ObjectRef&)>& fn);
  size_t size() const { return by_uuid_.size() + by_string_.size(); }
  bool contains(std::string_view uid) const;

 private:
  struct Uuid {
    uint64_t hi = 0, lo = 0;
    bool operator==(const Uuid&) const = default;
  };
  struct UuidHash {
    size_t operator()(const Uuid& u) const { return static_cast<size_t>(u.hi ^ (u.lo * 0x9E3779B97F4A7C15ull)); }
  };
  struct Entry {
    uint32_t ns = 0;
    uint32_t gen = 0;
    std::string name;
  };

  static std::optional<Uuid> parse_uuid(std::string_view s);
  static std::string format_uuid(const Uuid& u);
  uint32_t intern(std::string_view ns);
  void release(uint32_t id);
  ObjectRef ref_of(std::string uid, const Entry& e) const;

  uint32_t gen_ = 0;
  std::unordered_map<Uuid, Entry, UuidHash> by_uuid_;
  std::unordered_map<std::string, Entry> by_string_;  // uids that are not canonical UUIDs
  // Namespaces, shared by the entries and counted so that they go with them.
  std::vector<std::string> ns_names_;
  std::vector<uint32_t> ns_refs_;
  std::vector<uint32_t> ns_free_;
  std::unordered_map<std::string, uint32_t> ns_ids_;
};

}  // namespace tapwire::identity::kube
