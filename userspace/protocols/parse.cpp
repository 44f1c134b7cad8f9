#include "parse.hpp"

namespace tapwire::proto {

const char* to_string(ParseStatus s) {
  switch (s) {
    case ParseStatus::NeedMoreData:
      return "need-more-data";
    case ParseStatus::Invalid:
      return "invalid";
    case ParseStatus::Ignored:
      return "ignored";
    case ParseStatus::Done:
      return "done";
  }
  return "unknown";
}

}  // namespace tapwire::proto
