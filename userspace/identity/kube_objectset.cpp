#include "kube_objectset.hpp"

namespace tapwire::identity::kube {

namespace {
int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // upper case is kept as a string so that it comes back unchanged
}
}  // namespace

std::optional<ObjectSet::Uuid> ObjectSet::parse_uuid(std::string_view s) {
  if (s.size() != 36) return std::nullopt;
  Uuid u;
  int nibbles = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return std::nullopt;
      continue;
    }
    int v = hexval(s[i]);
    if (v < 0) return std::nullopt;
    uint64_t& half = nibbles < 16 ? u.hi : u.lo;
    half = (half << 4) | static_cast<uint64_t>(v);
    ++nibbles;
  }
  return u;
}

std::string ObjectSet::format_uuid(const Uuid& u) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  s.reserve(36);
  for (int i = 0; i < 32; ++i) {
    uint64_t half = i < 16 ? u.hi : u.lo;
    int shift = 4 * (15 - (i % 16));
    s += digits[(half >> shift) & 0xf];
    if (i == 7 || i == 11 || i == 15 || i == 19) s += '-';
  }
  return s;
}

uint32_t ObjectSet::intern(std::string_view ns) {
  auto it = ns_ids_.find(std::string(ns));
  if (it != ns_ids_.end()) {
    ++ns_refs_[it->second];
    return it->second;
  }
  uint32_t id;
  if (!ns_free_.empty()) {
    id = ns_free_.back();
    ns_free_.pop_back();
    ns_names_[id] = std::string(ns);
    ns_refs_[id] = 1;
  } else {
    id = static_cast<uint32_t>(ns_names_.size());
    ns_names_.emplace_back(ns);
    ns_refs_.push_back(1);
  }
  ns_ids_.emplace(std::string(ns), id);
  return id;
}

void ObjectSet::release(uint32_t id) {
  if (--ns_refs_[id] == 0) {
    ns_ids_.erase(ns_names_[id]);
    ns_names_[id].clear();
    ns_names_[id].shrink_to_fit();
    ns_free_.push_back(id);
  }
}

ObjectRef ObjectSet::ref_of(std::string uid, const Entry& e) const {
  return {std::move(uid), ns_names_[e.ns], e.name};
}

void ObjectSet::put(const ObjectRef& ref) {
  auto update = [&](Entry& e, bool fresh) {
    if (fresh) {
      e.ns = intern(ref.namespace_);
    } else if (ns_names_[e.ns] != ref.namespace_) {
      release(e.ns);
      e.ns = intern(ref.namespace_);
    }
    if (e.name != ref.name) e.name = ref.name;
    e.gen = gen_;
  };
  if (auto u = parse_uuid(ref.uid)) {
    auto [it, fresh] = by_uuid_.try_emplace(*u);
    update(it->second, fresh);
  } else {
    auto [it, fresh] = by_string_.try_emplace(ref.uid);
    update(it->second, fresh);
  }
}

bool ObjectSet::contains(std::string_view uid) const {
  if (auto u = parse_uuid(uid)) return by_uuid_.count(*u) > 0;
  return by_string_.count(std::string(uid)) > 0;
}

std::optional<ObjectRef> ObjectSet::erase(std::string_view uid) {
  if (auto u = parse_uuid(uid)) {
    auto it = by_uuid_.find(*u);
    if (it == by_uuid_.end()) return std::nullopt;
    ObjectRef r = ref_of(std::string(uid), it->second);
    release(it->second.ns);
    by_uuid_.erase(it);
    return r;
  }
  auto it = by_string_.find(std::string(uid));
  if (it == by_string_.end()) return std::nullopt;
  ObjectRef r = ref_of(it->first, it->second);
  release(it->second.ns);
  by_string_.erase(it);
  return r;
}

void ObjectSet::sweep(const std::function<void(const ObjectRef&)>& fn) {
  for (auto it = by_uuid_.begin(); it != by_uuid_.end();) {
    if (it->second.gen != gen_) {
      fn(ref_of(format_uuid(it->first), it->second));
      release(it->second.ns);
      it = by_uuid_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = by_string_.begin(); it != by_string_.end();) {
    if (it->second.gen != gen_) {
      fn(ref_of(it->first, it->second));
      release(it->second.ns);
      it = by_string_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace tapwire::identity::kube
