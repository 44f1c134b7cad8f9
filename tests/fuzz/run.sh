#!/usr/bin/env bash
# Builds and runs the libFuzzer targets of tests/fuzz (README.md there).
#
#   run.sh build              configure FUZZ_DIR with clang (-DTAPWIRE_FUZZ=ON) and build every target
#   run.sh fuzz [NAME...]     each target FUZZ_SECONDS (300) on its corpus, FUZZ_JOBS (1) at a time;
#                             stops at the first crash and says how to reproduce it
#   run.sh smoke [NAME...]    replays tests/fuzz/regressions/NAME/*, then runs each target
#                             FUZZ_SMOKE_SECONDS (20), FUZZ_JOBS (2) at a time (CI: ctest -L fuzz)
#   run.sh replay [NAME...]   the regression fixtures only
#
# NAME is a target without _fuzz (http1, dns, ...); none: all of them. A
# target's libFuzzer options (-max_len) are on its "// libFuzzer:" line; a
# dictionary, if any, is tests/fuzz/dict/NAME.dict. New corpus entries go to
# FUZZ_DIR/corpus/NAME (the seeds in tests/fuzz/corpus/NAME are only read),
# crashes to FUZZ_DIR/artifacts/NAME/, logs to FUZZ_DIR/logs/NAME.log.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/fuzz
FUZZ_DIR=${FUZZ_DIR:-build-fuzz}
[[ $FUZZ_DIR = /* ]] || FUZZ_DIR=$ROOT/$FUZZ_DIR
FUZZ_SECONDS=${FUZZ_SECONDS:-300}
FUZZ_SMOKE_SECONDS=${FUZZ_SMOKE_SECONDS:-20}
JOBS=${JOBS:-$(nproc)}
# Limits of every run: a slow input or one that eats memory is a finding too.
COMMON=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)

all_targets() {
  local f
  for f in "$HERE"/*_fuzz.cpp; do
    f=${f##*/}
    echo "${f%_fuzz.cpp}"
  done
}

# The target's own libFuzzer options: its "// libFuzzer: ..." line.
target_options() {
  sed -n 's|^// libFuzzer: *||p' "$HERE/$1_fuzz.cpp" | head -n 1
}

need_binaries() {
  local missing=() t
  for t in "$@"; do [[ -x $FUZZ_DIR/${t}_fuzz ]] || missing+=("$t"); done
  ((${#missing[@]} == 0)) && return 0
  echo "fuzz: no fuzz build for ${missing[*]} in $FUZZ_DIR (make fuzz-build builds it)" >&2
  # Under CI a test that cannot run fails instead of skipping (README.md).
  [[ ${CI:-} == true ]] && exit 1
  exit 77
}

build() {
  command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (make deps installs it)" >&2; exit 1; }
  if [[ ! -f $FUZZ_DIR/CMakeCache.txt ]]; then
    cmake -S "$ROOT" -B "$FUZZ_DIR" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
      -DTAPWIRE_FUZZ=ON -DTAPWIRE_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g" "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g"  # -O1, asserts on
  fi
  cmake --build "$FUZZ_DIR" --target tapwire-fuzzers -j "$JOBS"
}

# Replays tests/fuzz/regressions/NAME/*: each must run clean.
replay_one() {
  local t=$1 dir=$HERE/regressions/$1 files=()
  [[ -d $dir ]] || return 0
  mapfile -t files < <(find "$dir" -type f ! -name 'README*' | sort)
  ((${#files[@]})) || return 0
  mkdir -p "$FUZZ_DIR/logs"
  local log=$FUZZ_DIR/logs/$t.replay.log
  if "$FUZZ_DIR/${t}_fuzz" "${COMMON[@]}" $(target_options "$t") "${files[@]}" >"$log" 2>&1; then
    echo "fuzz: $t: ${#files[@]} regression fixtures replayed clean"
    return 0
  fi
  echo "fuzz: $t: a regression fixture fails again:" >&2
  grep -E '^Running: |ERROR: |invariant broken|runtime error' "$log" | tail -n 5 >&2 || true
  echo "  reproduce: $FUZZ_DIR/${t}_fuzz FIXTURE   (log: $log)" >&2
  return 1
}

# Runs one target for `seconds`; prints how to reproduce a crash. Exit status
# 255 after a crash in fuzz mode makes xargs start no other target.
run_one() {
  local mode=$1 t=$2 seconds=$3
  local bin=$FUZZ_DIR/${t}_fuzz work=$FUZZ_DIR/corpus/$t art=$FUZZ_DIR/artifacts/$t/ log=$FUZZ_DIR/logs/$t.log
  mkdir -p "$work" "$art" "$FUZZ_DIR/logs"
  local args=("${COMMON[@]}" -max_total_time="$seconds" -artifact_prefix="$art")
  [[ -f $HERE/dict/$t.dict ]] && args+=(-dict="$HERE/dict/$t.dict")
  local start=$SECONDS rc=0
  # shellcheck disable=SC2046  # the options line is words
  "$bin" "${args[@]}" $(target_options "$t") "$work" "$HERE/corpus/$t" >"$log" 2>&1 || rc=$?
  local stats
  stats=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  if ((rc == 0)); then
    echo "fuzz: $t: clean, ${stats:-?} runs in $((SECONDS - start)) s"
    return 0
  fi
  local unit
  unit=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
  {
    echo "fuzz: $t: FAILED (exit $rc) after $((SECONDS - start)) s"
    grep -E 'ERROR: |invariant broken|runtime error|SUMMARY' "$log" | head -n 5 || true
    echo "  log:       $log"
    if [[ -n $unit ]]; then
      echo "  input:     $unit"
      echo "  reproduce: $bin $unit"
      echo "  once fixed, keep it: cp $unit $HERE/regressions/$t/"
    fi
  } >&2
  [[ $mode == fuzz ]] && return 255
  return 1
}

main() {
  local cmd=${1:-}
  shift || true
  case $cmd in
    build) build ;;
    _one) run_one "$@" ;;
    fuzz | smoke | replay)
      local targets=("$@") t failed=0
      ((${#targets[@]})) || mapfile -t targets < <(all_targets)
      need_binaries "${targets[@]}"
      for t in "${targets[@]}"; do replay_one "$t" || failed=1; done
      [[ $cmd == replay ]] && exit "$failed"
      if [[ $cmd == smoke && $failed != 0 ]]; then exit 1; fi
      local seconds=$FUZZ_SECONDS jobs=${FUZZ_JOBS:-1}
      if [[ $cmd == smoke ]]; then
        seconds=$FUZZ_SMOKE_SECONDS
        jobs=${FUZZ_JOBS:-2}
      fi
      echo "fuzz: ${#targets[@]} targets, $seconds s each, $jobs at a time"
      local start=$SECONDS
      printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash "${BASH_SOURCE[0]}" _one "$cmd" {} "$seconds" ||
        failed=1
      echo "fuzz: done in $((SECONDS - start)) s"
      exit "$failed"
      ;;
    *)
      sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
      exit 2
      ;;
  esac
}

export FUZZ_DIR FUZZ_SECONDS FUZZ_SMOKE_SECONDS
main "$@"
