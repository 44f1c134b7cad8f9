// DNS message parser (RFC 1035, 3596, 2782, 3597). Runs per datagram on
// hostile input: every length is checked against the bytes left, counts off
// the wire are capped before anything is sized from them, and compression
// pointers may only go strictly backwards (so following them terminates).
#include "dns.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>

namespace tapwire::proto {

namespace {

constexpr size_t kHeaderSize = 12;
constexpr size_t kMaxNameWire = 255;  // RFC 1035 3.1, including the root byte
constexpr size_t kMinQuestion = 5;  // root name + type + class
constexpr size_t kMinRecord = 11;  // root name + type + class + ttl + rdlength

inline uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
inline uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// Why a read failed: Short = ran out of bytes (the message may have been cut
// off), Bad = malformed no matter what follows.
enum class Err : uint8_t { Ok, Short, Bad };

void append_uint(std::string& out, uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

void append_ddd(std::string& out, uint8_t c) {
  char e[4] = {'\\', static_cast<char>('0' + c / 100), static_cast<char>('0' + c / 10 % 10),
               static_cast<char>('0' + c % 10)};
  out.append(e, 4);
}

// One label's bytes, escaped the way dig prints names: the characters that
// mean something in a zone file get a backslash, anything not printable
// (and the space) becomes \DDD.
void append_label(std::string& out, const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint8_t c = p[i];
    switch (c) {
      case '.':
      case '"':
      case '(':
      case ')':
      case ';':
      case '\\':
      case '@':
      case '$':
        out.push_back('\\');
        out.push_back(static_cast<char>(c));
        break;
      default:
        if (c <= 0x20 || c >= 0x7f)
          append_ddd(out, c);
        else
          out.push_back(static_cast<char>(c));
    }
  }
}

// A TXT character-string inside double quotes, escaped like dig.
void append_quoted(std::string& out, const uint8_t* p, size_t n) {
  out.push_back('"');
  for (size_t i = 0; i < n; i++) {
    uint8_t c = p[i];
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < 0x20 || c >= 0x7f) {
      append_ddd(out, c);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  out.push_back('"');
}

struct Msg {
  const uint8_t* p;
  size_t n;
  size_t max_hops;
};

// Reads the (possibly compressed) name at `pos`; `after` is set to the byte
// after its in-place part. Appends the dotted name to `out` if given.
// Loop protection: each pointer must target an offset strictly below where
// the current run of labels started (so run starts strictly decrease), past
// the header, and at most max_hops pointers are followed.
Err read_name(const Msg& m, size_t pos, size_t& after, std::string* out) {
  size_t run_start = pos;
  size_t hops = 0;
  size_t wire = 1;  // the root byte
  bool jumped = false;
  bool first = true;
  for (;;) {
    if (pos >= m.n) return jumped ? Err::Bad : Err::Short;
    uint8_t len = m.p[pos];
    if (len == 0) {
      if (!jumped) after = pos + 1;
      return Err::Ok;
    }
    switch (len & 0xC0) {
      case 0xC0: {
        if (pos + 1 >= m.n) return jumped ? Err::Bad : Err::Short;
        size_t target = (size_t{len & 0x3Fu} << 8) | m.p[pos + 1];
        if (!jumped) {
          after = pos + 2;
          jumped = true;
        }
        if (target >= run_start || target < kHeaderSize || ++hops > m.max_hops) return Err::Bad;
        pos = run_start = target;
        break;
      }
      case 0x00: {
        // Labels are at most 63 bytes by construction (6 bits).
        if (pos + 1 + len > m.n) return jumped ? Err::Bad : Err::Short;
        wire += 1 + size_t{len};
        if (wire > kMaxNameWire) return Err::Bad;
        if (out) {
          if (!first) out->push_back('.');
          append_label(*out, m.p + pos + 1, len);
        }
        first = false;
        pos += 1 + size_t{len};
        break;
      }
      default:  // 0x40 extended labels (RFC 6891 deprecated them), 0x80 reserved
        return Err::Bad;
    }
  }
}

// A name inside RDATA, which must not run past the RDATA's end.
Err read_rdata_name(const Msg& m, size_t& pos, size_t end, std::string& out, bool root_as_dot) {
  size_t after = 0;
  Msg bounded{m.p, end, m.max_hops};  // in-place bytes bounded by the RDATA ...
  size_t before = out.size();
  Err e = read_name(bounded, pos, after, &out);
  if (e == Err::Short) return Err::Bad;  // ... and a name cut by rdlength is malformed
  if (e != Err::Ok) return e;
  if (root_as_dot && out.size() == before) out.push_back('.');
  pos = after;
  return Err::Ok;
}

void append_generic(std::string& out, const uint8_t* p, size_t n) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  out.append("\\# ");
  append_uint(out, n);
  if (n == 0) return;
  out.push_back(' ');
  for (size_t i = 0; i < n; i++) {
    out.push_back(kHex[p[i] >> 4]);
    out.push_back(kHex[p[i] & 0xF]);
  }
}

void append_ipv4(std::string& out, const uint8_t* p) {
  for (int i = 0; i < 4; i++) {
    if (i) out.push_back('.');
    append_uint(out, p[i]);
  }
}

constexpr uint16_t kA = 1, kNS = 2, kCNAME = 5, kSOA = 6, kPTR = 12, kMX = 15, kTXT = 16, kAAAA = 28, kSRV = 33,
                   kDNAME = 39;

// Renders RDATA at [pos, pos+rdlen) into `out`. Names inside may point
// anywhere earlier in the message, so `m` is the whole message.
Err render_rdata(const Msg& m, uint16_t type, uint16_t rclass, size_t pos, size_t rdlen, std::string& out) {
  const size_t end = pos + rdlen;
  const uint8_t* d = m.p + pos;
  const bool in_class = (rclass & 0x7FFF) == 1;  // mDNS uses the top bit (cache flush)
  switch (type) {
    case kA:
      if (!in_class) break;
      if (rdlen != 4) return Err::Bad;
      append_ipv4(out, d);
      return Err::Ok;
    case kAAAA: {
      if (!in_class) break;
      if (rdlen != 16) return Err::Bad;
      char buf[INET6_ADDRSTRLEN];
      if (!inet_ntop(AF_INET6, d, buf, sizeof buf)) return Err::Bad;
      out.append(buf);
      return Err::Ok;
    }
    case kNS:
    case kCNAME:
    case kPTR:
    case kDNAME: {
      size_t p = pos;
      if (Err e = read_rdata_name(m, p, end, out, true); e != Err::Ok) return e;
      return p == end ? Err::Ok : Err::Bad;
    }
    case kMX: {
      if (rdlen < 3) return Err::Bad;
      append_uint(out, be16(d));
      out.push_back(' ');
      size_t p = pos + 2;
      if (Err e = read_rdata_name(m, p, end, out, true); e != Err::Ok) return e;
      return p == end ? Err::Ok : Err::Bad;
    }
    case kSRV: {
      if (!in_class) break;
      if (rdlen < 7) return Err::Bad;
      append_uint(out, be16(d));
      out.push_back(' ');
      append_uint(out, be16(d + 2));
      out.push_back(' ');
      append_uint(out, be16(d + 4));
      out.push_back(' ');
      size_t p = pos + 6;
      if (Err e = read_rdata_name(m, p, end, out, true); e != Err::Ok) return e;
      return p == end ? Err::Ok : Err::Bad;
    }
    case kSOA: {
      size_t p = pos;
      if (Err e = read_rdata_name(m, p, end, out, true); e != Err::Ok) return e;
      out.push_back(' ');
      if (Err e = read_rdata_name(m, p, end, out, true); e != Err::Ok) return e;
      if (end - p != 20) return Err::Bad;
      for (int i = 0; i < 5; i++) {
        out.push_back(' ');
        append_uint(out, be32(m.p + p + 4 * static_cast<size_t>(i)));
      }
      return Err::Ok;
    }
    case kTXT: {
      size_t p = pos;
      while (p < end) {
        size_t len = m.p[p];
        if (p + 1 + len > end) return Err::Bad;
        if (p != pos) out.push_back(' ');
        append_quoted(out, m.p + p + 1, len);
        p += 1 + len;
      }
      return Err::Ok;
    }
    default:
      break;
  }
  append_generic(out, d, rdlen);
  return Err::Ok;
}

// Reuses the elements (and their strings' buffers) already in `v` when a
// caller parses into the same message again.
void reset(DnsQuestion& q) {
  q.name.clear();
  q.qtype = q.qclass = 0;
}
void reset(DnsAnswer& a) {
  a.name.clear();
  a.data.clear();
  a.type = a.rclass = 0;
  a.ttl = 0;
}
template <class T>
T& next_slot(std::vector<T>& v, size_t& used) {
  if (used < v.size()) {
    T& t = v[used++];
    reset(t);
    return t;
  }
  used++;
  return v.emplace_back();
}

// The plausible question types for detection: the assigned data and meta
// types (not OPT, which never is a question), TA and DLV, and the private
// use range (RFC 6895) that local zones use.
bool sane_qtype(uint16_t t) {
  return (t >= 1 && t <= 264 && t != 41) || t == 32768 || t == 32769 || (t >= 65280 && t <= 65534);
}

// IN, CH, HS, NONE, ANY (top bit: mDNS unicast-response).
bool sane_qclass(uint16_t c) {
  c &= 0x7FFF;
  return c == 1 || c == 3 || c == 4 || c == 254 || c == 255;
}

}  // namespace

ParseResult parse_dns(std::span<const uint8_t> msg, DnsMessage& out, const DnsLimits& limits) {
  const ParseResult invalid{ParseStatus::Invalid, msg.size()};
  const size_t n = msg.size();
  if (n < kHeaderSize) return invalid;
  const uint8_t* p = msg.data();
  const Msg m{p, n, limits.max_name_hops};

  out.id = be16(p);
  const uint8_t f1 = p[2], f2 = p[3];
  out.is_response = (f1 & 0x80) != 0;
  out.opcode = static_cast<uint8_t>((f1 >> 3) & 0x0F);
  out.authoritative = (f1 & 0x04) != 0;
  out.truncated = (f1 & 0x02) != 0;
  out.recursion_desired = (f1 & 0x01) != 0;
  out.recursion_available = (f2 & 0x80) != 0;
  out.rcode = static_cast<uint8_t>(f2 & 0x0F);
  const size_t qdcount = be16(p + 4), ancount = be16(p + 6);
  out.authority_count = be16(p + 8);
  out.additional_count = be16(p + 10);
  out.records_truncated = false;

  // Counts that cannot fit in the bytes present are rejected before any
  // work (and before anything is sized from them), unless the sender said
  // it cut the message short (TC): then what is there is kept.
  const size_t min_body = qdcount * kMinQuestion + (ancount + out.authority_count + out.additional_count) * kMinRecord;
  if (!out.truncated && min_body > n - kHeaderSize) return invalid;

  size_t kept = 0;  // questions + answers stored, against max_records
  size_t nq = 0, na = 0;
  size_t pos = kHeaderSize;
  bool cut = false;  // ran out of bytes in a TC message

  auto finish = [&](ParseStatus s) {
    out.questions.resize(nq);
    out.answers.resize(na);
    return ParseResult{s, n};
  };

  if (qdcount > 0)
    out.questions.reserve(std::min({qdcount, limits.max_records, (n - kHeaderSize) / kMinQuestion}));
  for (size_t i = 0; i < qdcount; i++) {
    const bool keep = kept < limits.max_records;
    DnsQuestion* q = keep ? &next_slot(out.questions, nq) : nullptr;
    size_t after = 0;
    Err e = read_name(m, pos, after, q ? &q->name : nullptr);
    if (e == Err::Ok && n - after < 4) e = Err::Short;
    if (e != Err::Ok) {
      if (q) nq--;
      if (e == Err::Short && out.truncated) {
        cut = true;
        break;
      }
      return finish(ParseStatus::Invalid);
    }
    if (q) {
      q->qtype = be16(p + after);
      q->qclass = be16(p + after + 2);
      kept++;
    } else {
      out.records_truncated = true;
    }
    pos = after + 4;
  }

  const size_t nrecords = ancount + out.authority_count + out.additional_count;
  if (!cut && ancount > 0 && kept < limits.max_records)
    out.answers.reserve(std::min({ancount, limits.max_records - kept, (n - pos) / kMinRecord}));
  for (size_t i = 0; i < nrecords && !cut; i++) {
    const bool answer = i < ancount;
    const bool keep = answer && kept < limits.max_records;
    DnsAnswer* a = keep ? &next_slot(out.answers, na) : nullptr;
    size_t after = 0;
    Err e = read_name(m, pos, after, a ? &a->name : nullptr);
    size_t rdlen = 0;
    if (e == Err::Ok) {
      if (n - after < 10) {
        e = Err::Short;
      } else {
        rdlen = be16(p + after + 8);
        if (n - after - 10 < rdlen) e = Err::Short;
      }
    }
    if (e == Err::Ok && a) {
      a->type = be16(p + after);
      a->rclass = be16(p + after + 2);
      a->ttl = be32(p + after + 4);
      e = render_rdata(m, a->type, a->rclass, after + 10, rdlen, a->data);
      if (e == Err::Ok) kept++;
    }
    if (e != Err::Ok) {
      if (a) na--;
      if (e == Err::Short && out.truncated) break;
      return finish(ParseStatus::Invalid);
    }
    if (answer && !a) out.records_truncated = true;
    pos = after + 10 + rdlen;
  }
  // Bytes after the last record are tolerated (some stacks pad).
  return finish(ParseStatus::Done);
}

ParseResult parse_dns_tcp(std::span<const uint8_t> stream, DnsMessage& out, const DnsLimits& limits) {
  if (stream.size() < 2) return {ParseStatus::NeedMoreData, 0};
  const size_t len = be16(stream.data());
  if (len == 0) return {ParseStatus::Invalid, 2};
  if (stream.size() - 2 < len) return {ParseStatus::NeedMoreData, 0};
  ParseResult r = parse_dns(stream.subspan(2, len), out, limits);
  return {r.status == ParseStatus::Done ? ParseStatus::Done : ParseStatus::Invalid, 2 + len};
}

std::string dns_type_name(uint16_t type) {
  // IANA "Resource Record (RR) TYPEs" (255 is "*" there; dig and tshark say ANY).
  static constexpr std::array<const char*, 67> kLow = {
      nullptr,  "A",      "NS",      "MD",         "MF",     "CNAME",   "SOA",        "MB",
      "MG",     "MR",     "NULL",    "WKS",        "PTR",    "HINFO",   "MINFO",      "MX",
      "TXT",    "RP",     "AFSDB",   "X25",        "ISDN",   "RT",      "NSAP",       "NSAP-PTR",
      "SIG",    "KEY",    "PX",      "GPOS",       "AAAA",   "LOC",     "NXT",        "EID",
      "NIMLOC", "SRV",    "ATMA",    "NAPTR",      "KX",     "CERT",    "A6",         "DNAME",
      "SINK",   "OPT",    "APL",     "DS",         "SSHFP",  "IPSECKEY", "RRSIG",     "NSEC",
      "DNSKEY", "DHCID",  "NSEC3",   "NSEC3PARAM", "TLSA",   "SMIMEA",  nullptr,      "HIP",
      "NINFO",  "RKEY",   "TALINK",  "CDS",        "CDNSKEY", "OPENPGPKEY", "CSYNC", "ZONEMD",
      "SVCB",   "HTTPS",  "DSYNC"};
  static constexpr std::array<const char*, 10> k99 = {"SPF", "UINFO", "UID", "GID", "UNSPEC",
                                                       "NID", "L32",   "L64", "LP",  "EUI48"};
  static constexpr std::array<const char*, 16> k249 = {"TKEY", "TSIG", "IXFR", "AXFR",   "MAILB", "MAILA",
                                                       "ANY",  "URI",  "CAA",  "AVC",    "DOA",   "AMTRELAY",
                                                       "RESINFO", "WALLET", "CLA", "IPN"};
  const char* s = nullptr;
  if (type < kLow.size())
    s = kLow[type];
  else if (type >= 99 && type < 99 + k99.size())
    s = k99[type - 99];
  else if (type == 109)
    s = "EUI64";
  else if (type == 128)
    s = "NXNAME";
  else if (type >= 249 && type < 249 + k249.size())
    s = k249[type - 249];
  else if (type == 32768)
    s = "TA";
  else if (type == 32769)
    s = "DLV";
  if (s) return s;
  std::string r = "TYPE";
  append_uint(r, type);
  return r;
}

std::string dns_rcode_name(uint8_t rcode) {
  // IANA "DNS RCODEs"; 16-23 only reach a message through EDNS/TSIG.
  static constexpr std::array<const char*, 24> kNames = {
      "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP",  "REFUSED", "YXDOMAIN", "YXRRSET",
      "NXRRSET", "NOTAUTH", "NOTZONE",  "DSOTYPENI", nullptr,  nullptr,   nullptr,    nullptr,
      "BADVERS", "BADKEY",  "BADTIME",  "BADMODE",  "BADNAME", "BADALG",  "BADTRUNC", "BADCOOKIE"};
  if (rcode < kNames.size() && kNames[rcode]) return kNames[rcode];
  std::string r = "RCODE";
  append_uint(r, rcode);
  return r;
}

bool looks_like_dns(std::span<const uint8_t> msg) {
  const size_t n = msg.size();
  if (n < kHeaderSize + kMinQuestion) return false;
  const uint8_t* p = msg.data();
  const bool response = (p[2] & 0x80) != 0;
  const unsigned opcode = (p[2] >> 3) & 0x0F;
  const unsigned rcode = p[3] & 0x0F;
  const bool z = (p[3] & 0x40) != 0;
  const size_t qd = be16(p + 4), an = be16(p + 6), ns = be16(p + 8), ar = be16(p + 10);
  // QUERY, IQUERY, STATUS, NOTIFY, UPDATE (3 is unassigned).
  if (opcode > 5 || opcode == 3) return false;
  if (!response) {
    if (z || rcode != 0) return false;
    // A standard query carries no answers; IXFR puts an SOA in authority,
    // EDNS and TSIG go in additional.
    if (opcode == 0 && (an != 0 || ns > 1 || ar > 2)) return false;
  }
  if (qd == 0) {
    // Error responses may drop the question (FORMERR, NOTIMP, REFUSED).
    return response && rcode >= 1 && rcode <= 5 && an == 0 && ns == 0 && ar <= 1;
  }
  if (qd > 4) return false;
  // Monotone in n: more bytes (a TCP buffer holding more) never turn it false.
  if (kHeaderSize + qd * kMinQuestion + (an + ns + ar) * kMinRecord > n) return false;
  const Msg m{p, n, 8};
  size_t after = 0;
  if (read_name(m, kHeaderSize, after, nullptr) != Err::Ok || n - after < 4) return false;
  return sane_qtype(be16(p + after)) && sane_qclass(be16(p + after + 2));
}

}  // namespace tapwire::proto
