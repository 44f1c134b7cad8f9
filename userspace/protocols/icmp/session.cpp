#include "icmp/session.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <unordered_map>

namespace tapwire::proto {
namespace {

constexpr uint8_t kProtoIcmp = 1, kProtoIcmp6 = 58;

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint32_t be32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 | static_cast<uint32_t>(p[2]) << 8 |
         p[3];
}

std::string ip_text(int version, const uint8_t* a) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(version == 6 ? AF_INET6 : AF_INET, a, buf, sizeof buf);
  return buf;
}

bool is_echo_request(uint8_t v, uint8_t type) { return v == 6 ? type == 128 : type == 8; }
bool is_echo_reply(uint8_t v, uint8_t type) { return v == 6 ? type == 129 : type == 0; }
// The messages about another packet (RFC 792, RFC 4443 section 3).
bool is_error(uint8_t v, uint8_t type) {
  return v == 6 ? (type >= 1 && type <= 4) : (type == 3 || type == 11 || type == 12);
}

const char* l4_name(uint8_t l4) {
  switch (l4) {
    case IPPROTO_TCP: return "tcp";
    case IPPROTO_UDP: return "udp";
    case kProtoIcmp: return "icmp";
    case kProtoIcmp6: return "icmpv6";
    default: return nullptr;
  }
}

// The header of the packet an error is about (RFC 792: its IP header and at
// least 8 bytes after it; RFC 4443: as much as fits). Returns false when too
// little of it came along to say whose packet it was.
bool parse_original(IcmpRecord& r, std::span<const uint8_t> in, uint8_t src[16], uint8_t dst[16]) {
  const uint8_t* d = in.data();
  size_t l4off = 0;
  uint8_t l4 = 0;
  if (r.version == 4) {
    if (in.size() < 20 || (d[0] >> 4) != 4 || (d[0] & 15) < 5) return false;
    l4off = (d[0] & 15) * 4u;
    l4 = d[9];
    std::memcpy(src, d + 12, 4);
    std::memcpy(dst, d + 16, 4);
  } else {
    if (in.size() < 40 || (d[0] >> 4) != 6) return false;
    l4off = 40;
    l4 = d[6];
    std::memcpy(src, d + 8, 16);
    std::memcpy(dst, d + 24, 16);
  }
  r.has_original = true;
  r.original_l4 = l4;
  r.original_src = ip_text(r.version, src);
  r.original_dst = ip_text(r.version, dst);
  if (in.size() >= l4off + 4 && (l4 == IPPROTO_TCP || l4 == IPPROTO_UDP)) {
    r.original_sport = be16(d + l4off);
    r.original_dport = be16(d + l4off + 2);
  } else if (in.size() >= l4off + 8 && (l4 == kProtoIcmp || l4 == kProtoIcmp6) &&
             is_echo_request(r.version, d[l4off])) {
    r.original_echo = true;
    r.original_id = be16(d + l4off + 4);
    r.original_seq = be16(d + l4off + 6);
  }
  return true;
}

struct EchoKey {
  dissect::FlowKey flow;
  uint16_t id, seq;
  bool operator==(const EchoKey& o) const { return flow == o.flow && id == o.id && seq == o.seq; }
};
struct EchoKeyHash {
  size_t operator()(const EchoKey& k) const {
    return dissect::mix(dissect::fnv1a(&k.flow, sizeof k.flow) ^ (uint64_t{k.id} << 16 | k.seq));
  }
};

// The key of a packet between these addresses of this protocol, and the
// side of `src` in it.
dissect::FlowKey key_of(uint8_t version, uint8_t l4, const uint8_t* src, const uint8_t* dst, uint16_t sport,
                        uint16_t dport, int& src_side) {
  tw_pkt m{};
  m.ip_version = version;
  m.l4_proto = l4;
  const size_t alen = version == 6 ? 16 : 4;
  std::memcpy(m.saddr, src, alen);
  std::memcpy(m.daddr, dst, alen);
  m.sport = sport;
  m.dport = dport;
  return dissect::make_flow_key(m, src_side);
}

const IcmpRecord& rec(const MessagePtr& p) { return static_cast<const IcmpRecord&>(*p); }

class IcmpSession final : public DatagramSession {
 public:
  explicit IcmpSession(DatagramContext& ctx)
      : ctx_(ctx),
        counters_(ctx.counters(kIcmp)),
        timeout_(ctx.limits().icmp_timeout_ns),
        max_pending_(ctx.limits().icmp_max_pending) {}

  bool datagram(const Datagram& d) override {
    const dissect::FlowKey& k = *d.key;
    if (k.l4 != kProtoIcmp && k.l4 != kProtoIcmp6) return false;
    const uint8_t version = k.l4 == kProtoIcmp6 ? 6 : 4;
    if (d.payload.size() < 4) {
      counters_.parse_errors++;
      return true;
    }
    auto r = std::make_shared<IcmpRecord>();
    r->version = version;
    r->type = d.payload[0];
    r->code = d.payload[1];
    const char* tn = icmp_type_name(version, r->type);
    counters_.breakdowns["icmp_types"][*tn ? tn : "type-" + std::to_string(r->type)]++;
    const uint8_t* src = k.addr[d.src_side];

    if (is_echo_request(version, r->type) || is_echo_reply(version, r->type)) {
      if (d.payload.size() < 8) {
        counters_.parse_errors++;
        return true;
      }
      r->echo = true;
      r->id = be16(d.payload.data() + 4);
      r->seq = be16(d.payload.data() + 6);
      r->size = static_cast<uint32_t>(std::max(d.wire_len, d.payload.size()) - 8);
      if (is_echo_request(version, r->type))
        request(std::move(r), k, d);
      else
        reply(std::move(r), k, d);
      return true;
    }
    if (!is_error(version, r->type)) return true;  // counted only
    if (d.payload.size() < 8) {
      counters_.parse_errors++;
      return true;
    }
    r->reporter = ip_text(version, src);
    const uint8_t* p = d.payload.data();
    if (version == 4 && r->type == 3 && r->code == 4) r->mtu = be16(p + 6);
    if (version == 6 && r->type == 2) r->mtu = be32(p + 4);
    if (version == 4 && r->type == 12) r->pointer = p[4];
    if (version == 6 && r->type == 4) r->pointer = static_cast<int32_t>(be32(p + 4) & 0x7fffffff);
    uint8_t osrc[16] = {}, odst[16] = {};
    CallContent c;
    c.protocol = kIcmp;
    c.ts_ns = c.end_ns = d.ts_ns;
    c.key_extra = static_cast<uint64_t>(r->type) << 8 | r->code;
    if (!parse_original(*r, d.payload.subspan(8), osrc, odst)) {
      // Whose packet it was is not known: the error goes to the client.
      c.response = std::move(r);
      emit(std::move(c), k, 1 - d.src_side);
      return true;
    }
    if (r->original_echo) {
      // A ping that could not be delivered: the error answers it.
      int side;
      EchoKey ek{key_of(version, k.l4, osrc, odst, 0, 0, side), r->original_id, r->original_seq};
      if (auto it = pending_.find(ek); it != pending_.end()) {
        CallContent call = take(it);
        call.end_ns = d.ts_ns;
        call.response = std::move(r);
        emit(std::move(call), ek.flow, it_client_);
        return true;
      }
    }
    const bool ports = r->original_l4 == IPPROTO_TCP || r->original_l4 == IPPROTO_UDP;
    int side;
    const dissect::FlowKey ok = key_of(version, ports ? r->original_l4 : k.l4, osrc, odst,
                                       ports ? r->original_sport : 0, ports ? r->original_dport : 0, side);
    c.response = std::move(r);
    emit(std::move(c), ok, side);
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
  };
  static constexpr size_t kEntry =
      heap_bytes(sizeof(void*) + sizeof(std::pair<const EchoKey, Pending>) + sizeof(size_t)) + sizeof(void*) +
      heap_bytes(sizeof(IcmpRecord)) + 32;  // the record and its shared_ptr control block

  DatagramContext& ctx_;
  ProtocolCounters& counters_;
  uint64_t timeout_;
  size_t max_pending_;
  std::unordered_map<EchoKey, Pending, EchoKeyHash> pending_;
  std::deque<std::pair<uint64_t, EchoKey>> expiry_;  // (request ts, key) in arrival order
  size_t mem_ = 0;
  uint64_t overflows_ = 0;
  int it_client_ = 0;

  CallContent take(std::unordered_map<EchoKey, Pending, EchoKeyHash>::iterator it) {
    CallContent c = std::move(it->second.call);
    it_client_ = it->second.client_side;
    mem_ -= kEntry;
    pending_.erase(it);
    return c;
  }

  void request(std::shared_ptr<IcmpRecord> r, const dissect::FlowKey& k, const Datagram& d) {
    if (pending_.size() >= max_pending_) {
      overflows_++;
      expire_before(UINT64_MAX, 1);
    }
    EchoKey ek{k, r->id, r->seq};
    CallContent c;
    c.protocol = kIcmp;
    c.ts_ns = d.ts_ns;
    c.key_extra = uint64_t{r->id} << 16 | r->seq;
    c.request = std::move(r);
    Pending entry{std::move(c), d.ts_ns, d.pos, d.src_side};
    if (auto it = pending_.find(ek); it != pending_.end()) {
      // The same id and sequence again before a reply: the first one
      // is given up on.
      CallContent old = take(it);
      old.flags |= kFlagTimeout;
      emit(std::move(old), ek.flow, it_client_);
    }
    pending_.emplace(ek, std::move(entry));
    mem_ += kEntry;
    expiry_.emplace_back(d.ts_ns, ek);
    if (expiry_.size() > 2 * max_pending_) expire_before(UINT64_MAX, 1);  // answered entries go too
  }

  void reply(std::shared_ptr<IcmpRecord> r, const dissect::FlowKey& k, const Datagram& d) {
    EchoKey ek{k, r->id, r->seq};
    if (auto it = pending_.find(ek); it != pending_.end()) {
      CallContent c = take(it);
      c.end_ns = d.ts_ns;
      c.response = std::move(r);
      emit(std::move(c), k, it_client_);
      return;
    }
    CallContent c;
    c.protocol = kIcmp;
    c.ts_ns = c.end_ns = d.ts_ns;
    c.flags |= kFlagOrphanResponse;
    c.key_extra = uint64_t{r->id} << 16 | r->seq;
    c.response = std::move(r);
    emit(std::move(c), k, 1 - d.src_side);
  }

  void emit(CallContent&& c, const dissect::FlowKey& key, int client_side) {
    const IcmpRecord* q = c.request ? &rec(c.request) : nullptr;
    const IcmpRecord* a = c.response ? &rec(c.response) : nullptr;
    if (q || (a && a->echo)) {
      c.method = "echo";
      c.path = ip_text(key.ipv, key.addr[1 - client_side]);
    }
    if (a && !a->echo) {
      if (!q) c.method = icmp_type_name(a->version, a->type);
      const char* cn = icmp_code_name(a->version, a->type, a->code);
      c.path = *cn ? cn : "code-" + std::to_string(a->code);
      c.status = a->type * 100 + a->code;
    } else if (a) {
      c.status = 0;
    }
    ctx_.emit(std::move(c), key, client_side);
  }

  // Emits echo requests older than `before` unanswered (flagged `why`); at
  // most `max` of them when making room.
  void expire_before(uint64_t before, size_t max = SIZE_MAX, uint32_t why = kFlagTimeout) {
    size_t n = 0;
    while (!expiry_.empty() && n < max) {
      auto& [ts, key] = expiry_.front();
      if (before != UINT64_MAX && ts + timeout_ >= before) break;
      auto it = pending_.find(key);
      if (it != pending_.end() && it->second.ts == ts) {
        const EchoKey k = key;
        CallContent c = take(it);
        c.flags |= why;
        emit(std::move(c), k.flow, it_client_);
        n++;
      }
      expiry_.pop_front();
    }
  }
};

}  // namespace

const char* icmp_type_name(uint8_t version, uint8_t type) {
  if (version == 6) {
    switch (type) {
      case 1: return "destination-unreachable";
      case 2: return "packet-too-big";
      case 3: return "time-exceeded";
      case 4: return "parameter-problem";
      case 128: return "echo-request";
      case 129: return "echo-reply";
      case 130: return "multicast-listener-query";
      case 131: return "multicast-listener-report";
      case 132: return "multicast-listener-done";
      case 133: return "router-solicitation";
      case 134: return "router-advertisement";
      case 135: return "neighbor-solicitation";
      case 136: return "neighbor-advertisement";
      case 137: return "redirect";
      case 143: return "multicast-listener-report-v2";
      default: return "";
    }
  }
  switch (type) {
    case 0: return "echo-reply";
    case 3: return "destination-unreachable";
    case 4: return "source-quench";
    case 5: return "redirect";
    case 8: return "echo-request";
    case 9: return "router-advertisement";
    case 10: return "router-solicitation";
    case 11: return "time-exceeded";
    case 12: return "parameter-problem";
    case 13: return "timestamp-request";
    case 14: return "timestamp-reply";
    default: return "";
  }
}

const char* icmp_code_name(uint8_t version, uint8_t type, uint8_t code) {
  static const char* const kUnreach4[] = {"net-unreachable",
                                          "host-unreachable",
                                          "protocol-unreachable",
                                          "port-unreachable",
                                          "fragmentation-needed",
                                          "source-route-failed",
                                          "net-unknown",
                                          "host-unknown",
                                          "source-host-isolated",
                                          "net-prohibited",
                                          "host-prohibited",
                                          "net-unreachable-for-tos",
                                          "host-unreachable-for-tos",
                                          "communication-prohibited",
                                          "host-precedence-violation",
                                          "precedence-cutoff"};
  static const char* const kUnreach6[] = {"no-route",         "communication-prohibited", "beyond-scope",
                                          "address-unreachable", "port-unreachable",      "source-policy-failed",
                                          "reject-route",     "source-routing-error"};
  static const char* const kParam6[] = {"erroneous-header-field", "unrecognized-next-header",
                                        "unrecognized-ipv6-option"};
  static const char* const kExceeded[] = {"ttl-exceeded", "reassembly-time-exceeded"};
  if (version == 6) {
    switch (type) {
      case 1: return code < std::size(kUnreach6) ? kUnreach6[code] : "";
      case 2: return code == 0 ? "packet-too-big" : "";
      case 3: return code == 0 ? "hop-limit-exceeded" : code == 1 ? kExceeded[1] : "";
      case 4: return code < std::size(kParam6) ? kParam6[code] : "";
      default: return "";
    }
  }
  switch (type) {
    case 3: return code < std::size(kUnreach4) ? kUnreach4[code] : "";
    case 11: return code < std::size(kExceeded) ? kExceeded[code] : "";
    case 12: return code == 0 ? "pointer-indicates-error" : code == 1 ? "missing-option" : code == 2 ? "bad-length" : "";
    default: return "";
  }
}

void IcmpRecord::write_json(JsonOut& out) const {
  out.begin_object();
  out.field("version", version == 6 ? "ICMPv6" : "ICMP");
  out.field("type", uint64_t{type});
  out.field("code", uint64_t{code});
  const char* tn = icmp_type_name(version, type);
  if (*tn) out.field("type_name", tn);
  if (echo) {
    out.field("id", uint64_t{id});
    out.field("seq", uint64_t{seq});
    out.field("size", uint64_t{size});
  } else {
    const char* cn = icmp_code_name(version, type, code);
    if (*cn) out.field("code_name", cn);
    out.field("reporter", reporter);
    if (mtu) out.field("mtu", uint64_t{mtu});
    if (pointer >= 0) out.field("pointer", static_cast<int64_t>(pointer));
    if (has_original) {
      out.key("original");
      out.begin_object();
      const char* l4 = l4_name(original_l4);
      if (l4)
        out.field("protocol", l4);
      else
        out.field("protocol", uint64_t{original_l4});
      out.field("src", original_src);
      out.field("dst", original_dst);
      if (original_l4 == IPPROTO_TCP || original_l4 == IPPROTO_UDP) {
        out.field("src_port", uint64_t{original_sport});
        out.field("dst_port", uint64_t{original_dport});
      }
      if (original_echo) {
        out.field("id", uint64_t{original_id});
        out.field("seq", uint64_t{original_seq});
      }
      out.end_object();
    }
  }
  out.end_object();
}

size_t IcmpRecord::heap_bytes() const {
  return proto::heap_bytes(sizeof(IcmpRecord)) + string_heap_bytes(reporter) + string_heap_bytes(original_src) +
         string_heap_bytes(original_dst);
}

std::unique_ptr<DatagramSession> IcmpProtocol::open(DatagramContext& ctx) const {
  return std::make_unique<IcmpSession>(ctx);
}

}  // namespace tapwire::proto
