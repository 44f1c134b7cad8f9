// JSON text written straight into a string: the call record's hot path
// (every call goes to the DB or to JSON lines as text; building a DOM for
// each cost more than parsing it). Only writing: reading, and any record
// that is not on the per-call path, use nlohmann::json. Strings are escaped
// as RFC 8259 requires; bytes that are not UTF-8 become U+FFFD (as
// nlohmann's dump with error_handler_t::replace does), so the text always
// parses.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace tapwire {

class JsonOut {
 public:
  explicit JsonOut(std::string& out) : out_(out) {}

  void begin_object() { open('{'); }
  void end_object() { close('}'); }
  void begin_array() { open('['); }
  void end_array() { close(']'); }
  // Inside an object: the next member's name.
  void key(std::string_view k) {
    comma();
    string_value(k);
    out_ += ':';
    after_key_ = true;
  }
  void string(std::string_view v) {
    comma();
    string_value(v);
  }
  void number(int64_t v);
  void unsigned_number(uint64_t v);
  void boolean(bool v) {
    comma();
    out_ += v ? "true" : "false";
  }
  void null() {
    comma();
    out_ += "null";
  }
  // A complete JSON value, as text (trusted: written by JsonOut or nlohmann).
  void raw(std::string_view json) {
    comma();
    out_ += json;
  }

  // Members, for brevity.
  void field(std::string_view k, std::string_view v) {
    key(k);
    string(v);
  }
  void field(std::string_view k, const char* v) { field(k, std::string_view(v)); }
  void field(std::string_view k, const std::string& v) { field(k, std::string_view(v)); }
  void field(std::string_view k, int v) {
    key(k);
    number(v);
  }
  void field(std::string_view k, int64_t v) {
    key(k);
    number(v);
  }
  void field(std::string_view k, uint64_t v) {
    key(k);
    unsigned_number(v);
  }
  void field(std::string_view k, uint32_t v) { field(k, uint64_t{v}); }
  void field(std::string_view k, bool v) {
    key(k);
    boolean(v);
  }

  std::string& text() { return out_; }

 private:
  std::string& out_;
  uint64_t first_ = 1;  // bit d: nothing written yet at depth d
  int depth_ = 0;
  bool after_key_ = false;

  void comma() {
    if (after_key_) {
      after_key_ = false;
      return;
    }
    const uint64_t bit = uint64_t{1} << (depth_ & 63);
    if (first_ & bit)
      first_ &= ~bit;
    else
      out_ += ',';
  }
  void open(char c) {
    comma();
    out_ += c;
    depth_++;
    first_ |= uint64_t{1} << (depth_ & 63);
  }
  void close(char c) {
    out_ += c;
    depth_--;
  }
  void string_value(std::string_view s);
};

// `s` as a JSON string literal (quotes included), appended to `out`.
void append_json_string(std::string& out, std::string_view s);

}  // namespace tapwire
