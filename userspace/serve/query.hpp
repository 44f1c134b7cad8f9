// The query language of calls and flows (docs/QUERY.md):
//
//   http and response.status >= 500 and dst.namespace == "shop"
//   src.pod matches "^api-" and duration > 200ms
//
// Text is tokenized and parsed (recursive descent) into an AST, and the AST
// is compiled to a WHERE fragment for the dissection DB's `calls` or `flows`
// table plus the values it binds. No text of the query reaches the SQL:
// field names go through a fixed table to column expressions (or to
// json_extract() with a path of checked identifier characters), and every
// value is a bound parameter. Errors say which column of the query is wrong.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace tapwire::serve {

// Bounds on what a query may be, so that hostile text costs little and
// fails with a message rather than deep in SQLite (whose expression depth
// limit is 1000) or the stack.
inline constexpr size_t kMaxQueryBytes = 64 * 1024;
inline constexpr int kMaxDepth = 64;  // parentheses and `not`s nested
inline constexpr size_t kMaxConditions = 256;  // comparisons and bare names in one query
inline constexpr size_t kMaxListItems = 1024;  // in [...]
inline constexpr size_t kMaxValues = 4096;  // values in one query, lists included (SQLite binds 32766 at most)
inline constexpr size_t kMaxPatternBytes = 1024;  // a `matches` regex
inline constexpr size_t kMaxPathSegments = 16;  // request.a.b.c...

// A query that does not tokenize, parse or compile. what() is
// "column N: message"; column is 1-based, in characters (UTF-8 code points)
// from the start of the query.
class QueryError : public std::runtime_error {
 public:
  QueryError(size_t column, const std::string& message);
  size_t column() const { return column_; }
  const std::string& message() const { return message_; }

 private:
  size_t column_;
  std::string message_;
};

// ------------------------------------------------------------------ AST --

struct Literal {
  enum class Kind { Null, Bool, Integer, Real, String, Duration };
  Kind kind = Kind::Null;
  bool b = false;
  int64_t i = 0;  // Integer; Duration in nanoseconds
  double r = 0;
  std::string s;
  size_t column = 0;
};

enum class Op {
  Eq, Ne, Lt, Le, Gt, Ge,
  Contains, StartsWith, EndsWith, Matches, In,
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    And,  // children, two or more
    Or,  // children, two or more
    Not,  // children[0]
    Compare,  // field op value / values / other_field
    Bare,  // a word on its own: a protocol name (http, dns, ...)
  };
  Kind kind = Kind::Compare;
  size_t column = 0;  // where it starts
  std::vector<ExprPtr> children;
  // Compare:
  std::string field;  // as written (request.headers.host, request.args[0])
  size_t field_column = 0;
  Op op = Op::Eq;
  bool negated = false;  // not in, not contains, ...
  size_t op_column = 0;
  Literal value;  // the right side, unless a list or a field
  std::vector<Literal> list;  // In
  std::string other_field;  // the right side is a field (==, !=, <, ...)
  size_t other_column = 0;
  // Bare: the word is in `field`.
};

// Throws QueryError.
ExprPtr parse(std::string_view text);

// ------------------------------------------------------------- compiler --

enum class Target { Calls, Flows };

struct CompileOptions {
  Target target = Target::Calls;
  // Parameters are ?N from this number on, so that the fragment can join a
  // statement that binds its own first (CallDb::Query::extra_where).
  int first_param = 1;
  // A DB of an older schema read without migrating it lacks columns: their
  // fields read as NULL (detect_columns() tells).
  bool identity_columns = true;  // calls: node, src_*, dst_* (schema 2)
  bool record_columns = true;  // calls: request, response, upgrade_id (schema 4)
  // "now" for relative times (ts > "-5m"); 0: the clock's.
  uint64_t now_ns = 0;
};

// Looks at the DB's `calls` table for the columns above.
void detect_columns(sqlite3* db, CompileOptions& o);

using SqlValue = std::variant<std::nullptr_t, int64_t, double, std::string>;

struct CompiledQuery {
  std::string where;  // a boolean SQL expression over the target's table
  std::vector<SqlValue> params;  // ?first_param, ?first_param + 1, ...
  int first_param = 1;
};

// Throws QueryError.
CompiledQuery compile(const Expr& e, const CompileOptions& o = {});
CompiledQuery compile(std::string_view text, const CompileOptions& o = {});

// Binds q's parameters to st (their numbers as compiled). Returns the
// SQLite error code of the first bind that fails (SQLITE_OK when none).
int bind(sqlite3_stmt* st, const CompiledQuery& q);

// Registers tw_regexp(PATTERN, VALUE) on db, the function `matches`
// compiles to: PCRE2, UTF-8, unanchored; NULL for a NULL value; compiled
// patterns cached per connection; each match bounded (match, depth and
// heap limits) so that a pattern that backtracks badly fails the query with
// an error instead of running for minutes. Returns an SQLite error code.
int register_functions(sqlite3* db);

// Why PATTERN is not a regex `matches` takes ("" if it is one).
std::string regex_error(std::string_view pattern);

// The fields of a target, for help texts and suggestions: fixed names, and
// "request.<path>" style entries for the JSON objects.
std::vector<std::string> field_names(Target t);

}  // namespace tapwire::serve
