#!/usr/bin/env bash
# Builds the dashboard (ui/ -> ui/dist; docs/DASHBOARD.md): npm ci first when
# ui/node_modules does not match ui/package-lock.json (make deps does it too).
# Run by the CMake target tapwire-ui when a source is newer than ui/dist.
set -euo pipefail
cd "$(dirname "$0")/../ui"
if ! cmp -s package-lock.json node_modules/.tw-lock; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.tw-lock
fi
npm run build --silent
