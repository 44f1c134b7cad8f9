#include "kube_owners.hpp"

#include <iterator>

namespace tapwire::identity::kube {

void OwnerIndex::put(const std::string& uid, std::optional<Owner> controller) {
  if (uid.empty()) return;
  controllers_[uid] = std::move(controller);
}

void OwnerIndex::erase(const std::string& uid) { controllers_.erase(uid); }

OwnerIndex::Resolution OwnerIndex::resolve(const Json& pod) const {
  auto c = controller_of(pod);
  if (!c) return {};
  bool chained = (c->kind == "ReplicaSet" && replicasets_) || (c->kind == "Job" && jobs_);
  if (!chained) return {fallback_owner(*c, pod), {}};
  if (auto it = controllers_.find(c->uid); !c->uid.empty() && it != controllers_.end())
    return {it->second ? *it->second : Owner{c->kind, c->name}, {}};
  return {fallback_owner(*c, pod), c->uid};
}

void OwnerIndex::drop(std::unordered_map<std::string, Waiting>::iterator it) {
  auto range = waiting_by_owner_.equal_range(it->second.owner_uid);
  for (auto r = range.first; r != range.second; ++r) {
    if (r->second == it->first) {
      waiting_by_owner_.erase(r);
      break;
    }
  }
  waiting_bytes_ -= it->second.bytes;
  waiting_.erase(it);
}

void OwnerIndex::expire(Clock::time_point now) {
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    auto next = std::next(it);
    if (now - it->second.since > kMaxWait) drop(it);
    it = next;
  }
}

void OwnerIndex::wait(const std::string& pod_uid, const std::string& waiting_for, const Controller& via, OJson frame,
                      Clock::time_point now) {
  forget(pod_uid);
  if (pod_uid.empty() || waiting_for.empty()) return;
  size_t bytes = frame.dump(-1, ' ', false, OJson::error_handler_t::replace).size() + pod_uid.size() + 64;
  if (waiting_.size() >= kMaxWaiting || waiting_bytes_ + bytes > kMaxWaitingBytes) expire(now);
  if (waiting_.size() >= kMaxWaiting || waiting_bytes_ + bytes > kMaxWaitingBytes) {
    ++dropped_;  // the guess stands
    return;
  }
  waiting_bytes_ += bytes;
  waiting_.emplace(pod_uid, Waiting{waiting_for, via, std::move(frame), bytes, now});
  waiting_by_owner_.emplace(waiting_for, pod_uid);
}

void OwnerIndex::forget(const std::string& pod_uid) {
  auto it = waiting_.find(pod_uid);
  if (it != waiting_.end()) drop(it);
}

std::vector<OJson> OwnerIndex::settle(const std::string& uid) {
  std::vector<OJson> out;
  auto ctl = controllers_.find(uid);
  if (ctl == controllers_.end()) return out;
  auto range = waiting_by_owner_.equal_range(uid);
  for (auto r = range.first; r != range.second; ++r) {
    auto w = waiting_.find(r->second);
    if (w == waiting_.end()) continue;
    Owner real = ctl->second ? *ctl->second : Owner{w->second.via.kind, w->second.via.name};
    OJson& frame = w->second.frame;
    bool same = frame.contains("owner") && frame["owner"].value("kind", "") == real.kind &&
                frame["owner"].value("name", "") == real.name;
    if (!same) {
      frame["owner"] = OJson{{"kind", truncate_utf8(real.kind, kMaxShort)}, {"name", truncate_utf8(real.name, kMaxName)}};
      out.push_back(std::move(frame));
    }
    waiting_bytes_ -= w->second.bytes;
    waiting_.erase(w);
  }
  waiting_by_owner_.erase(uid);
  return out;
}

}  // namespace tapwire::identity::kube
