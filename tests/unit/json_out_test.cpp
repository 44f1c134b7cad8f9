// JsonOut against nlohmann::json, the reference: any bytes written as a
// string parse back to what nlohmann's dump (invalid UTF-8 replaced) gives.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "json_out.hpp"

namespace {

std::string reference(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string ours(const std::string& s) {
  std::string out;
  tapwire::append_json_string(out, s);
  return out;
}

TEST(JsonOut, StringsParseAsTheReferenceDumpsThem) {
  const std::string cases[] = {"", "plain ascii text, longer than eight bytes", "quote \" and backslash \\ mid-run",
                               "ctl \x01\x1f tab\t nl\n cr\r ff\f bs\b", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
                               "bad \xff\xfe utf8", "cut \xe2\x82", "overlong \xc0\xaf surrogate \xed\xa0\x80",
                               std::string("nul\0byte", 8), "\x7f del"};
  for (const auto& s : cases)
    EXPECT_EQ(nlohmann::json::parse(ours(s)), nlohmann::json::parse(reference(s))) << s;
}

TEST(JsonOut, RandomBytes) {
  std::mt19937 rng(7);
  for (int n = 0; n < 3000; n++) {
    std::string s(rng() % 64, '\0');
    const int mode = n % 3;  // all bytes, mostly ASCII, ASCII with specials
    for (auto& c : s) {
      const unsigned r = rng();
      c = static_cast<char>(mode == 0 ? r & 0xff : mode == 1 ? (r % 10 == 0 ? r & 0xff : 'a' + r % 26)
                                                             : " \"\\\n\x01" "ab"[r % 7]);
    }
    const std::string got = ours(s);
    ASSERT_TRUE(nlohmann::json::accept(got)) << got;
    EXPECT_EQ(nlohmann::json::parse(got), nlohmann::json::parse(reference(s)));
  }
}

TEST(JsonOut, ObjectsAndArrays) {
  std::string out;
  tapwire::JsonOut j(out);
  j.begin_object();
  j.field("a", 1);
  j.key("b");
  j.begin_array();
  j.number(-2);
  j.unsigned_number(UINT64_MAX);
  j.boolean(true);
  j.null();
  j.begin_object();
  j.end_object();
  j.end_array();
  j.field("c", "x");
  j.key("d");
  j.raw(R"({"e":[]})");
  j.end_object();
  EXPECT_EQ(nlohmann::json::parse(out),
            nlohmann::json::parse(R"({"a":1,"b":[-2,18446744073709551615,true,null,{}],"c":"x","d":{"e":[]}})"));
}

}  // namespace
