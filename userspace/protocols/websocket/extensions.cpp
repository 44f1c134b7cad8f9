// Sec-WebSocket-Extensions (RFC 6455 9.1):
//   extension-list = 1#extension
//   extension = name *( ";" param )
//   param = name [ "=" (token | quoted-string) ]
#include "extensions.hpp"

#include <array>

namespace tapwire::proto {

namespace {

constexpr std::array<bool, 256> make_tchar() {
  std::array<bool, 256> t{};
  for (int c = 0; c < 256; c++) {
    const bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    t[static_cast<size_t>(c)] = alnum;
  }
  for (char s : std::string_view("!#$%&'*+-.^_`|~")) t[static_cast<uint8_t>(s)] = true;
  return t;
}
constexpr std::array<bool, 256> kTchar = make_tchar();

class Cursor {
 public:
  explicit Cursor(std::string_view s) : s_(s) {}
  bool end() const { return i_ >= s_.size(); }
  char peek() const { return end() ? '\0' : s_[i_]; }
  void skip_ows() {
    while (!end() && (s_[i_] == ' ' || s_[i_] == '\t')) i_++;
  }
  bool eat(char c) {
    if (peek() != c || end()) return false;
    i_++;
    return true;
  }
  // A token, lower-cased when `lower`; empty when there is none here.
  std::string token(bool lower) {
    std::string t;
    while (!end() && kTchar[static_cast<uint8_t>(s_[i_])]) {
      char c = s_[i_++];
      if (lower && c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
      t.push_back(c);
    }
    return t;
  }
  // A quoted-string at '"', unescaped. False: unterminated.
  bool quoted(std::string& out) {
    i_++;  // '"'
    while (!end()) {
      const char c = s_[i_++];
      if (c == '"') return true;
      if (c == '\\') {
        if (end()) return false;
        out.push_back(s_[i_++]);
      } else {
        out.push_back(c);
      }
    }
    return false;
  }
  // Past the next ',' that is not inside a quoted-string (or to the end).
  void skip_element() {
    bool in_quotes = false;
    while (!end()) {
      const char c = s_[i_++];
      if (in_quotes && c == '\\') {
        if (!end()) i_++;
      } else if (c == '"') {
        in_quotes = !in_quotes;
      } else if (c == ',' && !in_quotes) {
        return;
      }
    }
  }

 private:
  std::string_view s_;
  size_t i_ = 0;
};

// One element at the cursor, up to (not past) the ',' or the end. False: malformed.
bool parse_element(Cursor& c, WsExtension& e) {
  e.name = c.token(true);
  if (e.name.empty()) return false;
  for (;;) {
    c.skip_ows();
    if (c.end() || c.peek() == ',') return true;
    if (!c.eat(';')) return false;
    c.skip_ows();
    WsExtension::Param p;
    p.name = c.token(true);
    if (p.name.empty()) return false;
    c.skip_ows();
    if (c.eat('=')) {
      c.skip_ows();
      p.has_value = true;
      if (c.peek() == '"') {
        if (!c.quoted(p.value)) return false;
      } else {
        p.value = c.token(false);
        if (p.value.empty()) return false;
      }
    }
    if (e.params.size() < 16) e.params.push_back(std::move(p));  // a real offer has 4 at most
  }
}

// 8..15, digits only, no leading zero (RFC 7692 7.1.2.1).
int window_bits(const WsExtension::Param& p) {
  const std::string& v = p.value;
  if (v.size() == 1 && v[0] >= '8' && v[0] <= '9') return v[0] - '0';
  if (v.size() == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5') return 10 + (v[1] - '0');
  return -1;
}

WsDeflate deflate_params(const WsExtension& e, bool response) {
  WsDeflate d;
  d.enabled = true;
  bool seen[4] = {false, false, false, false};
  for (const WsExtension::Param& p : e.params) {
    int k;
    if (p.name == "server_no_context_takeover") k = 0;
    else if (p.name == "client_no_context_takeover") k = 1;
    else if (p.name == "server_max_window_bits") k = 2;
    else if (p.name == "client_max_window_bits") k = 3;
    else {
      d.malformed = true;
      continue;
    }
    if (seen[k]) d.malformed = true;
    seen[k] = true;
    switch (k) {
      case 0:
      case 1:
        if (p.has_value) d.malformed = true;
        (k == 0 ? d.server_no_context_takeover : d.client_no_context_takeover) = true;
        break;
      default: {
        // client_max_window_bits without a value: only in an offer, where it
        // says the client can take one from the server (RFC 7692 7.1.2.2).
        if (!p.has_value && k == 3 && !response) break;
        const int bits = window_bits(p);
        if (bits < 0) {
          d.malformed = true;
          break;
        }
        (k == 2 ? d.server_max_window_bits : d.client_max_window_bits) = static_cast<uint8_t>(bits);
        break;
      }
    }
  }
  return d;
}

}  // namespace

std::vector<WsExtension> parse_ws_extensions(std::string_view value, size_t max_elements) {
  std::vector<WsExtension> out;
  Cursor c(value);
  while (!c.end() && out.size() < max_elements) {
    c.skip_ows();
    if (c.eat(',')) continue;  // empty list elements are allowed (RFC 9110 5.6.1)
    if (c.end()) break;
    WsExtension e;
    if (parse_element(c, e)) {
      out.push_back(std::move(e));
      c.eat(',');
    } else {
      c.skip_element();
    }
  }
  return out;
}

std::optional<WsDeflate> parse_permessage_deflate(std::string_view value, bool response) {
  for (const WsExtension& e : parse_ws_extensions(value))
    if (e.name == "permessage-deflate") return deflate_params(e, response);
  return std::nullopt;
}

WsDeflate negotiate_permessage_deflate(std::string_view request_value, std::string_view response_value) {
  std::optional<WsDeflate> agreed = parse_permessage_deflate(response_value, true);
  if (!agreed) return WsDeflate{};
  // Accepting what was not offered fails the handshake (RFC 6455 4.1); the
  // messages that follow say whether the client went on regardless.
  if (!parse_permessage_deflate(request_value, false)) agreed->malformed = true;
  return *agreed;
}

}  // namespace tapwire::proto
