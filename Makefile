# tapwire: the front door. `make run` captures on this host; `make test` runs every test.
BUILD_DIR ?= build
ASAN_DIR  ?= build-asan
JOBS      ?= $(shell nproc)
DATA_DIR  ?= /var/lib/tapwire
RUN_ARGS  ?=

.PHONY: all deps configure build asan run test unit-test integration-test bench clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo

configure: $(BUILD_DIR)/CMakeCache.txt

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

# Raw capture on every non-loopback interface of this host, live dissection,
# and the API calls shown as they are dissected, in the foreground.
run: deps build
	BUILD_DIR=$(BUILD_DIR) DATA_DIR=$(DATA_DIR) RUN_ARGS="$(RUN_ARGS)" bash scripts/run.sh

# Unit tests under ASan/UBSan first (they catch memory errors), then on the
# normal build the tests that need it: the network-namespace integration
# tests, the fuzz smoke run (on the fuzz targets of the sanitizer build) and
# the heap measurements ASan's allocator hides from (DissectorMemory).
test: deps build asan
	cd $(ASAN_DIR) && ctest --output-on-failure -L unit -j $(JOBS)
	cd $(BUILD_DIR) && ctest --output-on-failure -L unit -R '^DissectorMemory\.'
	cd $(BUILD_DIR) && TAPWIRE_FUZZ_DIR=$(abspath $(ASAN_DIR)) ctest --output-on-failure --timeout 600 -LE unit

# One clang build with ASan and UBSan for the unit tests and the libFuzzer
# targets alike (tests/fuzz/README.md): the libraries are compiled once.
$(ASAN_DIR)/CMakeCache.txt:
	cmake -S . -B $(ASAN_DIR) -DCMAKE_BUILD_TYPE=Debug -DTAPWIRE_SANITIZE=ON -DTAPWIRE_FUZZ=ON \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++

asan: $(ASAN_DIR)/CMakeCache.txt
	cmake --build $(ASAN_DIR) -j $(JOBS) --target tapwire-unit-tests tapwire tapwire-fuzzers

unit-test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -L unit

integration-test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -L integration

bench: deps build
	bash scripts/bench.sh

clean:
	rm -rf $(BUILD_DIR) $(ASAN_DIR) $(FUZZ_DIR)

# Fuzzing (tests/fuzz/README.md): libFuzzer targets, built with clang at -O1
# in their own build dir. `make fuzz` runs each FUZZ_SECONDS and stops at the
# first crash; `make fuzz-smoke` is the short run CI does (in make test, on
# the targets of the sanitizer build).
FUZZ_DIR           ?= build-fuzz
FUZZ_SECONDS       ?= 300
FUZZ_SMOKE_SECONDS ?= 20
FUZZ_TARGETS       ?=
.PHONY: fuzz fuzz-build fuzz-smoke
fuzz-build: deps
	FUZZ_DIR=$(FUZZ_DIR) JOBS=$(JOBS) bash tests/fuzz/run.sh build
fuzz: fuzz-build
	FUZZ_DIR=$(FUZZ_DIR) FUZZ_SECONDS=$(FUZZ_SECONDS) bash tests/fuzz/run.sh fuzz $(FUZZ_TARGETS)
fuzz-smoke: fuzz-build
	FUZZ_DIR=$(FUZZ_DIR) FUZZ_SMOKE_SECONDS=$(FUZZ_SMOKE_SECONDS) bash tests/fuzz/run.sh smoke $(FUZZ_TARGETS)
