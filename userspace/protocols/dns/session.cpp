#include "dns/session.hpp"

#include <deque>
#include <unordered_map>

namespace tapwire::proto {
namespace {

constexpr uint16_t kDnsPort = 53;
size_t dns_message_heap_bytes(const DnsMessage& m) {
  size_t n = vector_heap_bytes(m.questions) + vector_heap_bytes(m.answers);
  for (const auto& q : m.questions) n += string_heap_bytes(q.name);
  for (const auto& a : m.answers) n += string_heap_bytes(a.name) + string_heap_bytes(a.data);
  return n;
}

DnsLimits dns_limits(const DissectLimits& l) {
  DnsLimits d;
  d.max_records = l.dns_max_records;
  d.max_name_hops = l.dns_max_name_hops;
  return d;
}

const DnsMessage& msg_of(const MessagePtr& p) { return static_cast<const DnsRecord&>(*p).msg; }

// Summary columns and counters, once the call is whole.
void finish_call(CallContent& c, ProtocolCounters& counters) {
  const DnsMessage* q = c.request ? &msg_of(c.request) : c.response ? &msg_of(c.response) : nullptr;
  if (q && !q->questions.empty()) {
    c.method = dns_type_name(q->questions[0].qtype);
    c.path = q->questions[0].name;
  }
  if (c.response) {
    c.status = msg_of(c.response).rcode;
    if (!c.request) static_cast<DnsRecord&>(*c.response).orphan = true;
  }
  counters.breakdowns["dns_rcodes"][c.response ? dns_rcode_name(msg_of(c.response).rcode) : "none"]++;
}

size_t content_bytes(const CallContent& c) { return sizeof(CallContent) + content_heap_bytes(c); }

// ------------------------------------------------------------------ TCP --

class DnsTcpSession final : public StreamSession {
 public:
  explicit DnsTcpSession(SessionContext& ctx)
      : ctx_(ctx), lim_(dns_limits(ctx.limits())), counters_(ctx.counters(kDns)) {}

  void data(Dir d, std::span<const uint8_t> bytes, uint64_t ts) override {
    auto& buf = buf_[dir_index(d)];
    buf.insert(buf.end(), bytes.begin(), bytes.end());
    size_t used = 0;
    for (int guard = 0; guard < 100000 && used < buf.size(); guard++) {
      DnsMessage msg;
      auto r = parse_dns_tcp(std::span<const uint8_t>(buf).subspan(used), msg, lim_);
      if (r.status == ParseStatus::NeedMoreData) break;
      used += r.consumed;
      if (r.status != ParseStatus::Done) {
        counters_.parse_errors++;
        if (r.consumed == 0) {  // cannot resynchronise a length-prefixed stream
          buf.clear();
          return;
        }
        continue;
      }
      message(d, std::move(msg), ts);
    }
    buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
    if (buf.size() > 70000) {  // a message is at most 65535 + 2 bytes
      buf.clear();
      counters_.parse_errors++;
    }
    if (buf.empty() && buf.capacity() > (16 << 10)) std::vector<uint8_t>().swap(buf);
  }

  void gap(Dir d, uint64_t) override { buf_[dir_index(d)].clear(); }
  void end(Dir, uint64_t) override {}

  void close(uint32_t why, uint64_t) override {
    while (!pending_.empty()) {
      CallContent c = std::move(pending_.front());
      pending_.pop_front();
      c.flags |= why;
      emit(std::move(c));
    }
    queued_ = 0;
  }

  size_t memory_bytes() const override {
    return heap_bytes(sizeof(*this)) + kDequeFixed + vector_heap_bytes(buf_[0]) + vector_heap_bytes(buf_[1]) + queued_;
  }
  size_t buffered_bytes() const override { return buf_[0].size() + buf_[1].size(); }

  size_t shed_buffers(uint64_t) override {
    size_t freed = 0;
    for (int s = 0; s < 2; s++) {
      if (!buf_[s].capacity()) continue;
      if (!buf_[s].empty()) shed_pending_[s] = true;
      freed += vector_heap_bytes(buf_[s]);
      std::vector<uint8_t>().swap(buf_[s]);
    }
    return freed;
  }
  void mark_shed(Dir d) override { shed_pending_[dir_index(d)] = true; }

 private:
  SessionContext& ctx_;
  DnsLimits lim_;
  ProtocolCounters& counters_;
  std::vector<uint8_t> buf_[2];
  std::deque<CallContent> pending_;  // queries waiting, in order
  size_t queued_ = 0;
  bool shed_pending_[2] = {false, false};

  void emit(CallContent&& c) {
    finish_call(c, counters_);
    ctx_.emit(std::move(c));
  }

  void message(Dir d, DnsMessage&& msg, uint64_t ts) {
    uint32_t shed = 0;
    if (shed_pending_[dir_index(d)]) {
      shed = kFlagMemoryShed;
      shed_pending_[dir_index(d)] = false;
    }
    if (!msg.is_response) {
      CallContent c;
      c.protocol = kDns;
      c.ts_ns = ts;
      c.key_extra = static_cast<uint32_t>((ctx_.next_seq() << 16) | msg.id);
      c.flags |= shed;
      c.request = std::make_shared<DnsRecord>(std::move(msg));
      if (pending_.size() >= 256) {
        queued_ -= content_bytes(pending_.front());
        emit(std::move(pending_.front()));
        pending_.pop_front();
      }
      queued_ += content_bytes(c);
      pending_.push_back(std::move(c));
      return;
    }
    for (auto it = pending_.begin(); it != pending_.end(); ++it) {
      if (msg_of(it->request).id != msg.id) continue;
      queued_ -= content_bytes(*it);
      CallContent c = std::move(*it);
      pending_.erase(it);
      c.flags |= shed;
      c.end_ns = ts;
      c.response = std::make_shared<DnsRecord>(std::move(msg));
      emit(std::move(c));
      return;
    }
    CallContent c;
    c.protocol = kDns;
    c.ts_ns = c.end_ns = ts;
    c.flags |= kFlagOrphanResponse | shed;
    c.key_extra = static_cast<uint32_t>((ctx_.next_seq() << 16) | msg.id);
    c.response = std::make_shared<DnsRecord>(std::move(msg));
    emit(std::move(c));
  }
};

// ------------------------------------------------------------------ UDP --

struct UdpKey {
  dissect::FlowKey flow;
  uint16_t id;
  bool operator==(const UdpKey& o) const { return flow == o.flow && id == o.id; }
};
struct UdpKeyHash {
  size_t operator()(const UdpKey& k) const { return dissect::mix(dissect::fnv1a(&k.flow, sizeof k.flow) ^ k.id); }
};

class DnsUdpSession final : public DatagramSession {
 public:
  explicit DnsUdpSession(DatagramContext& ctx)
      : ctx_(ctx),
        counters_(ctx.counters(kDns)),
        lim_(dns_limits(ctx.limits())),
        timeout_(ctx.limits().dns_timeout_ns),
        max_pending_(ctx.limits().max_dns_pending) {}

  bool datagram(const Datagram& d) override {
    if (!looks_like_dns(d.payload)) return false;
    DnsMessage msg;
    if (parse_dns(d.payload, msg, lim_).status != ParseStatus::Done) {
      counters_.parse_errors++;
      return true;
    }
    UdpKey k{*d.key, msg.id};
    if (!msg.is_response) {
      if (pending_.size() >= max_pending_) {
        overflows_++;
        expire_before(UINT64_MAX, 1);
      }
      CallContent c;
      c.protocol = kDns;
      c.ts_ns = d.ts_ns;
      c.key_extra = msg.id;
      c.request = std::make_shared<DnsRecord>(std::move(msg));
      const size_t bytes = kEntry + content_heap_bytes(c);
      mem_ += bytes;
      Pending entry{std::move(c), d.ts_ns, d.pos, d.src_side, bytes};
      auto it = pending_.find(k);
      if (it == pending_.end()) {
        pending_.emplace(k, std::move(entry));
      } else {  // same id again before an answer: a retransmission, or a new query reusing the id
        mem_ -= it->second.bytes;
        Pending old = std::move(it->second);
        it->second = std::move(entry);
        old.call.flags |= kFlagTimeout;
        emit(std::move(old.call), k.flow, old.client_side);
      }
      expiry_.emplace_back(d.ts_ns, k);
      if (expiry_.size() > 2 * max_pending_) expire_before(UINT64_MAX, 1);  // answered entries go too
      return true;
    }
    auto it = pending_.find(k);
    if (it == pending_.end()) {
      CallContent c;
      c.protocol = kDns;
      c.ts_ns = c.end_ns = d.ts_ns;
      c.flags |= kFlagOrphanResponse;
      c.key_extra = msg.id;
      c.response = std::make_shared<DnsRecord>(std::move(msg));
      emit(std::move(c), k.flow, 1 - d.src_side);  // the client is where the answer goes
      return true;
    }
    CallContent c = std::move(it->second.call);
    const int client = it->second.client_side;
    mem_ -= it->second.bytes;
    pending_.erase(it);
    c.end_ns = d.ts_ns;
    c.response = std::make_shared<DnsRecord>(std::move(msg));
    emit(std::move(c), k.flow, client);
    return true;
  }

  void expire(uint64_t now) override { expire_before(now); }
  void close_all() override { expire_before(UINT64_MAX); }
  size_t memory_bytes() const override {
    return mem_ + expiry_.size() * sizeof(expiry_.front()) + pending_.bucket_count() * sizeof(void*);
  }
  bool shed_one() override {
    if (pending_.empty() || expiry_.empty()) return false;
    expire_before(UINT64_MAX, 1, kFlagMemoryShed);
    return true;
  }
  size_t pending() const override { return pending_.size(); }
  uint64_t overflows() const override { return overflows_; }
  bool oldest(Position& out) const override {
    bool any = false;
    for (auto& [k, p] : pending_)
      if (!any || p.pos < out) {
        out = p.pos;
        any = true;
      }
    return any;
  }

 private:
  struct Pending {
    CallContent call;
    uint64_t ts;
    Position pos;
    int client_side;
    size_t bytes = 0;  // counted in mem_
  };
  static constexpr size_t kEntry =
      heap_bytes(sizeof(void*) + sizeof(std::pair<const UdpKey, Pending>) + sizeof(size_t)) + sizeof(void*);

  DatagramContext& ctx_;
  ProtocolCounters& counters_;
  DnsLimits lim_;
  uint64_t timeout_;
  size_t max_pending_;
  std::unordered_map<UdpKey, Pending, UdpKeyHash> pending_;
  std::deque<std::pair<uint64_t, UdpKey>> expiry_;  // (query ts, key) in arrival order
  size_t mem_ = 0;
  uint64_t overflows_ = 0;

  void emit(CallContent&& c, const dissect::FlowKey& key, int client_side) {
    finish_call(c, counters_);
    ctx_.emit(std::move(c), key, client_side);
  }

  // Emits queries older than `before` unanswered (flagged `why`); at most
  // `max` of them when making room.
  void expire_before(uint64_t before, size_t max = SIZE_MAX, uint32_t why = kFlagTimeout) {
    size_t n = 0;
    while (!expiry_.empty() && n < max) {
      auto& [ts, key] = expiry_.front();
      if (before != UINT64_MAX && ts + timeout_ >= before) break;
      auto it = pending_.find(key);
      if (it != pending_.end() && it->second.ts == ts) {
        CallContent c = std::move(it->second.call);
        const int client = it->second.client_side;
        mem_ -= it->second.bytes;
        pending_.erase(it);
        c.flags |= why;
        emit(std::move(c), key.flow, client);
        n++;
      }
      expiry_.pop_front();
    }
  }
};

}  // namespace

void DnsRecord::write_json(JsonOut& out) const {
  const DnsMessage& m = msg;
  const DnsQuestion* q = m.questions.empty() ? nullptr : &m.questions[0];
  out.begin_object();
  if (!m.is_response) {
    out.field("id", uint64_t{m.id});
    out.field("qname", q ? q->name : std::string());
    out.field("qtype", q ? dns_type_name(q->qtype) : std::string());
  } else {
    out.field("rcode", dns_rcode_name(m.rcode));
    out.key("answers");
    out.begin_array();
    for (auto& a : m.answers) out.string(dns_type_name(a.type) + " " + a.data);
    out.end_array();
    if (orphan) {  // say what it answered
      out.field("qname", q ? q->name : std::string());
      out.field("qtype", q ? dns_type_name(q->qtype) : std::string());
    }
  }
  out.end_object();
}

size_t DnsRecord::heap_bytes() const { return proto::heap_bytes(sizeof(DnsRecord)) + dns_message_heap_bytes(msg); }

Detection DnsProtocol::detect(std::span<const uint8_t> s, int side, const FlowView& f) const {
  Detection d;
  if (s.size() >= 14 && (f.port[0] == kDnsPort || f.port[1] == kDnsPort) && looks_like_dns(s.subspan(2))) {
    d.matched = true;
    d.client_side = f.port[side] == kDnsPort ? 1 - side : side;
  }
  return d;
}

std::unique_ptr<StreamSession> DnsProtocol::open(SessionContext& ctx) const {
  return std::make_unique<DnsTcpSession>(ctx);
}

std::unique_ptr<DatagramSession> DnsProtocol::open(DatagramContext& ctx) const {
  auto s = std::make_unique<DnsUdpSession>(ctx);
  return s;
}

}  // namespace tapwire::proto
