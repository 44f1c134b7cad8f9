#!/usr/bin/env bash
# tapwire benchmark (`make bench`): wrk against nginx over a veth pair with no
# capture, with tapwire-sensor and with `tcpdump -w`, side by side in one run;
# prints a markdown table. Needs root. Durations are bounded; everything it
# creates (namespaces, processes, files) is removed on exit.
#   TW_BENCH_SECONDS=10 TW_BENCH_ROUNDS=1 TW_BENCH_CONNS=8 TW_BENCH_FILES=10k.bin,100b.bin
set -euo pipefail
cd "$(dirname "$0")/.."
export TW_BUILD_DIR="${TW_BUILD_DIR:-$PWD/build}"
export PYTHONDONTWRITEBYTECODE=1
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E "$0" "$@"
fi
# A hard ceiling so that a hung run cannot block forever (3 configs x files x rounds).
timeout --signal=TERM --kill-after=30 1800 python3 scripts/bench_run.py "$@"
# Dissection (issues 3 and 10): tapwire-dissector vs tshark on captures of wrk (HTTP/1), h2load
# (HTTP/2) and a python3-grpcio client (gRPC); TW_BENCH_DISSECT_PROTOCOLS=http1,http2,grpc picks them.
timeout --signal=TERM --kill-after=30 3600 python3 scripts/bench_dissect.py
timeout --signal=TERM --kill-after=30 1200 python3 scripts/bench_snapshot.py
# Identity (issue 8): cost per packet and per call, memory per 10k pods, API requests per minute.
timeout --signal=TERM --kill-after=30 1800 python3 scripts/bench_identity.py
# Flows (issue 12): requests/s with flow accounting on and off, CPU per million packets, memory per 100k flows.
timeout --signal=TERM --kill-after=30 1800 python3 scripts/bench_flows.py
# tapwire serve (issue 14): query latency over 1M calls, the live stream's delay at 10k calls/s, memory.
timeout --signal=TERM --kill-after=30 1200 python3 scripts/bench_serve.py
