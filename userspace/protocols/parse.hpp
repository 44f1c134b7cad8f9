// What every protocol parser returns: how it went and how many bytes it
// consumed. Parsers run on hostile input at line rate: return values, never
// exceptions; every size taken off the wire is checked against a cap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tapwire::proto {

enum class ParseStatus : uint8_t {
  NeedMoreData,  // incomplete: present the unconsumed bytes again, with more after them
  Invalid,  // not this protocol / corrupt: the caller counts it; the parser resynchronises
  Ignored,  // well-formed but of no interest (e.g. a DNS message of an opcode we skip)
  Done,  // a message (or part of one, for streamed bodies) was consumed
};

struct ParseResult {
  ParseStatus status;
  size_t consumed;  // bytes of the input used, also for Invalid (bytes skipped while resynchronising)
};

const char* to_string(ParseStatus s);

// A header as seen on the wire, the name lower-cased.
struct Header {
  std::string name;
  std::string value;
};

}  // namespace tapwire::proto
