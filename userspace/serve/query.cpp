#include "query.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <sqlite3.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <unordered_map>

#include "protocol.hpp"
#include "timefmt.hpp"

namespace tapwire::serve {

QueryError::QueryError(size_t column, const std::string& message)
    : std::runtime_error("column " + std::to_string(column) + ": " + message), column_(column), message_(message) {}

namespace {

// ------------------------------------------------------------ the text --

// Length of the well-formed UTF-8 sequence at s[i], 0 if there is none
// (overlong forms, surrogates and code points past U+10FFFF are not).
size_t utf8_sequence(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t n;
  uint32_t cp;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    cp = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; k++) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return n;
}

// The query's text, and the column (1-based, in code points) of a byte.
struct Source {
  std::string_view text;
  size_t column(size_t offset) const {
    size_t col = 1;
    for (size_t i = 0; i < offset && i < text.size(); i++)
      if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) col++;
    return col;
  }
  [[noreturn]] void fail(size_t offset, const std::string& message) const { throw QueryError(column(offset), message); }
};

// User text inside an error message: control bytes escaped, long text cut.
std::string printable(std::string_view s, size_t max = 40) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    const unsigned char ch = static_cast<unsigned char>(s[i]);
    if (out.size() >= max && (ch & 0xC0) != 0x80) {
      out += "...";
      break;
    }
    if (ch < 0x20 || ch == 0x7f) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\x%02x", ch);
      out += esc;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out;
}

std::string quoted(std::string_view s) { return "\"" + printable(s) + "\""; }

// ----------------------------------------------------------- tokenizer --

enum class Tok { End, Ident, String, Number, LParen, RParen, LBracket, RBracket, Comma, Dot, Eq, Ne, Lt, Le, Gt, Ge };

struct Token {
  Tok type = Tok::End;
  size_t offset = 0;  // first byte
  std::string text;  // Ident: the word; Number: as written
  Literal lit;  // String, Number
};

bool is_ident_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
// Identifiers take '-' after their first character: header names
// (request.headers.content-type). There is no arithmetic to confuse it with.
bool is_ident_char(char c) { return is_ident_start(c) || is_digit(c) || c == '-'; }

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (x >= 'A' && x <= 'Z' ? x + 32 : x) == (y >= 'A' && y <= 'Z' ? y + 32 : y);
         });
}

constexpr const char* kKeywords[] = {"and",      "or",      "not",  "in",    "contains", "startswith",
                                     "endswith", "matches", "true", "false", "null"};

bool is_keyword(std::string_view w) {
  return std::any_of(std::begin(kKeywords), std::end(kKeywords), [&](const char* k) { return iequals(w, k); });
}

// Nanoseconds per unit of a duration literal.
int64_t unit_ns(std::string_view u) {
  if (u == "ns") return 1;
  if (u == "us" || u == "\xC2\xB5s") return 1000;
  if (u == "ms") return 1000000;
  if (u == "s") return 1000000000;
  if (u == "m") return 60 * 1000000000LL;
  if (u == "h") return 3600 * 1000000000LL;
  return 0;
}

class Lexer {
 public:
  explicit Lexer(const Source& src) : src_(src), s_(src.text) {}

  std::vector<Token> run() {
    check_text();
    std::vector<Token> out;
    for (;;) {
      skip_space();
      Token t;
      t.offset = i_;
      if (i_ >= s_.size()) {
        out.push_back(std::move(t));
        return out;
      }
      const char c = s_[i_];
      if ((c == 'r' || c == 'R') && i_ + 1 < s_.size() && (s_[i_ + 1] == '"' || s_[i_ + 1] == '\'')) {
        i_++;
        string_literal(t, true);
      } else if (is_ident_start(c)) {
        while (i_ < s_.size() && is_ident_char(s_[i_])) i_++;
        t.type = Tok::Ident;
        t.text = std::string(s_.substr(t.offset, i_ - t.offset));
      } else if (c == '"' || c == '\'') {
        string_literal(t, false);
      } else if (is_digit(c) || ((c == '-' || c == '+') && i_ + 1 < s_.size() && is_digit(s_[i_ + 1]))) {
        number(t);
      } else {
        punctuation(t);
      }
      out.push_back(std::move(t));
    }
  }

 private:
  const Source& src_;
  std::string_view s_;
  size_t i_ = 0;

  // Bounds and encoding first, so that nothing after has to care.
  void check_text() {
    if (s_.size() > kMaxQueryBytes)
      src_.fail(kMaxQueryBytes, "the query is too long (" + std::to_string(s_.size()) + " bytes; at most " +
                                    std::to_string(kMaxQueryBytes) + ")");
    for (size_t i = 0; i < s_.size();) {
      if (s_[i] == '\0') src_.fail(i, "NUL byte in the query");
      const size_t n = utf8_sequence(s_, i);
      if (!n) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", static_cast<unsigned char>(s_[i]));
        src_.fail(i, std::string("invalid UTF-8 (byte ") + hex + ")");
      }
      i += n;
    }
  }

  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) i_++;
  }

  void punctuation(Token& t) {
    const char c = s_[i_];
    const char next = i_ + 1 < s_.size() ? s_[i_ + 1] : '\0';
    auto one = [&](Tok type) {
      t.type = type;
      i_++;
    };
    auto two = [&](Tok type) {
      t.type = type;
      i_ += 2;
    };
    switch (c) {
      case '(': return one(Tok::LParen);
      case ')': return one(Tok::RParen);
      case '[': return one(Tok::LBracket);
      case ']': return one(Tok::RBracket);
      case ',': return one(Tok::Comma);
      case '.': return one(Tok::Dot);
      case '<': return next == '=' ? two(Tok::Le) : one(Tok::Lt);
      case '>': return next == '=' ? two(Tok::Ge) : one(Tok::Gt);
      case '=':
        if (next == '=') return two(Tok::Eq);
        src_.fail(i_, "'=' alone: compare with ==");
      case '!':
        if (next == '=') return two(Tok::Ne);
        src_.fail(i_, "'!' alone: negate with not, or compare with !=");
      case '&': src_.fail(i_, "'&': combine conditions with and");
      case '|': src_.fail(i_, "'|': combine conditions with or");
      case ';': src_.fail(i_, "';': a query is one expression");
      case '-':
        if (next == '-') src_.fail(i_, "'--': a query has no comments");
        break;
      default: break;
    }
    const size_t n = utf8_sequence(s_, i_);
    src_.fail(i_, "unexpected character '" + printable(s_.substr(i_, n)) + "'");
  }

  // "..." or '...' with backslash escapes; r"..." raw (for regexes: no escapes).
  void string_literal(Token& t, bool raw) {
    const char quote = s_[i_];
    const size_t open = raw ? i_ - 1 : i_;
    i_++;
    std::string out;
    for (;;) {
      if (i_ >= s_.size()) src_.fail(open, "unterminated string (it starts here)");
      const char c = s_[i_];
      if (c == quote) {
        i_++;
        break;
      }
      if (c != '\\' || raw) {
        out += c;
        i_++;
        continue;
      }
      const size_t esc = i_;
      if (i_ + 1 >= s_.size()) src_.fail(open, "unterminated string (it starts here)");
      const char e = s_[i_ + 1];
      i_ += 2;
      switch (e) {
        case '\\': out += '\\'; break;
        case '"': out += '"'; break;
        case '\'': out += '\''; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': append_utf8(out, unicode_escape(esc)); break;
        default: {
          const size_t n = utf8_sequence(s_, esc + 1);
          const std::string seq = "\\" + printable(s_.substr(esc + 1, n));
          src_.fail(esc, "unknown escape " + seq + " in a string (escapes: \\\\ \\\" \\' \\n \\r \\t \\uXXXX); " +
                             "for a regex write \\" + seq + " or a raw string r\"...\"");
        }
      }
    }
    t.type = Tok::String;
    t.lit.kind = Literal::Kind::String;
    t.lit.s = std::move(out);
  }

  uint32_t hex4(size_t esc) {
    // i_ is just past "\u".
    if (i_ + 4 > s_.size()) src_.fail(esc, "\\u needs four hex digits");
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
      const char h = s_[i_ + static_cast<size_t>(k)];
      int d = is_digit(h) ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
      if (d < 0) src_.fail(esc, "\\u needs four hex digits");
      v = v * 16 + static_cast<uint32_t>(d);
    }
    i_ += 4;
    return v;
  }

  uint32_t unicode_escape(size_t esc) {
    uint32_t cp = hex4(esc);
    if (cp == 0) src_.fail(esc, "\\u0000: a string cannot hold a NUL");
    if (cp >= 0xDC00 && cp <= 0xDFFF) src_.fail(esc, "\\u: a low surrogate without its high one");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (i_ + 2 > s_.size() || s_[i_] != '\\' || s_[i_ + 1] != 'u')
        src_.fail(esc, "\\u: a high surrogate without its low one");
      i_ += 2;
      const uint32_t lo = hex4(esc);
      if (lo < 0xDC00 || lo > 0xDFFF) src_.fail(esc, "\\u: a high surrogate without its low one");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    return cp;
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // 42, -7, 2.5, 1e3, and durations: 200ms, 1.5s, 30us, 2m, 1h, 10ns.
  void number(Token& t) {
    const size_t start = i_;
    if (s_[i_] == '-' || s_[i_] == '+') i_++;
    while (i_ < s_.size() && is_digit(s_[i_])) i_++;
    bool real = false;
    if (i_ + 1 < s_.size() && s_[i_] == '.' && is_digit(s_[i_ + 1])) {
      real = true;
      i_++;
      while (i_ < s_.size() && is_digit(s_[i_])) i_++;
      if (i_ + 1 < s_.size() && s_[i_] == '.' && is_digit(s_[i_ + 1]))
        src_.fail(start, "a number with two dots: put an address in quotes (\"10.0.0.1\")");
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      size_t k = i_ + 1;
      if (k < s_.size() && (s_[k] == '+' || s_[k] == '-')) k++;
      if (k < s_.size() && is_digit(s_[k])) {
        real = true;
        i_ = k;
        while (i_ < s_.size() && is_digit(s_[i_])) i_++;
      }
    }
    const std::string_view digits = s_.substr(start, i_ - start);
    // A unit right after the digits makes a duration.
    const size_t unit_start = i_;
    while (i_ < s_.size() && (is_ident_char(s_[i_]) || static_cast<unsigned char>(s_[i_]) >= 0x80)) {
      if (static_cast<unsigned char>(s_[i_]) >= 0x80) {
        const size_t n = utf8_sequence(s_, i_);
        if (s_.substr(i_, n) != "\xC2\xB5") break;  // only µ (µs)
        i_ += n;
      } else {
        i_++;
      }
    }
    const std::string_view unit = s_.substr(unit_start, i_ - unit_start);
    t.type = Tok::Number;
    t.text = std::string(s_.substr(start, i_ - start));
    if (i_ < s_.size() && s_[i_] == '.' && unit.empty())
      src_.fail(start, "a number with two dots: put an address in quotes (\"10.0.0.1\")");
    const std::string clean(digits[0] == '+' ? digits.substr(1) : digits);
    if (!unit.empty()) {
      const int64_t per = unit_ns(unit);
      if (!per)
        src_.fail(unit_start, "unknown unit \"" + printable(unit) + "\" after a number (durations: 10ns, 30us, 200ms, " +
                                  "1.5s, 2m, 1h)");
      double v = 0;
      auto [end, ec] = std::from_chars(clean.data(), clean.data() + clean.size(), v);
      if (ec != std::errc() || end != clean.data() + clean.size() || !std::isfinite(v))
        src_.fail(start, "duration out of range: " + printable(t.text));
      if (v < 0) src_.fail(start, "a duration cannot be negative");
      const long double ns = static_cast<long double>(v) * static_cast<long double>(per);
      if (ns > 9.0e18L) src_.fail(start, "duration out of range: " + printable(t.text));
      t.lit.kind = Literal::Kind::Duration;
      t.lit.i = static_cast<int64_t>(std::llround(static_cast<double>(ns)));
      return;
    }
    if (real) {
      double v = 0;
      auto [end, ec] = std::from_chars(clean.data(), clean.data() + clean.size(), v);
      if (ec != std::errc() || end != clean.data() + clean.size() || !std::isfinite(v))
        src_.fail(start, "number out of range: " + printable(t.text));
      t.lit.kind = Literal::Kind::Real;
      t.lit.r = v;
      return;
    }
    int64_t v = 0;
    auto [end, ec] = std::from_chars(clean.data(), clean.data() + clean.size(), v);
    if (ec != std::errc() || end != clean.data() + clean.size())
      src_.fail(start, "number out of range: " + printable(t.text) + " (integers are 64-bit)");
    t.lit.kind = Literal::Kind::Integer;
    t.lit.i = v;
  }
};

// -------------------------------------------------------------- parser --

class Parser {
 public:
  Parser(const Source& src, std::vector<Token> toks) : src_(src), toks_(std::move(toks)) {}

  ExprPtr run() {
    if (peek().type == Tok::End) src_.fail(0, "empty query");
    ExprPtr e = parse_or();
    if (peek().type != Tok::End) fail_here("expected 'and', 'or' or the end of the query, found " + describe(peek()));
    return e;
  }

 private:
  const Source& src_;
  std::vector<Token> toks_;
  size_t pos_ = 0;
  int depth_ = 0;
  size_t conditions_ = 0;
  size_t values_ = 0;

  const Token& peek(size_t ahead = 0) const { return toks_[std::min(pos_ + ahead, toks_.size() - 1)]; }
  const Token& next() {
    const Token& t = peek();
    if (pos_ < toks_.size() - 1) pos_++;
    return t;
  }
  size_t col(const Token& t) const { return src_.column(t.offset); }
  [[noreturn]] void fail_here(const std::string& m) const { src_.fail(peek().offset, m); }

  static bool kw(const Token& t, const char* word) { return t.type == Tok::Ident && iequals(t.text, word); }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::End: return "the end of the query";
      case Tok::Ident: return is_keyword(t.text) ? "'" + printable(t.text) + "'" : quoted(t.text);
      case Tok::String: return "the string " + quoted(t.lit.s);
      case Tok::Number: return printable(t.text);
      case Tok::LParen: return "'('";
      case Tok::RParen: return "')'";
      case Tok::LBracket: return "'['";
      case Tok::RBracket: return "']'";
      case Tok::Comma: return "','";
      case Tok::Dot: return "'.'";
      case Tok::Eq: return "'=='";
      case Tok::Ne: return "'!='";
      case Tok::Lt: return "'<'";
      case Tok::Le: return "'<='";
      case Tok::Gt: return "'>'";
      case Tok::Ge: return "'>='";
    }
    return "?";
  }

  void enter(const Token& t) {
    if (++depth_ > kMaxDepth)
      src_.fail(t.offset, "nested too deeply (at most " + std::to_string(kMaxDepth) + " levels of parentheses and not)");
  }

  ExprPtr join(Expr::Kind kind, const char* word, ExprPtr (Parser::*sub)()) {
    const size_t start = col(peek());
    ExprPtr first = (this->*sub)();
    if (!kw(peek(), word)) return first;
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->column = start;
    e->children.push_back(std::move(first));
    while (kw(peek(), word)) {
      next();
      e->children.push_back((this->*sub)());
    }
    return e;
  }

  ExprPtr parse_or() { return join(Expr::Kind::Or, "or", &Parser::parse_and); }
  ExprPtr parse_and() { return join(Expr::Kind::And, "and", &Parser::parse_unary); }

  ExprPtr parse_unary() {
    if (!kw(peek(), "not")) return parse_primary();
    const Token& t = next();
    enter(t);
    auto e = std::make_unique<Expr>();
    e->kind = Expr::Kind::Not;
    e->column = col(t);
    e->children.push_back(parse_unary());
    depth_--;
    return e;
  }

  ExprPtr parse_primary() {
    if (peek().type == Tok::LParen) {
      const Token& open = next();
      enter(open);
      ExprPtr e = parse_or();
      if (peek().type != Tok::RParen)
        fail_here("expected ')' to close the '(' of column " + std::to_string(col(open)) + ", found " +
                  describe(peek()));
      next();
      depth_--;
      return e;
    }
    return parse_condition();
  }

  // a.b.c, request.args[0], response.answers[-1]
  std::string field_path(size_t& column) {
    const Token& first = peek();
    if (first.type != Tok::Ident || is_keyword(first.text))
      fail_here("expected a field, a protocol name, 'not' or '(', found " + describe(first));
    column = col(first);
    std::string path = next().text;
    size_t segments = 1;
    for (;;) {
      if ((peek().type == Tok::Dot || peek().type == Tok::LBracket) && segments >= kMaxPathSegments &&
          (peek().type == Tok::Dot || (peek(1).type == Tok::Number && peek(2).type == Tok::RBracket)))
        fail_here("field path too long (at most " + std::to_string(kMaxPathSegments) + " parts)");
      if (peek().type == Tok::Dot) {
        next();
        if (peek().type != Tok::Ident) fail_here("expected a name after '.', found " + describe(peek()));
        path += "." + next().text;
      } else if (peek().type == Tok::LBracket && peek(1).type == Tok::Number &&
                 peek(1).lit.kind == Literal::Kind::Integer && peek(2).type == Tok::RBracket) {
        next();
        const Token& number = next();
        if (number.lit.i > 1000000 || number.lit.i < -1000000) src_.fail(number.offset, "array index out of range");
        path += "[" + std::to_string(number.lit.i) + "]";
        next();
      } else {
        break;
      }
      segments++;
    }
    return path;
  }

  Literal literal() {
    const Token& t = peek();
    if (++values_ > kMaxValues)
      fail_here("too many values (at most " + std::to_string(kMaxValues) + " in one query)");
    Literal l;
    l.column = col(t);
    if (t.type == Tok::String || t.type == Tok::Number) {
      l = t.lit;
      l.column = col(t);
    } else if (kw(t, "true") || kw(t, "false")) {
      l.kind = Literal::Kind::Bool;
      l.b = kw(t, "true");
    } else if (kw(t, "null")) {
      l.kind = Literal::Kind::Null;
    } else {
      fail_here("expected a value (a \"string\", a number, a duration such as 200ms, true, false or null), found " +
                describe(t));
    }
    next();
    return l;
  }

  ExprPtr parse_condition() {
    auto e = std::make_unique<Expr>();
    e->column = col(peek());
    if (++conditions_ > kMaxConditions)
      fail_here("too many conditions (at most " + std::to_string(kMaxConditions) + " in one query)");
    e->field = field_path(e->field_column);
    const Token& t = peek();
    e->op_column = col(t);
    static const std::pair<Tok, Op> kCompare[] = {{Tok::Eq, Op::Eq}, {Tok::Ne, Op::Ne}, {Tok::Lt, Op::Lt},
                                                  {Tok::Le, Op::Le}, {Tok::Gt, Op::Gt}, {Tok::Ge, Op::Ge}};
    for (auto [tok, op] : kCompare) {
      if (t.type != tok) continue;
      next();
      e->kind = Expr::Kind::Compare;
      e->op = op;
      const Token& v = peek();
      if (v.type == Tok::Ident && !is_keyword(v.text)) {
        e->other_field = field_path(e->other_column);
      } else {
        e->value = literal();
      }
      return e;
    }
    bool negated = false;
    if (kw(t, "not")) {
      negated = true;
      next();
    }
    static const std::pair<const char*, Op> kWords[] = {{"contains", Op::Contains},
                                                        {"startswith", Op::StartsWith},
                                                        {"endswith", Op::EndsWith},
                                                        {"matches", Op::Matches},
                                                        {"in", Op::In}};
    for (auto [word, op] : kWords) {
      if (!kw(peek(), word)) continue;
      next();
      e->kind = Expr::Kind::Compare;
      e->op = op;
      e->negated = negated;
      if (op == Op::In) {
        list(*e);
      } else {
        e->value = literal();
      }
      return e;
    }
    if (negated) fail_here("expected contains, startswith, endswith, matches or in after 'not', found " + describe(peek()));
    // A word alone (a protocol name): what may follow it is what follows a condition.
    const Token& after = peek();
    if (after.type != Tok::End && after.type != Tok::RParen && !kw(after, "and") && !kw(after, "or"))
      fail_here("expected an operator (==, !=, <, <=, >, >=, contains, startswith, endswith, matches, in) after " +
                quoted(e->field) + ", found " + describe(after));
    e->kind = Expr::Kind::Bare;
    return e;
  }

  void list(Expr& e) {
    if (peek().type != Tok::LBracket) fail_here("expected '[' after in: in [80, 443]");
    const Token& open = next();
    if (peek().type == Tok::RBracket) src_.fail(open.offset, "empty list");
    for (;;) {
      if (e.list.size() >= kMaxListItems)
        fail_here("list too long (at most " + std::to_string(kMaxListItems) + " values)");
      e.list.push_back(literal());
      if (peek().type == Tok::Comma) {
        next();
        if (peek().type == Tok::RBracket) break;  // a trailing comma
        continue;
      }
      if (peek().type == Tok::RBracket) break;
      fail_here("expected ',' or ']' in the list of column " + std::to_string(col(open)) + ", found " + describe(peek()));
    }
    next();
  }
};

// ------------------------------------------------------------- regexes --

// PCRE2: UTF-8 patterns; values that are not valid UTF-8 (a process name
// is bytes) still match, byte for byte where they are invalid. \C could
// split a character in UTF mode: refused.
constexpr uint32_t kRegexOptions = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | PCRE2_NEVER_BACKSLASH_C;
// A match that backtracks past these fails the query (an error, not a
// silent non-match): a million steps is milliseconds, and what a sane
// pattern needs on a 64 KiB body.
constexpr uint32_t kMatchLimit = 1000000;
constexpr uint32_t kDepthLimit = 10000;
constexpr uint32_t kHeapLimitKiB = 16 * 1024;

struct Regex {
  pcre2_code* code = nullptr;
  std::string error;  // why it did not compile
  explicit Regex(std::string_view pattern) {
    if (pattern.size() > kMaxPatternBytes) {
      error = "regex too long (" + std::to_string(pattern.size()) + " bytes; at most " +
              std::to_string(kMaxPatternBytes) + ")";
      return;
    }
    int rc = 0;
    PCRE2_SIZE at = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), kRegexOptions, &rc, &at, nullptr);
    if (!code) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(rc, buf, sizeof buf);
      error = std::string(reinterpret_cast<const char*>(buf)) + " at offset " + std::to_string(at);
      return;
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // when JIT is not there, the interpreter runs it
  }
  ~Regex() { pcre2_code_free(code); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
};
using RegexPtr = std::shared_ptr<const Regex>;

// Per connection: compiled patterns (tapwire tail and a server run the same
// query again and again), and the match state one call at a time uses
// (a connection runs one statement step at a time).
struct RegexState {
  static constexpr size_t kMaxCached = 64;  // distinct patterns; then it starts over
  std::unordered_map<std::string, RegexPtr> cache;
  pcre2_match_data* match = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, nullptr);
  RegexState() {
    if (context) {
      pcre2_set_match_limit(context, kMatchLimit);
      pcre2_set_depth_limit(context, kDepthLimit);
      pcre2_set_heap_limit(context, kHeapLimitKiB);
      if (jit_stack) pcre2_jit_stack_assign(context, nullptr, jit_stack);
    }
  }
  ~RegexState() {
    pcre2_match_data_free(match);
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(jit_stack);
  }
  RegexState(const RegexState&) = delete;
  RegexState& operator=(const RegexState&) = delete;
  RegexPtr get(const std::string& pattern) {
    auto it = cache.find(pattern);
    if (it != cache.end()) return it->second;
    if (cache.size() >= kMaxCached) cache.clear();  // statements holding one keep it (shared_ptr)
    return cache.emplace(pattern, std::make_shared<const Regex>(pattern)).first->second;
  }
};

void regexp_function(sqlite3_context* ctx, int, sqlite3_value** argv) {
  if (sqlite3_value_type(argv[0]) == SQLITE_NULL || sqlite3_value_type(argv[1]) == SQLITE_NULL) {
    sqlite3_result_null(ctx);  // a field the call lacks matches nothing
    return;
  }
  auto* state = static_cast<RegexState*>(sqlite3_user_data(ctx));
  if (!state->match || !state->context) {
    sqlite3_result_error_nomem(ctx);
    return;
  }
  // Within a statement the pattern is a constant: SQLite keeps it compiled
  // with the argument (auxdata), so a row costs no lookup.
  auto* held = static_cast<RegexPtr*>(sqlite3_get_auxdata(ctx, 0));
  RegexPtr re = held ? *held : nullptr;
  if (!re) {
    const char* p = reinterpret_cast<const char*>(sqlite3_value_text(argv[0]));
    if (!p) {
      sqlite3_result_error_nomem(ctx);
      return;
    }
    re = state->get(std::string(p, static_cast<size_t>(sqlite3_value_bytes(argv[0]))));
    if (!re->code) {
      sqlite3_result_error(ctx, ("matches: bad regex: " + re->error).c_str(), -1);
      return;
    }
    sqlite3_set_auxdata(ctx, 0, new RegexPtr(re), [](void* h) { delete static_cast<RegexPtr*>(h); });
  }
  const unsigned char* v = sqlite3_value_text(argv[1]);
  if (!v) {
    sqlite3_result_error_nomem(ctx);
    return;
  }
  const int rc = pcre2_match(re->code, v, static_cast<PCRE2_SIZE>(sqlite3_value_bytes(argv[1])), 0, 0, state->match,
                             state->context);
  if (rc >= 0) {
    sqlite3_result_int(ctx, 1);
  } else if (rc == PCRE2_ERROR_NOMATCH) {
    sqlite3_result_int(ctx, 0);
  } else if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT ||
             rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    sqlite3_result_error(ctx, "matches: the regex backtracks too much on a value (match limit reached): simplify it", -1);
  } else {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(rc, buf, sizeof buf);
    sqlite3_result_error(ctx, (std::string("matches: ") + reinterpret_cast<const char*>(buf)).c_str(), -1);
  }
}

// ------------------------------------------------------------- fields --

// What a field is, for the compiler: its SQL and what it compares with.
enum class Type {
  Text,
  Integer,
  Real,
  Duration,  // compared with duration literals; `unit_ns` per unit of the SQL value
  Time,  // ns since the epoch, compared with RFC 3339 or relative times
  Flags,  // calls.flags: comma-separated names; `contains` is membership
  FlagArray,  // a JSON array of flag names (flows' record.flags)
  Object,  // request, response: only == null / != null
  Json,  // a value inside a JSON column: any type, known only at run time
};

enum class Needs { Nothing, Identity, Record };

struct FieldDef {
  std::string name;
  Type type;
  std::string sql;
  int64_t unit_ns = 1;
  Needs needs = Needs::Nothing;
};

std::vector<FieldDef> call_fields() {
  std::vector<FieldDef> f = {
      {"id", Type::Text, "id"},
      {"protocol", Type::Text, "protocol"},
      {"ts", Type::Time, "ts_ns"},
      {"duration", Type::Duration, "duration_us", 1000},
      {"duration_us", Type::Integer, "duration_us"},
      {"node", Type::Text, "node", 1, Needs::Identity},
      {"method", Type::Text, "method"},
      {"path", Type::Text, "path"},
      {"status", Type::Integer, "status"},
      {"flags", Type::Flags, "flags"},
      {"upgrade_id", Type::Text, "upgrade_id", 1, Needs::Record},
      {"request", Type::Object, "has_request"},
      {"response", Type::Object, "has_response"},
  };
  // The two ends: the record's src and dst objects, flattened as the
  // columns are (src_pod), with the record's own nesting as aliases.
  static const struct {
    const char* suffix;
    Type type;
    const char* column;
    bool identity;
  } kEnd[] = {
      {"ip", Type::Text, "ip", false},
      {"port", Type::Integer, "port", false},
      {"pid", Type::Integer, "pid", true},
      {"process", Type::Text, "process", true},
      {"process.pid", Type::Integer, "pid", true},
      {"process.name", Type::Text, "process", true},
      {"process.exe", Type::Text, "exe", true},
      {"exe", Type::Text, "exe", true},
      {"container", Type::Text, "container", true},
      {"container_id", Type::Text, "container_id", true},
      {"pod", Type::Text, "pod", true},
      {"namespace", Type::Text, "namespace", true},
      {"workload", Type::Text, "workload_name", true},
      {"workload.name", Type::Text, "workload_name", true},
      {"workload.kind", Type::Text, "workload_kind", true},
      {"service", Type::Text, "service", true},
      {"node", Type::Text, "node", true},
  };
  for (const std::string end : {"src", "dst"})
    for (auto& e : kEnd)
      f.push_back({end + "." + e.suffix, e.type, end + "_" + e.column, 1, e.identity ? Needs::Identity : Needs::Nothing});
  return f;
}

std::vector<FieldDef> flow_fields() {
  std::vector<FieldDef> f = {
      {"id", Type::Text, "id"},
      {"node", Type::Text, "node"},
      {"protocol", Type::Text, "protocol"},
      {"ip_version", Type::Integer, "ip_version"},
      {"ts", Type::Time, "first_ns"},
      {"first_seen", Type::Time, "first_ns"},
      {"last_seen", Type::Time, "last_ns"},
      {"duration", Type::Duration, "(last_ns - first_ns)", 1},
      {"state", Type::Text, "state"},
      {"end", Type::Text, "end_reason"},
      {"packets", Type::Integer, "packets"},
      {"bytes", Type::Integer, "bytes"},
      {"retransmissions", Type::Integer, "retransmissions"},
      {"rtt", Type::Duration, "rtt_us", 1000},
      {"rtt_us", Type::Real, "rtt_us"},
      {"flags", Type::FlagArray, "record"},
  };
  static const char* const kEnd[][3] = {
      {"client.ip", "client_ip", "T"},          {"client.port", "client_port", "I"},
      {"client.namespace", "client_namespace", "T"}, {"client.pod", "client_pod", "T"},
      {"client.workload", "client_workload", "T"},   {"client.workload.name", "client_workload", "T"},
      {"server.ip", "server_ip", "T"},          {"server.port", "server_port", "I"},
      {"server.namespace", "server_namespace", "T"}, {"server.pod", "server_pod", "T"},
      {"server.workload", "server_workload", "T"},   {"server.workload.name", "server_workload", "T"},
  };
  for (auto& e : kEnd) f.push_back({e[0], e[2][0] == 'I' ? Type::Integer : Type::Text, e[1]});
  return f;
}

const std::vector<FieldDef>& fields(Target t) {
  static const std::vector<FieldDef> calls = call_fields();
  static const std::vector<FieldDef> flows = flow_fields();
  return t == Target::Calls ? calls : flows;
}

// Fields inside a JSON column: request.<path> is json_extract(request, '$.<path>').
struct JsonRoot {
  const char* prefix;  // "request"
  const char* column;
  Needs needs;
};
const std::vector<JsonRoot>& json_roots(Target t) {
  static const std::vector<JsonRoot> calls = {{"request", "request", Needs::Record},
                                              {"response", "response", Needs::Record}};
  // The flow record whole, and its ends' passive DNS names (not columns).
  static const std::vector<JsonRoot> flows = {{"record", "record", Needs::Nothing}};
  return t == Target::Calls ? calls : flows;
}

// Rows written before schema 4 have no request/response JSON but HTTP and
// DNS columns of their own (docs/DISSECTION_DB.md): these fields read them.
const std::map<std::string, const char*>& legacy_columns() {
  static const std::map<std::string, const char*> m = {
      {"request.method", "method"},  {"request.path", "path"},   {"request.version", "version"},
      {"request.body_size", "req_body_size"}, {"request.id", "dns_id"}, {"request.qname", "qname"},
      {"request.qtype", "qtype"},    {"response.status", "status"}, {"response.reason", "reason"},
      {"response.body_size", "resp_body_size"}, {"response.rcode", "rcode"},
  };
  return m;
}

// The protocol names a bare word stands for. `http` is HTTP of any version
// (http: HTTP/1.x, http2: h2c); gRPC, also over HTTP/2, is a protocol of
// its own in the record (grpc), as is WebSocket (ws).
std::vector<std::string> bare_protocols(Target t, const std::string& word) {
  if (t == Target::Flows) {
    if (word == "tcp" || word == "udp") return {word};
    return {};
  }
  if (word == "http") return {"http", "http2"};
  if (word == "websocket") return {"ws"};
  for (const auto& p : proto::protocols())
    if (word == p.name) return {word};
  return {};
}

std::vector<std::string> bare_words(Target t) {
  if (t == Target::Flows) return {"tcp", "udp"};
  std::vector<std::string> out;
  for (const auto& p : proto::protocols()) out.push_back(p.name);
  out.push_back("websocket");
  return out;
}

// Edits between two words, a swap of neighbours counting as one ("gpa" is
// one from "gap"): optimal string alignment.
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); i++) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); j++) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); i++)
    for (size_t j = 1; j <= b.size(); j++) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

// The closest of `candidates` to `word` when it is close enough to be a
// typo, else "".
std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  if (word.size() > 128) return "";
  std::string best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (auto& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  const size_t allowed = word.size() <= 4 ? 1 : word.size() <= 10 ? 2 : 3;
  return best_d <= allowed ? best : "";
}

// A field path split: names ("request", "headers", "host") and array
// indexes; checked again here (a hand-built AST reaches the compiler too):
// only [A-Za-z0-9_-] in names, so that a JSON path made of them needs no
// escaping inside an SQL string.
struct PathPart {
  std::string name;  // empty for an index
  int64_t index = 0;
};

std::vector<PathPart> split_path(const std::string& path, size_t column) {
  std::vector<PathPart> parts;
  size_t i = 0;
  auto bad = [&] { throw QueryError(column, "bad field name " + quoted(path)); };
  if (path.empty() || path.size() > 1024) bad();
  while (i < path.size()) {
    if (path[i] == '[') {
      const size_t close = path.find(']', i);
      if (close == std::string::npos || parts.empty()) bad();
      const std::string_view digits(path.data() + i + 1, close - i - 1);
      int64_t v = 0;
      auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
      if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || v > 1000000 || v < -1000000)
        bad();
      parts.push_back({"", v});
      i = close + 1;
      if (i < path.size() && path[i] == '.') {
        i++;
        if (i >= path.size() || !is_ident_start(path[i])) bad();
      } else if (i < path.size() && path[i] != '[') {
        bad();
      }
      continue;
    }
    size_t j = i;
    if (!is_ident_start(path[j])) bad();
    while (j < path.size() && is_ident_char(path[j])) j++;
    parts.push_back({path.substr(i, j - i), 0});
    i = j;
    if (i < path.size() && path[i] == '.') {
      i++;
      if (i >= path.size() || !is_ident_start(path[i])) bad();
    } else if (i < path.size() && path[i] != '[') {
      bad();
    }
  }
  if (parts.size() > kMaxPathSegments)
    throw QueryError(column, "field path too long (at most " + std::to_string(kMaxPathSegments) + " parts)");
  return parts;
}

struct Field {
  std::string name;  // as written
  Type type = Type::Text;
  std::string sql;  // its value
  int64_t unit_ns = 1;  // Duration
  // Json and FlagArray: the column and path, for what needs them apart
  // (json_type, json_each); empty when the column is missing.
  std::string json_column, json_path;
};

// ------------------------------------------------------------ compiler --

class Compiler {
 public:
  Compiler(const CompileOptions& o) : o_(o) {}

  CompiledQuery run(const Expr& e) {
    CompiledQuery q;
    q.first_param = o_.first_param;
    q.where = expr(e, 0);
    q.params = std::move(params_);
    return q;
  }

 private:
  const CompileOptions& o_;
  std::vector<SqlValue> params_;

  std::string param(SqlValue v) {
    // The parser bounds values; an AST built by hand is bounded here (a
    // bare `http` binds two, and each value binds one).
    if (params_.size() >= 2 * (kMaxValues + kMaxConditions)) throw QueryError(1, "too many values");
    params_.push_back(std::move(v));
    return "?" + std::to_string(o_.first_param + static_cast<int>(params_.size()) - 1);
  }

  bool have(Needs n) const {
    if (o_.target != Target::Calls) return true;
    return n == Needs::Identity ? o_.identity_columns : n == Needs::Record ? o_.record_columns : true;
  }

  std::string expr(const Expr& e, int depth) {
    if (depth > 3 * kMaxDepth + 3) throw QueryError(e.column, "nested too deeply");
    switch (e.kind) {
      case Expr::Kind::And:
      case Expr::Kind::Or: {
        if (e.children.empty()) throw QueryError(e.column, "empty and/or");
        std::string out = "(";
        for (size_t i = 0; i < e.children.size(); i++) {
          if (!e.children[i]) throw QueryError(e.column, "empty and/or");
          if (i) out += e.kind == Expr::Kind::And ? " AND " : " OR ";
          out += expr(*e.children[i], depth + 1);
        }
        return out + ")";
      }
      case Expr::Kind::Not:
        if (e.children.size() != 1 || !e.children[0]) throw QueryError(e.column, "not without a condition");
        // Two-valued: a condition on a field the call lacks is NULL in SQL,
        // which `NOT` would keep NULL; `IS NOT 1` makes it true, so that
        // `not X` is exactly the rows X does not match.
        return "(" + expr(*e.children[0], depth + 1) + " IS NOT 1)";
      case Expr::Kind::Bare: return bare(e);
      case Expr::Kind::Compare: return compare(e);
    }
    throw QueryError(e.column, "bad expression");
  }

  std::string bare(const Expr& e) {
    const auto names = bare_protocols(o_.target, e.field);
    if (names.empty()) {
      for (auto& f : fields(o_.target))
        if (e.field == f.name)
          throw QueryError(e.field_column, quoted(e.field) + " is a field: compare it (" + e.field + " == ...)");
      std::vector<std::string> words = bare_words(o_.target);
      std::string hint = closest(e.field, words);
      throw QueryError(e.field_column, "unknown protocol " + quoted(e.field) +
                                           (hint.empty() ? " (protocols: " + join(words) + ")"
                                                         : " (did you mean " + quoted(hint) + "?)"));
    }
    if (names.size() == 1) return "(protocol = " + param(names[0]) + ")";
    std::string out = "(protocol IN (";
    for (size_t i = 0; i < names.size(); i++) out += (i ? ", " : "") + param(names[i]);
    return out + "))";
  }

  static std::string join(const std::vector<std::string>& v) {
    std::string out;
    for (auto& s : v) out += (out.empty() ? "" : ", ") + s;
    return out;
  }

  Field resolve(const std::string& written, size_t column) {
    std::vector<PathPart> parts = split_path(written, column);
    // Flows: src and dst are the client and the server, as on calls.
    if (o_.target == Target::Flows && (parts[0].name == "src" || parts[0].name == "dst") && parts.size() > 1)
      parts[0].name = parts[0].name == "src" ? "client" : "server";
    std::string canonical;
    bool indexed = false;
    for (auto& p : parts) {
      if (p.name.empty()) {
        canonical += "[" + std::to_string(p.index) + "]";
        indexed = true;
      } else {
        canonical += (canonical.empty() ? "" : ".") + p.name;
      }
    }
    Field f;
    f.name = written;
    if (!indexed) {
      for (auto& d : fields(o_.target)) {
        if (canonical != d.name) continue;
        f.type = d.type;
        f.unit_ns = d.unit_ns;
        f.sql = have(d.needs) ? d.sql : "NULL";
        if (d.type == Type::FlagArray) {
          f.json_column = d.sql;
          f.json_path = "'$.\"flags\"'";
          f.sql = "json_extract(" + f.json_column + ", " + f.json_path + ")";
        }
        return f;
      }
    }
    // Flows: the ends' passive DNS names live in the record only.
    if (o_.target == Target::Flows && parts.size() >= 2 && (parts[0].name == "client" || parts[0].name == "server") &&
        parts[1].name == "names") {
      parts.insert(parts.begin(), PathPart{"record", 0});
    }
    for (auto& root : json_roots(o_.target)) {
      if (parts.size() < 2 || parts[0].name != root.prefix) continue;
      std::string path = "$";
      for (size_t i = 1; i < parts.size(); i++) {
        const PathPart& p = parts[i];
        if (!p.name.empty()) {
          std::string name = p.name;
          // Header names are lower-case in the record; HTTP's are case-insensitive.
          if (i > 1 && (parts[i - 1].name == "headers" || parts[i - 1].name == "trailers"))
            std::transform(name.begin(), name.end(), name.begin(),
                           [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; });
          path += ".\"" + name + "\"";
        } else if (p.index >= 0) {
          path += "[" + std::to_string(p.index) + "]";
        } else {
          path += "[#" + std::to_string(p.index) + "]";  // from the end: [#-1] is the last
        }
      }
      f.type = Type::Json;
      const std::string literal = "'" + path + "'";
      auto legacy = legacy_columns().find(canonical);
      if (!have(root.needs)) {
        f.sql = legacy != legacy_columns().end() ? legacy->second : "NULL";
        return f;
      }
      f.json_column = root.column;
      f.json_path = literal;
      const std::string extract = "json_extract(" + f.json_column + ", " + literal + ")";
      // A row of before is one whose message is there (has_request) but
      // not its JSON; a row of schema 4 without a request has neither, and
      // its method and path columns (the summary) must not stand in.
      const std::string has = root.column == std::string("request") ? "has_request" : "has_response";
      f.sql = legacy == legacy_columns().end() ? extract
                                               : "CASE WHEN " + f.json_column + " IS NULL AND " + has + " THEN " +
                                                     legacy->second + " ELSE " + extract + " END";
      return f;
    }
    std::vector<std::string> names;
    for (auto& d : fields(o_.target)) names.push_back(d.name);
    std::string hint = closest(canonical, names);
    if (hint.empty() && parts.size() >= 2) {
      // request.x with a misspelt root: suggest the root fixed.
      std::vector<std::string> roots;
      for (auto& r : json_roots(o_.target)) roots.push_back(r.prefix);
      const std::string root = closest(parts[0].name, roots);
      if (!root.empty()) hint = root + written.substr(parts[0].name.size());
    }
    if (hint.empty() && parts.size() == 1) {
      for (auto& r : json_roots(o_.target))
        if (parts[0].name == r.prefix)
          throw QueryError(column, quoted(written) + " is a JSON object: name a field in it (" + written + ".field)");
    }
    throw QueryError(column, "unknown field " + quoted(written) +
                                 (hint.empty() ? " (docs/QUERY.md lists the fields)" : " (did you mean " + quoted(hint) + "?)"));
  }

  [[noreturn]] static void fail(size_t column, const std::string& message) { throw QueryError(column, message); }

  static const char* sql_op(Op op, bool negated) {
    switch (op) {
      case Op::Eq: return "=";
      case Op::Ne: return "!=";
      case Op::Lt: return "<";
      case Op::Le: return "<=";
      case Op::Gt: return ">";
      case Op::Ge: return ">=";
      case Op::In: return negated ? "NOT IN" : "IN";
      default: return "";
    }
  }

  static const char* op_name(Op op) {
    switch (op) {
      case Op::Eq: return "==";
      case Op::Ne: return "!=";
      case Op::Lt: return "<";
      case Op::Le: return "<=";
      case Op::Gt: return ">";
      case Op::Ge: return ">=";
      case Op::Contains: return "contains";
      case Op::StartsWith: return "startswith";
      case Op::EndsWith: return "endswith";
      case Op::Matches: return "matches";
      case Op::In: return "in";
    }
    return "?";
  }

  static const char* kind_name(Literal::Kind k) {
    switch (k) {
      case Literal::Kind::Null: return "null";
      case Literal::Kind::Bool: return "a boolean";
      case Literal::Kind::Integer: return "a number";
      case Literal::Kind::Real: return "a number";
      case Literal::Kind::String: return "a string";
      case Literal::Kind::Duration: return "a duration";
    }
    return "a value";
  }

  // The value a literal binds as, compared with field f; QueryError if the
  // two cannot be compared.
  SqlValue value_for(const Field& f, const Literal& l) {
    using K = Literal::Kind;
        switch (f.type) {
      case Type::Text:
      case Type::Flags:
        if (l.kind == K::String) return l.s;
        fail(l.column, quoted(f.name) + " is text: put the value in quotes (" + f.name + " == \"...\")");
      case Type::Integer:
      case Type::Real:
        if (l.kind == K::Integer) return l.i;
        if (l.kind == K::Real) return l.r;
        if (l.kind == K::String)
          fail(l.column, quoted(f.name) + " is a number: write it without quotes");
        fail(l.column, quoted(f.name) + " is a number, not " + kind_name(l.kind));
      case Type::Duration: {
        if (l.kind != K::Duration)
          fail(l.column, quoted(f.name) + " is a duration: give a unit (200ms, 1.5s, 30us, 2m)");
        // The column's unit: an exact integer when it divides, else a real
        // (1500ns against microseconds is 1.5).
        if (l.i % f.unit_ns == 0) return l.i / f.unit_ns;
        return static_cast<double>(l.i) / static_cast<double>(f.unit_ns);
      }
      case Type::Time: {
        if (l.kind != K::String)
          fail(l.column, quoted(f.name) + " is a time: give it in quotes, RFC 3339 (\"2026-11-23T01:52:00Z\") or relative (\"-5m\")");
        const uint64_t now = o_.now_ns ? o_.now_ns : realtime_now_ns();
        TimeParseResult t = parse_time_arg(l.s, now);
        if (!t.ns) fail(l.column, "bad time " + quoted(l.s) + ": " + t.error);
        if (*t.ns > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) fail(l.column, "time out of range");
        return static_cast<int64_t>(*t.ns);
      }
      case Type::Json:
        switch (l.kind) {
          case K::String: return l.s;
          case K::Integer: return l.i;
          case K::Real: return l.r;
          case K::Bool: return int64_t{l.b ? 1 : 0};  // what json_extract gives for true and false
          case K::Duration:
            fail(l.column, "a duration compares with duration fields (duration), not with " + quoted(f.name));
          case K::Null: return nullptr;
        }
        break;
      case Type::FlagArray:
        if (l.kind == K::String) return l.s;
        fail(l.column, quoted(f.name) + " holds names: put the value in quotes");
      case Type::Object:
        fail(l.column, quoted(f.name) + " is an object: compare it with null, or name a field in it (" + f.name + ".field)");
    }
    fail(l.column, "cannot compare " + quoted(f.name) + " with " + kind_name(l.kind));
  }

  std::string compare(const Expr& e) {
    Field f = resolve(e.field, e.field_column);
    if (!e.other_field.empty()) return compare_fields(e, f);
    const Literal& v = e.value;
    std::string out;
    switch (e.op) {
      case Op::Eq:
      case Op::Ne:
        if (v.kind == Literal::Kind::Null) {
          if (f.type == Type::Object) return "(" + f.sql + (e.op == Op::Eq ? " = 0)" : " != 0)");
          return "(" + f.sql + (e.op == Op::Eq ? " IS NULL)" : " IS NOT NULL)");
        }
        if (f.type == Type::Object) object_misuse(e, f);
        [[fallthrough]];
      case Op::Lt:
      case Op::Le:
      case Op::Gt:
      case Op::Ge:
        if (f.type == Type::Object) object_misuse(e, f);
        if (v.kind == Literal::Kind::Null)
          throw QueryError(v.column, "null compares with == and != only");
        if (f.type == Type::FlagArray)
          throw QueryError(e.op_column, quoted(f.name) + " is a list of names: use contains");
        if ((f.type == Type::Duration || f.type == Type::Time || f.type == Type::Integer || f.type == Type::Real) &&
            v.kind == Literal::Kind::Bool)
          throw QueryError(v.column, quoted(f.name) + " is not a boolean");
        return "(" + f.sql + " " + sql_op(e.op, false) + " " + param(value_for(f, v)) + ")";
      case Op::In: {
        if (f.type == Type::Object) object_misuse(e, f);
        if (f.type == Type::FlagArray)
          throw QueryError(e.op_column, "in does not apply to " + quoted(f.name));
        out = "(" + f.sql + " " + sql_op(Op::In, e.negated) + " (";
        for (size_t i = 0; i < e.list.size(); i++) {
          if (e.list[i].kind == Literal::Kind::Null)
            throw QueryError(e.list[i].column, "null in a list: test it with == null");
          out += (i ? ", " : "") + param(value_for(f, e.list[i]));
        }
        return out + "))";
      }
      case Op::Contains:
      case Op::StartsWith:
      case Op::EndsWith:
      case Op::Matches: return string_op(e, f);
    }
    throw QueryError(e.op_column, "bad operator");
  }

  [[noreturn]] static void object_misuse(const Expr& e, const Field& f) {
    throw QueryError(e.op_column, quoted(f.name) + " is an object: compare it with null (" + f.name +
                                      " == null), or name a field in it (" + f.name + ".status)");
  }

  std::string string_op(const Expr& e, const Field& f) {
    const Literal& v = e.value;
    if (f.type == Type::Object) object_misuse(e, f);
    if (f.type != Type::Text && f.type != Type::Json && f.type != Type::Flags && f.type != Type::FlagArray)
      throw QueryError(e.op_column, std::string(op_name(e.op)) + " works on text; " + quoted(f.name) + " is not text");
    if (f.type == Type::FlagArray && e.op != Op::Contains)
      throw QueryError(e.op_column, quoted(f.name) + " is a list of names: use contains");
    if (v.kind != Literal::Kind::String)
      throw QueryError(v.column, std::string(op_name(e.op)) + " takes a string, not " + kind_name(v.kind));
    std::string test;
    switch (e.op) {
      case Op::Contains:
        if (f.type == Type::Flags) {
          check_flag(v);
          // Membership, not a substring: "truncated" is not "body_truncated".
          test = "instr(',' || " + f.sql + " || ',', " + param(std::string("," + v.s + ",")) + ") > 0";
        } else if (f.type == Type::FlagArray) {
          if (f.json_column.empty()) {
            test = "0";
          } else {
            test = "EXISTS (SELECT 1 FROM json_each(" + f.json_column + ", " + f.json_path + ") WHERE value = " +
                   param(v.s) + ")";
          }
        } else if (f.type == Type::Json && !f.json_column.empty()) {
          // A list (redis args, DNS answers): one of its values contains it.
          const std::string p = param(v.s);
          test = "CASE json_type(" + f.json_column + ", " + f.json_path + ") WHEN 'array' THEN EXISTS (SELECT 1 FROM " +
                 "json_each(" + f.json_column + ", " + f.json_path + ") WHERE instr(value, " + p +
                 ") > 0) ELSE instr(" + f.sql + ", " + p + ") > 0 END";
        } else {
          test = "instr(" + f.sql + ", " + param(v.s) + ") > 0";
        }
        break;
      // GLOB is case-sensitive, as the other operators are, and has no
      // escape character: its special characters go in brackets.
      case Op::StartsWith: test = f.sql + " GLOB " + param(glob_escape(v.s) + "*"); break;
      case Op::EndsWith: test = f.sql + " GLOB " + param("*" + glob_escape(v.s)); break;
      case Op::Matches: {
        if (std::string err = regex_error(v.s); !err.empty()) throw QueryError(v.column, "bad regex: " + err);
        test = "tw_regexp(" + param(v.s) + ", " + f.sql + ")";
        break;
      }
      default: throw QueryError(e.op_column, "bad operator");
    }
    // `not contains`: SQL NOT keeps NULL (a field the call lacks) false.
    return e.negated ? "(NOT (" + test + "))" : "(" + test + ")";
  }

  void check_flag(const Literal& v) {
    std::vector<std::string> known = proto::flag_names(~0u);
    if (std::find(known.begin(), known.end(), v.s) != known.end()) return;
    std::string hint = closest(v.s, known);
    throw QueryError(v.column, "unknown flag " + quoted(v.s) +
                                   (hint.empty() ? " (flags: " + join(known) + ")" : " (did you mean " + quoted(hint) + "?)"));
  }

  static std::string glob_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
      if (c == '*' || c == '?' || c == '[') {
        out += '[';
        out += c;
        out += ']';
      } else {
        out += c;
      }
    }
    return out;
  }

  // src.namespace == dst.namespace
  std::string compare_fields(const Expr& e, const Field& a) {
    Field b = resolve(e.other_field, e.other_column);
    if (e.op != Op::Eq && e.op != Op::Ne && e.op != Op::Lt && e.op != Op::Le && e.op != Op::Gt && e.op != Op::Ge)
      throw QueryError(e.op_column, "a field compares with another one with ==, !=, <, <=, >, >= only");
    auto group = [](Type t) {
      switch (t) {
        case Type::Text: return 1;
        case Type::Integer:
        case Type::Real: return 2;
        case Type::Duration: return 3;
        case Type::Time: return 4;
        case Type::Json: return 0;  // any
        default: return -1;
      }
    };
    const int ga = group(a.type), gb = group(b.type);
    if (ga < 0 || gb < 0 || (ga && gb && ga != gb))
      throw QueryError(e.other_column, quoted(a.name) + " and " + quoted(b.name) + " do not compare");
    // Durations in nanoseconds on both sides (their columns' units differ).
    auto scaled = [](const Field& f) {
      return f.type == Type::Duration && f.unit_ns != 1 ? "(" + f.sql + " * " + std::to_string(f.unit_ns) + ")" : f.sql;
    };
    return "(" + scaled(a) + " " + sql_op(e.op, false) + " " + scaled(b) + ")";
  }
};

}  // namespace

ExprPtr parse(std::string_view text) {
  Source src{text};
  Lexer lexer(src);
  Parser parser(src, lexer.run());
  return parser.run();
}

CompiledQuery compile(const Expr& e, const CompileOptions& o) {
  if (o.first_param < 1 || o.first_param > 10000) throw QueryError(1, "bad first parameter number");
  return Compiler(o).run(e);
}

CompiledQuery compile(std::string_view text, const CompileOptions& o) { return compile(*parse(text), o); }

void detect_columns(sqlite3* db, CompileOptions& o) {
  auto has = [&](const char* sql) {
    sqlite3_stmt* st = nullptr;
    const bool ok = sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK;
    sqlite3_finalize(st);
    return ok;
  };
  o.identity_columns = has("SELECT node FROM calls LIMIT 0");
  o.record_columns = has("SELECT upgrade_id FROM calls LIMIT 0");
}

int bind(sqlite3_stmt* st, const CompiledQuery& q) {
  for (size_t i = 0; i < q.params.size(); i++) {
    const int n = q.first_param + static_cast<int>(i);
    const SqlValue& v = q.params[i];
    int rc;
    if (std::holds_alternative<int64_t>(v)) {
      rc = sqlite3_bind_int64(st, n, std::get<int64_t>(v));
    } else if (std::holds_alternative<double>(v)) {
      rc = sqlite3_bind_double(st, n, std::get<double>(v));
    } else if (std::holds_alternative<std::string>(v)) {
      const std::string& s = std::get<std::string>(v);
      rc = sqlite3_bind_text(st, n, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
    } else {
      rc = sqlite3_bind_null(st, n);
    }
    if (rc != SQLITE_OK) return rc;
  }
  return SQLITE_OK;
}

int register_functions(sqlite3* db) {
  auto* state = new RegexState();
  // SQLite owns the state from here: it calls the destructor when the
  // function goes (the connection closes), and also if this call fails.
  return sqlite3_create_function_v2(db, "tw_regexp", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, state,
                                    regexp_function, nullptr, nullptr,
                                    [](void* p) { delete static_cast<RegexState*>(p); });
}

std::string regex_error(std::string_view pattern) {
  if (pattern.find('\0') != std::string_view::npos) return "contains a NUL byte";
  Regex re(pattern);
  return re.code ? "" : re.error;
}

std::vector<std::string> field_names(Target t) {
  std::vector<std::string> out;
  for (auto& f : fields(t)) out.push_back(f.name);
  for (auto& r : json_roots(t)) out.push_back(std::string(r.prefix) + ".<path>");
  if (t == Target::Flows) {
    out.push_back("client.names");
    out.push_back("server.names");
  }
  return out;
}

}  // namespace tapwire::serve
