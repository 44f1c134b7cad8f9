#include "mongodb/wire.hpp"

#include <bson/bson.h>
#include <snappy.h>
#include <zlib.h>
#include <zstd.h>

#include <charconv>
#include <cmath>
#include <cstring>
#include <ctime>

#include "body/body_text.hpp"
#include "json_out.hpp"
#include "parse.hpp"

namespace tapwire::proto {
namespace {

constexpr size_t kMaxName = 128;  // command, database, codeName kept
constexpr size_t kMaxCollection = 256;
constexpr size_t kMaxErrmsg = 1024;
constexpr size_t kMaxDocsCounted = 100000;  // documents of a sequence or reply walked

std::string capped(std::string_view s, size_t n) { return std::string(s.substr(0, n)); }

// A C string inside [p, end): its length, or -1 without a NUL.
int64_t cstring_len(const uint8_t* p, const uint8_t* end) {
  const void* z = std::memchr(p, 0, static_cast<size_t>(end - p));
  return z ? static_cast<const uint8_t*>(z) - p : -1;
}

// ------------------------------------------------------------ BSON → JSON --

// Writes documents with caps: JSON text at most `limit` bytes past `start`
// (an element that would pass it is taken back and the writer stops), depth
// at most max_depth (deeper documents are written empty). Elements come
// from libbson's iterator, which checks every length against its parent.
class BsonJson {
 public:
  BsonJson(std::string& out, const MongoLimits& lim)
      : out_(out), j_(out), start_(out.size()), lim_(lim) {}

  bool corrupt = false;  // an element did not parse: stopped there
  bool truncated = false;  // a cap was reached: stopped there (or elided deeper levels)
  bool full() const { return stop_; }

  // The members of document `b` (already inside an open object or array).
  void members(const uint8_t* data, size_t len, bool array, size_t depth) {
    bson_iter_t it;
    if (!bson_iter_init_from_data(&it, data, len)) {
      corrupt = true;
      return;
    }
    members(&it, array, depth);
  }
  JsonOut& json() { return j_; }
  // Where the next element may write up to.
  bool over() const { return out_.size() - start_ > lim_.max_json; }

  // One whole element value written as an array item (the caller opened the array).
  void document(const uint8_t* data, size_t len, size_t depth) {
    if (stop_) return;
    const size_t mark = out_.size();
    j_.begin_object();
    members(data, len, false, depth + 1);
    j_.end_object();
    if (over()) rollback(mark);
  }

 private:
  std::string& out_;
  JsonOut j_;
  size_t start_;
  const MongoLimits& lim_;
  bool stop_ = false;

  void rollback(size_t mark) {
    out_.resize(mark);
    truncated = true;
    stop_ = true;
  }
  size_t room() const {
    const size_t used = out_.size() - start_;
    return used < lim_.max_json ? lim_.max_json - used : 0;
  }
  std::string_view cut(const char* s, size_t n) { return std::string_view(s, std::min(n, room())); }

  void members(bson_iter_t* it, bool array, size_t depth) {
    while (!stop_ && bson_iter_next(it)) {
      const size_t mark = out_.size();
      if (!array) j_.key(cut(bson_iter_key(it), bson_iter_key_len(it)));
      value(it, depth);
      if (over()) rollback(mark);
    }
    if (!stop_ && it->err_off) corrupt = true;
    if (corrupt) stop_ = true;
  }

  void number_double(double v) {
    if (std::isfinite(v)) {
      char buf[64];
      auto r = std::to_chars(buf, buf + sizeof buf, v);
      j_.raw(std::string_view(buf, static_cast<size_t>(r.ptr - buf)));
      return;
    }
    j_.begin_object();
    j_.field("$numberDouble", std::isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
    j_.end_object();
  }

  void nested(const uint8_t* data, size_t len, bool array, size_t depth) {
    array ? j_.begin_array() : j_.begin_object();
    if (depth >= lim_.max_depth)
      truncated = true;  // written empty
    else
      members(data, len, array, depth + 1);
    array ? j_.end_array() : j_.end_object();
  }

  void value(bson_iter_t* it, size_t depth) {
    switch (bson_iter_type(it)) {
      case BSON_TYPE_DOUBLE:
        number_double(bson_iter_double(it));
        break;
      case BSON_TYPE_UTF8: {
        uint32_t n = 0;
        const char* s = bson_iter_utf8(it, &n);
        if (n > room()) truncated = true;
        j_.string(cut(s, n));
        break;
      }
      case BSON_TYPE_DOCUMENT:
      case BSON_TYPE_ARRAY: {
        uint32_t n = 0;
        const uint8_t* d = nullptr;
        const bool array = bson_iter_type(it) == BSON_TYPE_ARRAY;
        if (array)
          bson_iter_array(it, &n, &d);
        else
          bson_iter_document(it, &n, &d);
        if (!d) {
          corrupt = true;
          j_.null();
          break;
        }
        nested(d, n, array, depth);
        break;
      }
      case BSON_TYPE_BINARY: {
        bson_subtype_t sub = BSON_SUBTYPE_BINARY;
        uint32_t n = 0;
        const uint8_t* d = nullptr;
        bson_iter_binary(it, &sub, &n, &d);
        const size_t keep = std::min<size_t>(n, room() / 4 * 3);
        if (keep < n) truncated = true;
        char st[8];
        std::snprintf(st, sizeof st, "%02x", static_cast<unsigned>(sub) & 0xff);
        j_.begin_object();
        j_.key("$binary");
        j_.begin_object();
        j_.field("base64", d ? base64_encode({d, keep}) : std::string());
        j_.field("subType", st);
        j_.end_object();
        j_.end_object();
        break;
      }
      case BSON_TYPE_UNDEFINED:
        j_.begin_object();
        j_.field("$undefined", true);
        j_.end_object();
        break;
      case BSON_TYPE_OID: {
        char hex[25];
        bson_oid_to_string(bson_iter_oid(it), hex);
        j_.begin_object();
        j_.field("$oid", hex);
        j_.end_object();
        break;
      }
      case BSON_TYPE_BOOL:
        j_.boolean(bson_iter_bool(it));
        break;
      case BSON_TYPE_DATE_TIME:
        date(bson_iter_date_time(it));
        break;
      case BSON_TYPE_NULL:
        j_.null();
        break;
      case BSON_TYPE_REGEX: {
        const char* opts = nullptr;
        const char* re = bson_iter_regex(it, &opts);
        j_.begin_object();
        j_.key("$regularExpression");
        j_.begin_object();
        j_.field("pattern", re ? cut(re, std::strlen(re)) : std::string_view());
        j_.field("options", opts ? opts : "");
        j_.end_object();
        j_.end_object();
        break;
      }
      case BSON_TYPE_DBPOINTER: {
        uint32_t n = 0;
        const char* coll = nullptr;
        const bson_oid_t* oid = nullptr;
        bson_iter_dbpointer(it, &n, &coll, &oid);
        char hex[25] = "";
        if (oid) bson_oid_to_string(oid, hex);
        j_.begin_object();
        j_.key("$dbPointer");
        j_.begin_object();
        j_.field("$ref", coll ? cut(coll, n) : std::string_view());
        j_.key("$id");
        j_.begin_object();
        j_.field("$oid", hex);
        j_.end_object();
        j_.end_object();
        j_.end_object();
        break;
      }
      case BSON_TYPE_CODE:
      case BSON_TYPE_SYMBOL: {
        uint32_t n = 0;
        const bool code = bson_iter_type(it) == BSON_TYPE_CODE;
        const char* s = code ? bson_iter_code(it, &n) : bson_iter_symbol(it, &n);
        j_.begin_object();
        j_.field(code ? "$code" : "$symbol", s ? cut(s, n) : std::string_view());
        j_.end_object();
        break;
      }
      case BSON_TYPE_CODEWSCOPE: {
        uint32_t n = 0, scope_len = 0;
        const uint8_t* scope = nullptr;
        const char* s = bson_iter_codewscope(it, &n, &scope_len, &scope);
        j_.begin_object();
        j_.field("$code", s ? cut(s, n) : std::string_view());
        if (scope) {
          j_.key("$scope");
          nested(scope, scope_len, false, depth);
        } else {
          corrupt = true;
        }
        j_.end_object();
        break;
      }
      case BSON_TYPE_INT32:
        j_.number(bson_iter_int32(it));
        break;
      case BSON_TYPE_TIMESTAMP: {
        uint32_t t = 0, i = 0;
        bson_iter_timestamp(it, &t, &i);
        j_.begin_object();
        j_.key("$timestamp");
        j_.begin_object();
        j_.field("t", t);
        j_.field("i", i);
        j_.end_object();
        j_.end_object();
        break;
      }
      case BSON_TYPE_INT64:
        j_.number(bson_iter_int64(it));
        break;
      case BSON_TYPE_DECIMAL128: {
        bson_decimal128_t d;
        char s[BSON_DECIMAL128_STRING];
        if (!bson_iter_decimal128(it, &d)) {
          corrupt = true;
          j_.null();
          break;
        }
        bson_decimal128_to_string(&d, s);
        j_.begin_object();
        j_.field("$numberDecimal", s);
        j_.end_object();
        break;
      }
      case BSON_TYPE_MAXKEY:
      case BSON_TYPE_MINKEY:
        j_.begin_object();
        j_.field(bson_iter_type(it) == BSON_TYPE_MAXKEY ? "$maxKey" : "$minKey", 1);
        j_.end_object();
        break;
      default:  // bson_iter_next stops at unknown types: not reached
        corrupt = true;
        j_.null();
        break;
    }
  }

  // Relaxed Extended JSON: ISO-8601 for years 1970 to 9999, else milliseconds.
  void date(int64_t ms) {
    j_.begin_object();
    if (ms >= 0 && ms < 253402300800000) {
      const time_t secs = static_cast<time_t>(ms / 1000);
      struct tm tm{};
      gmtime_r(&secs, &tm);
      char buf[96];
      std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                    tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
      j_.field("$date", buf);
    } else {
      j_.key("$date");
      j_.begin_object();
      j_.field("$numberLong", std::to_string(ms));
      j_.end_object();
    }
    j_.end_object();
  }
};

// A document's bytes as libbson can take them: the whole document when
// present, else (a document cut by the kept prefix) a copy whose length
// says what is there, closed with the terminating zero; the element cut in
// the middle then fails its own length check and ends the walk.
struct DocView {
  const uint8_t* data = nullptr;
  size_t len = 0;
  bool cut = false;
  std::vector<uint8_t> copy;
};

bool doc_view(std::span<const uint8_t> b, DocView& v) {
  if (b.size() < 5) {
    if (b.size() < 4) return false;
  }
  const int32_t declared = mongo_i32(b.data());
  if (declared < 5) return false;
  if (static_cast<size_t>(declared) <= b.size()) {
    v.data = b.data();
    v.len = static_cast<size_t>(declared);
    return true;
  }
  v.cut = true;
  v.copy.assign(b.begin(), b.end());
  v.copy.push_back(0);
  const uint32_t n = static_cast<uint32_t>(v.copy.size());
  for (int i = 0; i < 4; i++) v.copy[static_cast<size_t>(i)] = static_cast<uint8_t>(n >> (8 * i));
  v.data = v.copy.data();
  v.len = v.copy.size();
  return true;
}

struct Section {
  std::span<const uint8_t> doc;  // kept bytes of one document (may be cut)
};

// Commands and reply fields, from the top level of a document.
void take_command(const DocView& d, MongoMessage& m, bool with_collection) {
  bson_iter_t it;
  if (!bson_iter_init_from_data(&it, d.data, d.len)) return;
  bool first = true;
  while (bson_iter_next(&it)) {
    const std::string_view key(bson_iter_key(&it), bson_iter_key_len(&it));
    if (first) {
      m.command = capped(key, kMaxName);
      if (with_collection && BSON_ITER_HOLDS_UTF8(&it)) {
        uint32_t n = 0;
        const char* s = bson_iter_utf8(&it, &n);
        m.collection = capped(std::string_view(s, n), kMaxCollection);
      }
      first = false;
    } else if (key == "$db" && BSON_ITER_HOLDS_UTF8(&it)) {
      uint32_t n = 0;
      const char* s = bson_iter_utf8(&it, &n);
      m.database = capped(std::string_view(s, n), kMaxName);
    }
  }
}

bool number_of(const bson_iter_t* it, double& v) {
  switch (bson_iter_type(it)) {
    case BSON_TYPE_DOUBLE:
      v = bson_iter_double(it);
      return true;
    case BSON_TYPE_INT32:
      v = bson_iter_int32(it);
      return true;
    case BSON_TYPE_INT64:
      v = static_cast<double>(bson_iter_int64(it));
      return true;
    case BSON_TYPE_BOOL:
      v = bson_iter_bool(it) ? 1 : 0;
      return true;
    default:
      return false;
  }
}

void take_code(const bson_iter_t* it, MongoMessage& m) {
  double v = 0;
  if (!number_of(it, v) || !std::isfinite(v) || std::fabs(v) > 9e15) return;
  m.has_code = true;
  m.code = static_cast<int64_t>(v);
}

std::string utf8_of(const bson_iter_t* it, size_t cap) {
  if (!BSON_ITER_HOLDS_UTF8(it)) return {};
  uint32_t n = 0;
  const char* s = bson_iter_utf8(it, &n);
  return capped(std::string_view(s, n), cap);
}

void take_reply(const DocView& d, MongoMessage& m) {
  bson_iter_t it;
  if (!bson_iter_init_from_data(&it, d.data, d.len)) return;
  // The command's own error, and the first write error (writeErrors with ok:1).
  MongoMessage we;
  bool write_error = false, query_failure = false;
  while (bson_iter_next(&it)) {
    const std::string_view key(bson_iter_key(&it), bson_iter_key_len(&it));
    if (key == "ok") {
      m.has_ok = number_of(&it, m.ok);
    } else if (key == "errmsg" || key == "$err") {
      m.errmsg = utf8_of(&it, kMaxErrmsg);
      query_failure = query_failure || key == "$err";
    } else if (key == "code") {
      take_code(&it, m);
    } else if (key == "codeName") {
      m.code_name = utf8_of(&it, kMaxName);
    } else if (key == "writeErrors" && BSON_ITER_HOLDS_ARRAY(&it) && !write_error) {
      bson_iter_t arr, e;
      if (!bson_iter_recurse(&it, &arr) || !bson_iter_next(&arr) || !BSON_ITER_HOLDS_DOCUMENT(&arr) ||
          !bson_iter_recurse(&arr, &e))
        continue;
      write_error = true;
      while (bson_iter_next(&e)) {
        const std::string_view k(bson_iter_key(&e), bson_iter_key_len(&e));
        if (k == "code") take_code(&e, we);
        else if (k == "errmsg") we.errmsg = utf8_of(&e, kMaxErrmsg);
        else if (k == "codeName") we.code_name = utf8_of(&e, kMaxName);
      }
    }
  }
  const bool failed = (m.has_ok && m.ok == 0) || query_failure;
  if (failed) {
    m.has_error = true;
  } else if (write_error) {
    m.has_error = true;
    m.has_code = we.has_code;
    m.code = we.code;
    m.errmsg = std::move(we.errmsg);
    m.code_name = std::move(we.code_name);
  }
}

// The document JSON: the body's members, then each sequence as an array
// under its identifier (as the server sees them: OP_MSG spec, "Kind 1").
struct SeqDocs {
  std::string_view identifier;
  std::vector<std::span<const uint8_t>> docs;
};

void document_json(MongoMessage& m, const DocView* body, const std::vector<SeqDocs>& seqs, const MongoLimits& lim) {
  BsonJson w(m.document, lim);
  w.json().begin_object();
  if (body) w.members(body->data, body->len, false, 1);
  for (const SeqDocs& s : seqs) {
    if (w.full() || w.corrupt) break;
    const size_t mark = m.document.size();
    w.json().key(s.identifier.substr(0, kMaxName));
    w.json().begin_array();
    for (auto d : s.docs) {
      DocView v;
      if (!doc_view(d, v)) break;
      w.document(v.data, v.len, 1);
      if (v.cut) w.truncated = true;
      if (w.full()) break;
    }
    w.json().end_array();
    if (w.over()) {
      m.document.resize(mark);
      w.truncated = true;
      break;
    }
  }
  w.json().end_object();
  if (w.truncated || (body && body->cut)) m.document_truncated = true;
  // A document cut by the kept prefix ends in a broken element: that is the cut, not corruption.
  bool cut = body && body->cut;
  for (const SeqDocs& sq : seqs)
    for (auto d : sq.docs) cut = cut || (d.size() >= 4 && static_cast<size_t>(mongo_i32(d.data())) > d.size());
  if (w.corrupt && !cut && !m.protocol_error) {
    m.protocol_error = true;
    m.error = "corrupt BSON document";
  }
}

// Documents one after the other in [p, end): their kept spans (cut at the
// end when the bytes stop), counted.
std::vector<std::span<const uint8_t>> doc_run(const uint8_t* p, const uint8_t* end, const uint8_t* declared_end,
                                              uint32_t& count, bool& bad, size_t keep_spans) {
  std::vector<std::span<const uint8_t>> out;
  while (p < end && count < kMaxDocsCounted) {
    if (end - p < 4) break;  // cut inside a length
    const int32_t n = mongo_i32(p);
    if (n < 5 || n > declared_end - p) {
      bad = true;
      break;
    }
    count++;
    const size_t have = std::min<size_t>(static_cast<size_t>(n), static_cast<size_t>(end - p));
    if (out.size() < keep_spans) out.emplace_back(p, have);
    p += n;
  }
  return out;
}

// ---------------------------------------------------------- decompression --

// Undoes OP_COMPRESSED's compression of `in` into at most `cap` bytes.
// `in_complete`: the whole compressed payload is there. Returns false on an
// error (unknown compressor, corrupt data); `cut`: output stopped at the cap
// or the input ended early.
bool decompress(uint8_t compressor, std::span<const uint8_t> in, bool in_complete, size_t cap, std::string& out,
                bool& cut, std::string& err) {
  out.clear();
  cut = false;
  switch (compressor) {
    case 0:  // noop
      out.assign(reinterpret_cast<const char*>(in.data()), std::min(in.size(), cap));
      cut = in.size() > cap || !in_complete;
      return true;
    case 1: {  // snappy: needs the whole payload; its own header bounds the output
      if (!in_complete) {
        cut = true;
        return true;  // nothing decoded: the message is longer than what is kept
      }
      size_t n = 0;
      const char* c = reinterpret_cast<const char*>(in.data());
      if (!snappy::GetUncompressedLength(c, in.size(), &n) || n > kMongoMaxMessage) {
        err = "snappy: bad length";
        return false;
      }
      // A snappy copy element yields at most 64 bytes for 2 input bytes:
      // a length past that is a lie, refused before allocating for it.
      if (n > 32 * in.size() + 64) {
        err = "snappy: length beyond what the input can hold";
        return false;
      }
      std::string full(n, '\0');
      if (!snappy::RawUncompress(c, in.size(), full.data())) {
        err = "snappy: corrupt data";
        return false;
      }
      if (full.size() > cap) {
        full.resize(cap);
        cut = true;
      }
      out = std::move(full);
      return true;
    }
    case 2: {  // zlib
      z_stream z{};
      if (inflateInit(&z) != Z_OK) {
        err = "zlib: init";
        return false;
      }
      out.resize(cap);
      z.next_in = const_cast<Bytef*>(in.data());
      z.avail_in = static_cast<uInt>(in.size());
      z.next_out = reinterpret_cast<Bytef*>(out.data());
      z.avail_out = static_cast<uInt>(cap);
      const int rc = inflate(&z, Z_SYNC_FLUSH);
      const size_t got = cap - z.avail_out;
      inflateEnd(&z);
      out.resize(got);
      if (rc == Z_STREAM_END) return true;
      if (rc == Z_OK || rc == Z_BUF_ERROR) {
        cut = true;  // the cap, or the input ended first
        if (in_complete && z.avail_out != 0) {
          err = "zlib: stream ends early";
          return false;
        }
        return true;
      }
      err = "zlib: corrupt data";
      return false;
    }
    case 3: {  // zstd
      ZSTD_DStream* ds = ZSTD_createDStream();
      if (!ds) {
        err = "zstd: init";
        return false;
      }
      // Window sizes above 8 MiB would need that much memory: refused.
      ZSTD_DCtx_setParameter(ds, ZSTD_d_windowLogMax, 23);
      out.resize(cap);
      ZSTD_inBuffer ib{in.data(), in.size(), 0};
      ZSTD_outBuffer ob{out.data(), cap, 0};
      size_t rc = 0;
      for (int guard = 0; guard < 1000000 && ob.pos < ob.size; guard++) {
        rc = ZSTD_decompressStream(ds, &ob, &ib);
        if (ZSTD_isError(rc) || rc == 0 || ib.pos == ib.size) break;
      }
      ZSTD_freeDStream(ds);
      out.resize(ob.pos);
      if (ZSTD_isError(rc)) {
        err = std::string("zstd: ") + ZSTD_getErrorName(rc);
        return false;
      }
      if (rc != 0) cut = true;
      return true;
    }
    default:
      err = "unknown compressor " + std::to_string(compressor);
      return false;
  }
}

MongoMessage parse_inner(std::span<const uint8_t> b, bool complete, const MongoLimits& lim, int level);

void fail(MongoMessage& m, std::string why) {
  if (m.protocol_error) return;
  m.protocol_error = true;
  m.error = std::move(why);
}

void parse_compressed(std::span<const uint8_t> b, bool complete, MongoMessage& m, const MongoLimits& lim,
                      int level) {
  if (b.size() < 25) {
    m.truncated = true;
    if (complete) fail(m, "OP_COMPRESSED shorter than its header");
    return;
  }
  const int32_t original = mongo_i32(b.data() + 16);
  const int32_t usize = mongo_i32(b.data() + 20);
  const uint8_t compressor = b[24];
  m.compressed = true;
  m.compressor = compressor;
  if (level > 0 || original == kOpCompressed || !mongo_known_opcode(original) || usize < 0 ||
      static_cast<uint32_t>(usize) > kMongoMaxMessage) {
    fail(m, "OP_COMPRESSED: bad original opcode or size");
    return;
  }
  m.opcode = original;
  std::string plain;
  bool cut = false;
  std::string err;
  const size_t cap = lim.max_message_kept > kMongoHeaderSize ? lim.max_message_kept - kMongoHeaderSize : 0;
  if (!decompress(compressor, b.subspan(25), complete, cap, plain, cut, err)) {
    fail(m, "OP_COMPRESSED: " + err);
    return;
  }
  if (!cut && plain.size() != static_cast<size_t>(usize)) {
    fail(m, "OP_COMPRESSED: uncompressedSize " + std::to_string(usize) + ", got " + std::to_string(plain.size()));
    return;
  }
  // The message it holds, with a header of its own.
  std::vector<uint8_t> inner(kMongoHeaderSize + plain.size());
  const uint32_t ilen = static_cast<uint32_t>(usize) + kMongoHeaderSize;
  std::memcpy(inner.data(), b.data(), kMongoHeaderSize);
  for (int i = 0; i < 4; i++) inner[static_cast<size_t>(i)] = static_cast<uint8_t>(ilen >> (8 * i));
  for (int i = 0; i < 4; i++) inner[12 + static_cast<size_t>(i)] = static_cast<uint8_t>(static_cast<uint32_t>(original) >> (8 * i));
  std::memcpy(inner.data() + kMongoHeaderSize, plain.data(), plain.size());
  MongoMessage in = parse_inner(inner, !cut, lim, level + 1);
  const uint32_t wire = m.length;
  m = std::move(in);
  m.length = wire;
  m.compressed = true;
  m.compressor = compressor;
  if (cut) m.truncated = true;
}

void parse_msg(std::span<const uint8_t> b, bool complete, MongoMessage& m, const MongoLimits& lim) {
  if (b.size() < 21) {
    m.truncated = true;
    if (complete) fail(m, "OP_MSG shorter than flags and a section");
    return;
  }
  m.msg_flags = mongo_u32(b.data() + 16);
  if (m.msg_flags & 0xfffcu) fail(m, "OP_MSG: unknown required flag bits");
  const size_t limit = m.length - ((m.msg_flags & kMsgChecksumPresent) ? 4 : 0);  // where sections end
  if (limit < 21) {
    fail(m, "OP_MSG: no room for a section");
    return;
  }
  const uint8_t* base = b.data();
  const uint8_t* end = base + std::min(b.size(), limit);  // kept section bytes
  const uint8_t* declared_end = base + limit;
  const uint8_t* p = base + 20;
  DocView body;
  bool have_body = false;
  std::vector<SeqDocs> seqs;
  while (p < end) {
    const uint8_t kind = *p++;
    if (kind == 0) {
      if (end - p < 4) break;  // cut
      const int32_t n = mongo_i32(p);
      if (n < 5 || n > declared_end - p) {
        fail(m, "OP_MSG: body document length " + std::to_string(n) + " outside the message");
        break;
      }
      if (have_body) {
        fail(m, "OP_MSG: two body sections");
      } else {
        const size_t have = std::min<size_t>(static_cast<size_t>(n), static_cast<size_t>(end - p));
        have_body = doc_view({p, have}, body);
      }
      p += n;
    } else if (kind == 1) {
      if (end - p < 4) break;
      const int32_t size = mongo_i32(p);
      if (size < 5 || size > declared_end - p) {
        fail(m, "OP_MSG: document sequence size " + std::to_string(size) + " outside the message");
        break;
      }
      const uint8_t* sec_end_declared = p + size;
      const uint8_t* sec_end = std::min(sec_end_declared, end);
      const int64_t idn = cstring_len(p + 4, sec_end);
      if (idn < 0) {
        if (sec_end == sec_end_declared) fail(m, "OP_MSG: sequence identifier not terminated");
        break;
      }
      MongoSequence seq;
      seq.identifier = capped(std::string_view(reinterpret_cast<const char*>(p + 4), static_cast<size_t>(idn)), kMaxName);
      bool bad = false;
      SeqDocs sd;
      sd.identifier = std::string_view(reinterpret_cast<const char*>(p + 4), static_cast<size_t>(idn));
      sd.docs = doc_run(p + 5 + idn, sec_end, sec_end_declared, seq.count, bad, 64);
      if (bad) fail(m, "OP_MSG: document length outside its sequence");
      seq.truncated = sec_end < sec_end_declared;
      if (m.sequences.size() < lim.max_sequences) {
        m.sequences.push_back(std::move(seq));
        seqs.push_back(std::move(sd));
      }
      p = sec_end_declared;
    } else {
      fail(m, "OP_MSG: unknown section kind " + std::to_string(kind));
      break;
    }
  }
  if (complete && !m.protocol_error && p != declared_end) fail(m, "OP_MSG: sections do not fill the message");
  if (!have_body && !m.protocol_error && complete) fail(m, "OP_MSG without a body section");
  if (have_body) {
    if (m.response_to == 0) take_command(body, m, true);
    else take_reply(body, m);
    // Replies hold their answer; a request's sequence arrays go with it.
  }
  document_json(m, have_body ? &body : nullptr, seqs, lim);
  // The first document key of a response is not a command.
  if (m.response_to != 0) m.command.clear();
}

// OP_QUERY on "db.$cmd": the command is the query's first key (or that of
// the query wrapped in $query / query); on "db.coll": a find on coll.
void parse_query(std::span<const uint8_t> b, bool complete, MongoMessage& m, const MongoLimits& lim) {
  const uint8_t* base = b.data();
  const uint8_t* end = base + b.size();
  if (b.size() < 21) {
    m.truncated = true;
    if (complete) fail(m, "OP_QUERY too short");
    return;
  }
  m.query_flags = mongo_i32(base + 16);
  const int64_t n = cstring_len(base + 20, end);
  if (n < 0) {
    m.truncated = true;
    if (complete) fail(m, "OP_QUERY: collection name not terminated");
    return;
  }
  m.full_collection_name = capped(std::string_view(reinterpret_cast<const char*>(base + 20), static_cast<size_t>(n)), kMaxCollection);
  const std::string_view full(reinterpret_cast<const char*>(base + 20), static_cast<size_t>(n));
  const size_t dot = full.find('.');
  m.database = capped(full.substr(0, dot), kMaxName);
  const std::string_view coll = dot == std::string_view::npos ? std::string_view() : full.substr(dot + 1);
  const size_t off = 20 + static_cast<size_t>(n) + 1 + 8;  // numberToSkip, numberToReturn
  DocView q;
  const bool room = off + 4 <= b.size();
  if (!room || !doc_view(b.subspan(off), q) || static_cast<int64_t>(mongo_i32(base + off)) > int64_t{m.length} - int64_t(off)) {
    if (room) fail(m, "OP_QUERY: bad query document");
    m.truncated = !complete;
    document_json(m, nullptr, {}, lim);
    return;
  }
  if (coll == "$cmd") {
    take_command(q, m, true);
    if (m.command == "$query" || m.command == "query") {  // wrapped: the command is inside
      bson_iter_t it, in;
      if (bson_iter_init_from_data(&it, q.data, q.len) && bson_iter_next(&it) && BSON_ITER_HOLDS_DOCUMENT(&it) &&
          bson_iter_recurse(&it, &in) && bson_iter_next(&in)) {
        m.command = capped(std::string_view(bson_iter_key(&in), bson_iter_key_len(&in)), kMaxName);
        m.collection = BSON_ITER_HOLDS_UTF8(&in) ? utf8_of(&in, kMaxCollection) : std::string();
      }
    }
    m.database = capped(full.substr(0, dot), kMaxName);  // $db is not used with OP_QUERY
  } else {
    m.command = "find";
    m.collection = capped(coll, kMaxCollection);
  }
  document_json(m, &q, {}, lim);
}

void parse_reply(std::span<const uint8_t> b, bool complete, MongoMessage& m, const MongoLimits& lim) {
  const uint8_t* base = b.data();
  if (b.size() < 36) {
    m.truncated = true;
    if (complete) fail(m, "OP_REPLY too short");
    return;
  }
  m.query_flags = mongo_i32(base + 16);
  std::memcpy(&m.cursor_id, base + 20, 8);  // little-endian host, as the wire
  m.starting_from = mongo_i32(base + 28);
  m.number_returned = mongo_i32(base + 32);
  bool bad = false;
  auto docs = doc_run(base + 36, base + b.size(), base + m.length, m.documents, bad, 1);
  if (bad) fail(m, "OP_REPLY: document length outside the message");
  DocView first;
  const bool have = !docs.empty() && doc_view(docs[0], first);
  if (have) take_reply(first, m);
  if (m.query_flags & 2) m.has_error = true;  // QueryFailure: the document is {$err, code}
  document_json(m, have ? &first : nullptr, {}, lim);
}

// OP_INSERT, OP_UPDATE, OP_DELETE, OP_GET_MORE: a collection name, and the
// first document they carry.
void parse_legacy(std::span<const uint8_t> b, bool complete, MongoMessage& m, const MongoLimits& lim) {
  const uint8_t* base = b.data();
  const uint8_t* end = base + b.size();
  if (m.opcode == kOpKillCursors) {
    if (complete && (b.size() < 24 || static_cast<int64_t>(m.length) != 24 + 8 * int64_t{mongo_i32(base + 20)}))
      fail(m, "OP_KILL_CURSORS: cursor count does not match the length");
    return;
  }
  if (b.size() < 21) {
    m.truncated = true;
    if (complete) fail(m, std::string(mongo_op_name(m.opcode)) + " too short");
    return;
  }
  const int64_t n = cstring_len(base + 20, end);
  if (n < 0) {
    m.truncated = true;
    if (complete) fail(m, std::string(mongo_op_name(m.opcode)) + ": collection name not terminated");
    return;
  }
  const std::string_view full(reinterpret_cast<const char*>(base + 20), static_cast<size_t>(n));
  m.full_collection_name = capped(full, kMaxCollection);
  const size_t dot = full.find('.');
  m.database = capped(full.substr(0, dot), kMaxName);
  if (dot != std::string_view::npos) m.collection = capped(full.substr(dot + 1), kMaxCollection);
  if (m.opcode == kOpGetMore) return;
  const size_t off = 20 + static_cast<size_t>(n) + 1 + ((m.opcode == kOpUpdate || m.opcode == kOpDelete) ? 4 : 0);
  if (off >= b.size()) return;
  const uint8_t* p = base + off;
  bool bad = false;
  uint32_t count = 0;
  auto docs = doc_run(p, end, base + m.length, count, bad, 1);
  if (m.opcode == kOpInsert) m.documents = count;
  if (bad) fail(m, std::string(mongo_op_name(m.opcode)) + ": document length outside the message");
  DocView first;
  const bool have = !docs.empty() && doc_view(docs[0], first);
  if (have) document_json(m, &first, {}, lim);
}

MongoMessage parse_inner(std::span<const uint8_t> b, bool complete, const MongoLimits& lim, int level) {
  MongoMessage m;
  if (b.size() < kMongoHeaderSize) {
    m.truncated = true;
    fail(m, "message shorter than its header");
    return m;
  }
  m.length = mongo_u32(b.data());
  m.request_id = mongo_i32(b.data() + 4);
  m.response_to = mongo_i32(b.data() + 8);
  m.opcode = mongo_i32(b.data() + 12);
  if (m.length < kMongoHeaderSize || m.length > kMongoMaxMessage || b.size() > m.length) {
    fail(m, "bad messageLength " + std::to_string(m.length));
    return m;
  }
  if (!complete) m.truncated = true;
  switch (m.opcode) {
    case kOpMsg:
      parse_msg(b, complete, m, lim);
      break;
    case kOpQuery:
      parse_query(b, complete, m, lim);
      break;
    case kOpReply:
      parse_reply(b, complete, m, lim);
      break;
    case kOpCompressed:
      parse_compressed(b, complete, m, lim, level);
      break;
    case kOpInsert:
    case kOpUpdate:
    case kOpDelete:
    case kOpGetMore:
    case kOpKillCursors:
      parse_legacy(b, complete, m, lim);
      break;
    default:
      fail(m, "unknown opcode " + std::to_string(m.opcode));
      break;
  }
  return m;
}

}  // namespace

const char* mongo_op_name(int32_t op) {
  switch (op) {
    case kOpReply: return "OP_REPLY";
    case kOpUpdate: return "OP_UPDATE";
    case kOpInsert: return "OP_INSERT";
    case kOpQuery: return "OP_QUERY";
    case kOpGetMore: return "OP_GET_MORE";
    case kOpDelete: return "OP_DELETE";
    case kOpKillCursors: return "OP_KILL_CURSORS";
    case kOpCompressed: return "OP_COMPRESSED";
    case kOpMsg: return "OP_MSG";
    default: return "OP_UNKNOWN";
  }
}

bool mongo_known_opcode(int32_t op) { return std::string_view(mongo_op_name(op)) != "OP_UNKNOWN"; }

size_t MongoMessage::heap_bytes() const {
  size_t n = vector_heap_bytes(sequences) + string_heap_bytes(full_collection_name) + string_heap_bytes(command) +
             string_heap_bytes(database) + string_heap_bytes(collection) + string_heap_bytes(document) +
             string_heap_bytes(errmsg) + string_heap_bytes(code_name) + string_heap_bytes(error);
  for (const auto& s : sequences) n += string_heap_bytes(s.identifier);
  return n;
}

bool mongo_header_plausible(std::span<const uint8_t> h) {
  if (h.size() < kMongoHeaderSize) return false;
  const uint32_t len = mongo_u32(h.data());
  const int32_t op = mongo_i32(h.data() + 12);
  return len >= kMongoHeaderSize + 4 && len <= kMongoMaxMessage && mongo_known_opcode(op);
}

MongoShape mongo_shape(std::span<const uint8_t> b) {
  using S = MongoShape;
  if (b.size() >= 4) {
    const uint32_t len = mongo_u32(b.data());
    if (len < kMongoHeaderSize + 4 || len > kMongoMaxMessage) return S::No;
  }
  if (b.size() < kMongoHeaderSize) return S::NeedMore;
  if (!mongo_header_plausible(b)) return S::No;
  const uint32_t len = mongo_u32(b.data());
  const int32_t response_to = mongo_i32(b.data() + 8);
  const int32_t op = mongo_i32(b.data() + 12);
  const uint8_t* p = b.data();
  const size_t have = std::min<size_t>(b.size(), len);
  // A document at `off` whose length must fit in [off, end_declared).
  auto doc_at = [&](size_t off, size_t end_declared) -> S {
    if (off + 5 > end_declared) return S::No;
    if (have < off + 4) return S::NeedMore;
    const int32_t n = mongo_i32(p + off);
    if (n < 5 || static_cast<size_t>(n) > end_declared - off) return S::No;
    if (have >= off + static_cast<size_t>(n) && p[off + static_cast<size_t>(n) - 1] != 0) return S::No;
    return S::Matched;
  };
  switch (op) {
    case kOpMsg: {
      if (have < 21) return S::NeedMore;
      const uint32_t flags = mongo_u32(p + 16);
      if (flags & 0xfffcu) return S::No;
      if (flags & ~(kMsgChecksumPresent | kMsgMoreToCome | kMsgExhaustAllowed)) return S::No;
      const size_t limit = len - ((flags & kMsgChecksumPresent) ? 4 : 0);
      if (limit < 26) return S::No;
      if (p[20] == 0) return doc_at(21, limit);
      if (p[20] != 1) return S::No;
      if (have < 25) return S::NeedMore;
      const int32_t size = mongo_i32(p + 21);
      if (size < 6 || static_cast<size_t>(size) > limit - 21) return S::No;
      return S::Matched;
    }
    case kOpQuery: {
      if (response_to != 0) return S::No;
      if (have < 21) return S::NeedMore;
      if (mongo_u32(p + 16) & ~0xfeu) return S::No;  // bit 0 reserved, bits 1-7 defined
      size_t i = 20;
      for (; i < have && p[i] != 0; i++)
        if (p[i] < 0x20 || p[i] > 0x7e) return S::No;
      if (i >= have) return i - 20 > 255 ? S::No : S::NeedMore;
      if (i == 20) return S::No;
      if (std::memchr(p + 20, '.', i - 20) == nullptr) return S::No;
      if (i + 1 + 8 > len) return S::No;
      return doc_at(i + 1 + 8, len);
    }
    case kOpReply: {
      if (len < 36) return S::No;
      if (have < 36) return S::NeedMore;
      if (mongo_u32(p + 16) & ~0xfu) return S::No;
      const int32_t nret = mongo_i32(p + 32);
      if (nret < 0 || static_cast<uint32_t>(nret) > (len - 36) / 5) return S::No;
      if (nret == 0) return len == 36 ? S::Matched : S::No;
      return doc_at(36, len);
    }
    case kOpCompressed: {
      if (len < 26) return S::No;
      if (have < 25) return S::NeedMore;
      const int32_t original = mongo_i32(p + 16);
      const int32_t usize = mongo_i32(p + 20);
      if (original == kOpCompressed || !mongo_known_opcode(original)) return S::No;
      if (usize < 5 || static_cast<uint32_t>(usize) > kMongoMaxMessage) return S::No;
      if (p[24] > 3) return S::No;
      return S::Matched;
    }
    case kOpKillCursors: {
      if (response_to != 0) return S::No;
      if (have < 24) return S::NeedMore;
      if (mongo_i32(p + 16) != 0) return S::No;
      const int32_t n = mongo_i32(p + 20);
      return n >= 1 && static_cast<int64_t>(len) == 24 + 8 * int64_t{n} ? S::Matched : S::No;
    }
    case kOpInsert:
    case kOpUpdate:
    case kOpDelete:
    case kOpGetMore: {
      if (response_to != 0) return S::No;
      if (have < 21) return S::NeedMore;
      if (op != kOpInsert && mongo_i32(p + 16) != 0) return S::No;  // ZERO
      if (op == kOpInsert && (mongo_u32(p + 16) & ~1u)) return S::No;
      size_t i = 20;
      for (; i < have && p[i] != 0; i++)
        if (p[i] < 0x20 || p[i] > 0x7e) return S::No;
      if (i >= have) return i - 20 > 255 ? S::No : S::NeedMore;
      if (i == 20 || std::memchr(p + 20, '.', i - 20) == nullptr) return S::No;
      if (op == kOpGetMore) return len == i + 1 + 12 ? S::Matched : S::No;
      const size_t doc = i + 1 + (op == kOpInsert ? 0 : 4);
      if (doc + 5 > len) return S::No;
      return doc_at(doc, len);
    }
    default:
      return S::No;
  }
}

MongoMessage parse_mongo_message(std::span<const uint8_t> b, bool complete, const MongoLimits& lim) {
  return parse_inner(b, complete, lim, 0);
}

bool bson_to_json(std::span<const uint8_t> b, std::string& out, const MongoLimits& lim, bool& truncated) {
  DocView v;
  if (!doc_view(b, v)) return false;
  BsonJson w(out, lim);
  w.json().begin_object();
  w.members(v.data, v.len, false, 1);
  w.json().end_object();
  truncated = w.truncated || v.cut;
  return !w.corrupt || v.cut;
}

}  // namespace tapwire::proto
