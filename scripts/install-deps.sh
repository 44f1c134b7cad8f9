#!/usr/bin/env bash
# Installs every build and test dependency from Debian packages,
# non-interactively and idempotently: nothing happens when all are present.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config clang llvm libelf-dev zlib1g-dev
  libbpf-dev bpftool liburing-dev libmimalloc-dev prometheus-cpp-dev
  libgtest-dev libgmock-dev libbenchmark-dev libpcap-dev libsqlite3-dev
  libyaml-cpp-dev libcli11-dev nlohmann-json3-dev libnghttp2-dev libzstd-dev
  libsystemd-dev linux-libc-dev libisal-dev libssl-dev libarchive-dev libcurl4-openssl-dev
  libseccomp-dev libbrotli-dev
  # gRPC messages decoded with .proto files: libprotobuf; its .proto importer's
  # headers (compiler/importer.h) are packaged in libprotoc-dev (the code is in libprotobuf)
  libprotobuf-dev libprotoc-dev
  # MongoDB (userspace/protocols/mongodb/): BSON through libbson, OP_COMPRESSED's snappy
  libbson-dev libsnappy-dev
  # the query language's `matches` (userspace/serve/query.cpp): PCRE2
  libpcre2-dev
  # tapwire serve's HTTP server and the unit tests' client (userspace/serve/)
  libcpp-httplib-dev
  # fuzzing (make fuzz): libFuzzer and the sanitizers' runtime for clang
  libclang-rt-14-dev
  # test lab and references
  python3 iproute2 procps psmisc nginx-light dnsmasq-base curl wrk dnsutils iputils-ping
  tcpdump tshark prometheus iperf3
  # flow tests (tests/integration/test_flows.py): nft drops SYNs in the lab's server namespace
  nftables
  # tapwire map --format svg runs Graphviz's dot
  graphviz
  # identity lab (tests/integration/identity_lab.py): pods' servers and clients, the test API server's TLS
  redis-server redis-tools openssl zstd
  # bodies (tests/integration/test_bodies.py): files served precompressed with br and zstd
  brotli
  # HTTP/2 and gRPC (tests/integration/test_http2.py, test_grpc.py): nghttp and h2load, nghttpd,
  # nghttpx (Upgrade: h2c); a gRPC server and client in Python (run by /usr/bin/python3)
  nghttp2-client nghttp2-server nghttp2-proxy python3-grpcio
  # WebSocket peers (tests/integration/test_websocket.py): server and client of python3-websockets
  python3-websockets
  # AMQP 0-9-1 (tests/integration/test_amqp.py): a RabbitMQ broker run in the lab, librabbitmq's clients
  rabbitmq-server amqp-tools
  # PostgreSQL server, psql and pgbench (tests/integration/test_postgres.py, make bench)
  postgresql
  # MySQL / MariaDB (tests/integration/test_mysql.py): mariadbd, the mariadb client and mysqlslap,
  # server-side prepared statements from Perl's DBD::MariaDB
  mariadb-server mariadb-client libdbd-mariadb-perl
  # benchmarks: peak memory of a command (scripts/bench_identity.py)
  time
  # HAR export check (tests/integration/test_dissect_snapshot.py): a real HAR 1.2 schema validator
  nodejs node-har-validator
  # packaging checks (tests/integration/test_packaging.py)
  python3-yaml systemd
  # the dashboard's browser test (tests/integration/test_dashboard.py): headless Chromium,
  # driven by playwright-core from ui/node_modules (no browser download)
  chromium
)

# kubectl checks the test API server's fidelity (tests/integration/kubeapi.py);
# Debian's is in kubernetes-client. A kubectl already on the PATH is used as is.
if ! command -v kubectl >/dev/null 2>&1; then PACKAGES+=(kubernetes-client); fi

# npm packages, each set pinned by its package-lock.json: the dashboard's (ui/,
# docs/DASHBOARD.md) and the MCP client test's (tests/mcp/, the official client
# SDK). npm ci only when DIR/node_modules does not hold exactly the lock file's
# packages (it keeps a copy of the lock file). node is nodejs's (above); npm
# comes with it where that is NodeSource's build, else from Debian's npm.
if ! command -v npm >/dev/null 2>&1; then PACKAGES+=(npm); fi
npm_deps() {
  local dir
  dir="$(cd "$(dirname "$0")/.." && pwd)/$1"
  if cmp -s "$dir/package-lock.json" "$dir/node_modules/.tw-lock"; then
    echo "deps: $1/node_modules current"
    return 0
  fi
  echo "deps: npm ci --prefix $1"
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
  cp "$dir/package-lock.json" "$dir/node_modules/.tw-lock"
}

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PACKAGES[@]} packages present"
  npm_deps ui
  npm_deps tests/mcp
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer no without a prompt.
echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
npm_deps ui
npm_deps tests/mcp
