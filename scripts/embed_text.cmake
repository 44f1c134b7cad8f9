# Writes the text file IN as a C++ header OUT defining
#   inline constexpr std::string_view NAME = R"...(...)...";
# so that a binary carries the file (tapwire serve's docs/openapi.json).
# Run as: cmake -DIN=... -DOUT=... -DNAME=... -P embed_text.cmake
file(READ "${IN}" text)
string(FIND "${text}" ")tw_embed\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${IN} holds the raw string's delimiter")
endif()
set(body "// Generated from ${IN} by scripts/embed_text.cmake: do not edit.\n#pragma once\n#include <string_view>\ninline constexpr std::string_view ${NAME} = R\"tw_embed(${text})tw_embed\";\n")
# Rewritten only when it changes, so that what includes it is not rebuilt for nothing.
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
  if(old STREQUAL body)
    return()
  endif()
endif()
file(WRITE "${OUT}" "${body}")
