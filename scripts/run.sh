#!/usr/bin/env bash
# `make run`: raw capture on this host's interfaces, live dissection, and the
# API calls as they are dissected, in this terminal. Ctrl-C stops everything
# (the sensor drains, seals its segment and detaches).
#   DATA_DIR (default /var/lib/tapwire), RUN_ARGS: extra tapwire-sensor flags.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
DATA_DIR="${DATA_DIR:-/var/lib/tapwire}"
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E "$0" "$@"
fi
mkdir -p "$DATA_DIR"
sensor_log="$DATA_DIR/sensor.log"
pids=()
stop() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo "tapwire: stopped; segments are in $DATA_DIR/segments, calls in $DATA_DIR/dissection.db"
}
trap stop INT TERM EXIT

# The sensor runs the dissector as its child (dissection on, no idle stop).
# shellcheck disable=SC2086
"$BUILD_DIR/tapwire-sensor" --data-dir "$DATA_DIR" --dissection --dissection-stop-after 0 ${RUN_ARGS:-} \
  >"$sensor_log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  grep -q '"state": "capturing"' "$DATA_DIR/status.json" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$sensor_log" >&2; exit 1; }
  sleep 0.1
done
grep 'capturing on' "$sensor_log" || true
echo "tapwire: capturing; API calls appear below as they are dissected (Ctrl-C stops)."
echo "         in another terminal: $BUILD_DIR/tapwire status --data-dir $DATA_DIR"
"$BUILD_DIR/tapwire" tail --data-dir "$DATA_DIR"
