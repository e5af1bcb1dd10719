# ngx_http_rules_module: the one entry point.
#
#   make deps    install build and test dependencies (Debian 12, as root)
#   make         build the module, librules.a, rules-replay, unit tests
#   make demo    start Redis + nginx + module and replay a pixel sequence
#   make test    run the whole test suite (starts and stops its own Redis)
#   make test-valgrind, make test-asan   the nginx tests, memory-checked
#   make test-faults   the Redis fault test under load, longer
#   make coverage      the suite's line coverage of the C sources (gcov)
#   make deps-build, make dist   only what an installation needs (Dockerfile)
#   make docker-check  build the Docker image and check it end to end
#   make clean

SHELL := /bin/bash

# nginx's configure and sources (nginx-dev), and the addon they build.  The
# addon can be pointed elsewhere (a scratch module, to check the toolchain):
#   make module MODULE_DIR=/tmp/scratch MODULE_NAME=ngx_http_scratch_module \
#        BUILD=/tmp/scratch-build
NGX_SRC     ?= /usr/share/nginx/src
MODULE_DIR  ?= $(CURDIR)
MODULE_NAME ?= ngx_http_rules_module
# --with-cc-opt for the module objects, after nginx's own flags (-pipe -O
# -W -Wall -Wpointer-arith -Wno-unused-parameter -Werror -g, and -fPIC for
# module objects): by default those Debian 12 builds its nginx and its
# nginx modules with (nginx -V, dpkg-buildflags), so -O2 rather than -O
# (3 % fewer of the worker's instructions per request at the 5 rules,
# make bench-nginx-callgrind), with the stack protector and
# _FORTIFY_SOURCE's checked copies; empty: nginx's flags alone
NGX_CC_OPT  ?= -g -O2 -fstack-protector-strong -Wformat \
               -Werror=format-security -Wdate-time -D_FORTIFY_SOURCE=2
# extra --with-ld-opt (the link of the module .so)
NGX_LD_OPT  ?=
BUILD       ?= $(CURDIR)/build
NGX_BUILD   := $(BUILD)/nginx
MODULE      := $(NGX_BUILD)/$(MODULE_NAME).so

CC         ?= cc
CFLAGS     ?= -O2 -g
WARN       := -Wall -Wextra -Wpointer-arith -Wno-unused-parameter -Werror
ENGINE_CFLAGS := $(CFLAGS) $(WARN) -fPIC -Isrc
LIBS       := -lhiredis -ljansson -lpcre2-8

ENGINE_SRCS := $(wildcard src/*.c)
ENGINE_HDRS := $(wildcard src/*.h)
ENGINE_OBJS := $(patsubst src/%.c,$(BUILD)/engine/%.o,$(ENGINE_SRCS))
# the optional Redis module (RULES.STORE, the state script in C)
REDIS_MODULE      := $(BUILD)/rules_redis_module.so
REDIS_MODULE_SRCS := $(wildcard redis_module/*.c) src/rules_sha1.c \
                     src/rules_script.c
UNIT_SRCS   := $(wildcard t/unit/test_*.c)
UNIT_BINS   := $(patsubst t/unit/%.c,$(BUILD)/unit/%,$(UNIT_SRCS))
FUZZ_SRCS   := $(wildcard t/fuzz/fuzz_*.c)
FUZZ_BINS   := $(patsubst t/fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRCS))
FUZZ_SECS   ?= 300
FUZZ_CFLAGS := -g -O1 -Wall -Werror -fsanitize=fuzzer,address,undefined -Isrc

# libc6-dev is only a Recommends of gcc, and libclang-rt-14-dev (the
# libFuzzer and sanitizer runtimes) only a Recommends of clang-14: with
# --no-install-recommends they must be named.  prometheus: promtool checks
# the monitoring examples.
DEB_BUILD_PACKAGES := nginx nginx-dev libhiredis-dev libjansson-dev \
                      libpcre2-dev gcc libc6-dev make perl
DEB_PACKAGES := $(DEB_BUILD_PACKAGES) redis-server redis-tools \
                libtest-base-perl wrk gnuplot-nox curl valgrind clang \
                libclang-rt-14-dev prometheus gdb openssl

.PHONY: all build module deps demo test test-valgrind test-asan test-faults \
        asan clean script bench bench-callgrind bench-redis-callgrind \
        bench-nginx-callgrind bench-ab fuzz \
        deps-build dist \
        docker-check coverage coverage-build FORCE

all: build

build: $(MODULE) $(BUILD)/librules.a $(BUILD)/rules-replay $(UNIT_BINS) \
       $(FUZZ_BINS) $(REDIS_MODULE) $(BUILD)/failalloc.so

# apt only when a package is missing (dpkg-query), so repeated runs are
# instant; otherwise apt-get update + install with no questions (no stdin,
# conffiles kept), the packages' own services (a system-wide redis-server,
# prometheus) kept from starting by a temporary policy-rc.d: the tests and
# the demo start their own.  deps-build: only what "make dist" needs (the
# Dockerfile's build stage).
deps: DEPS := $(DEB_PACKAGES)
deps-build: DEPS := $(DEB_BUILD_PACKAGES)
deps deps-build:
	@missing=$$(for p in $(DEPS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	        | grep -q 'install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then \
	    echo "dependencies: all installed"; exit 0; \
	fi; \
	echo "installing:" $$missing; \
	sudo=; \
	if [ "$$(id -u)" != 0 ]; then \
	    command -v sudo >/dev/null \
	        || { echo "make deps: must run as root (or with sudo)" >&2; exit 1; }; \
	    sudo="sudo -n"; \
	fi; \
	policy=; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' \
	        | $$sudo tee /usr/sbin/policy-rc.d > /dev/null \
	        && $$sudo chmod 755 /usr/sbin/policy-rc.d && policy=1; \
	fi; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq < /dev/null \
	&& $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends -o Dpkg::Options::=--force-confdef \
	    -o Dpkg::Options::=--force-confold $$missing < /dev/null; \
	rc=$$?; \
	[ -z "$$policy" ] || $$sudo rm -f /usr/sbin/policy-rc.d; \
	exit $$rc

# the Redis script: src/rules_script.lua is the source, the .c is committed
script: src/rules_script.c

src/rules_script.c: src/rules_script.lua tools/gen-script.sh
	tools/gen-script.sh

# The module: Debian's configure (nginx-dev) with --with-compat and Debian's
# own flags (conf_flags), so that the .so loads into the stock
# /usr/sbin/nginx.  Debian's trimmed auto/ writes nothing into the source
# tree (no top-level Makefile, everything goes to --builddir), so configure
# runs in place; so does "make modules", as nginx's Makefile names the
# nginx sources relative to the source tree.  configure runs again when
# config, the list of module files (config globs them) or NGX_CC_OPT
# change; nginx's Makefile itself tracks the sources and headers.
# (relative names for this repository, so that src/rules_script.c is the
# same make target as the rule that generates it)
MOD          := $(if $(filter $(CURDIR),$(MODULE_DIR)),,$(MODULE_DIR)/)
MODULE_FILES := $(sort $(wildcard $(MOD)src/*.c $(MOD)src/*.h \
                  $(MOD)ngx_module/*.c $(MOD)ngx_module/*.h))

$(BUILD)/module-files: FORCE
	@mkdir -p $(@D)
	@printf '%s\n' $(MODULE_FILES) 'cc-opt: $(NGX_CC_OPT)' \
	    'ld-opt: $(NGX_LD_OPT)' > $@.new
	@if cmp -s $@.new $@; then rm -f $@.new; else mv $@.new $@; fi

$(NGX_BUILD)/Makefile: $(MOD)config $(BUILD)/module-files
	rm -rf $(NGX_BUILD) $(BUILD)/nginx-src
	cd $(NGX_SRC) && source ./conf_flags && \
	    ./configure --with-compat "$${NGX_CONF_FLAGS[@]}" \
	        $(if $(NGX_CC_OPT),--with-cc-opt='$(NGX_CC_OPT)') \
	        $(if $(NGX_LD_OPT),--with-ld-opt='$(NGX_LD_OPT)') \
	        --add-dynamic-module=$(MODULE_DIR) --builddir=$(NGX_BUILD) \
	        > $(BUILD)/configure.log 2>&1 \
	    || { tail -30 $(BUILD)/configure.log; rm -f $@; exit 1; }

module: $(MODULE)

$(MODULE): $(NGX_BUILD)/Makefile $(MODULE_FILES)
	cd $(NGX_SRC) && $(MAKE) -s -f $(NGX_BUILD)/Makefile modules
	@touch $@

$(BUILD)/engine/%.o: src/%.c $(ENGINE_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ENGINE_CFLAGS) -c $< -o $@

$(BUILD)/librules.a: $(ENGINE_OBJS)
	rm -f $@
	ar rcs $@ $^

$(REDIS_MODULE): $(REDIS_MODULE_SRCS) $(wildcard redis_module/*.h) \
                 $(ENGINE_HDRS)
	$(CC) $(ENGINE_CFLAGS) -Iredis_module -shared $(REDIS_MODULE_SRCS) \
	    -lm -o $@

$(BUILD)/rules-replay: tools/rules-replay.c $(BUILD)/librules.a
	$(CC) $(ENGINE_CFLAGS) $< $(BUILD)/librules.a $(LIBS) -o $@

# the allocation-failure injector of t/068 (LD_PRELOAD into nginx)
$(BUILD)/failalloc.so: t/lib/failalloc.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(WARN) -shared -fPIC $< -o $@

$(BUILD)/unit/%: t/unit/%.c $(BUILD)/librules.a $(wildcard t/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ENGINE_CFLAGS) -It/unit $< $(BUILD)/librules.a $(LIBS) -lm -o $@

$(BUILD)/bench/engine_bench: bench/engine_bench.c bench/bench_common.h \
                             $(BUILD)/librules.a
	@mkdir -p $(dir $@)
	$(CC) $(ENGINE_CFLAGS) $< $(BUILD)/librules.a $(LIBS) -o $@

$(BUILD)/bench/worker_profile: bench/worker_profile.c bench/bench_common.h \
                               $(BUILD)/librules.a
	@mkdir -p $(dir $@)
	$(CC) $(ENGINE_CFLAGS) $< $(BUILD)/librules.a $(LIBS) -o $@

# engine micro-benchmark, then the nginx + Redis load benchmark
bench: deps build $(BUILD)/bench/engine_bench
	$(BUILD)/bench/engine_bench
	bench/run.sh

# the worker's engine path in instructions per event (callgrind)
bench-callgrind: deps build $(BUILD)/bench/engine_bench \
                 $(BUILD)/bench/worker_profile
	bench/callgrind.sh

# Redis with the rules Redis module in instructions per event (callgrind)
bench-redis-callgrind: deps build
	bench/redis-callgrind.sh

# the nginx worker in instructions per request, /base and /px (callgrind)
bench-nginx-callgrind: deps build
	bench/nginx-callgrind.sh

# two builds under load, in interleaved pairs: BENCH_AB_A (another
# checkout's build directory) against this one's
bench-ab: deps build
	@test -n "$(BENCH_AB_A)" \
	    || { echo "make bench-ab BENCH_AB_A=/path/to/other/build" >&2; exit 1; }
	bench/ab.sh "$(BENCH_AB_A)" $(BUILD)

# libFuzzer targets (clang): the engine built with ASan and UBSan
$(BUILD)/fuzz/%: t/fuzz/%.c $(ENGINE_SRCS) $(ENGINE_HDRS)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) $< $(ENGINE_SRCS) $(LIBS) -o $@

# longer fuzzing runs: make fuzz FUZZ_SECS=3600
fuzz: deps build
	for f in $(FUZZ_BINS); do \
	    n=$${f##*/fuzz_}; mkdir -p $(BUILD)/fuzz/corpus-$$n; \
	    $$f -max_total_time=$(FUZZ_SECS) $(BUILD)/fuzz/corpus-$$n \
	        t/fuzz/corpus/$$n || exit 1; \
	done

demo: deps build
	conf-examples/demo.sh

# what an installation needs: the nginx module, the rules Redis module and
# rules-replay (the Dockerfile's build stage)
dist: $(MODULE) $(REDIS_MODULE) $(BUILD)/rules-replay

# the Docker image built and checked end to end (needs a Docker daemon)
docker-check:
	tools/docker-check.sh

test: deps build
	t/run-tests.sh

# The test files that start nginx: all but the engine's unit tests (010),
# rules-replay against Redis (020) and on bad input (021), the promtool
# checks (041) and the libFuzzer runs (080), which run no nginx; and
# their native pass.
NGINX_TESTS := $(filter-out t/010-unit.t t/020-replay-redis.t \
                 t/021-replay-cli.t t/041-monitoring-config.t \
                 t/080-fuzz.t,$(wildcard t/*.t)) \
               $(filter-out t/native/020-replay-redis.t, \
                 $(wildcard t/native/*.t))

# Every one of them with nginx under valgrind's memcheck (a file at a
# time: t/run-tests.sh t/NNN-x.t with the same variables).  Test::Nginx
# blocks run one nginx process (master_process off); the other files run
# the master and its workers, each process with its own valgrind log.
test-valgrind: deps build
	TEST_NGINX_USE_VALGRIND=1 TEST_NGINX_TIMEOUT=20 \
	    t/run-tests.sh $(NGINX_TESTS)

# the Redis fault test under load, longer than in make test
FAULT_CYCLES ?= 200
FAULT_RATE   ?= 1000
FAULT_CONNS  ?= 64

test-faults: deps build
	RULES_FAULT_CYCLES=$(FAULT_CYCLES) RULES_FAULT_RATE=$(FAULT_RATE) \
	    RULES_FAULT_CONNS=$(FAULT_CONNS) PROVE_ARGS=-v \
	    t/run-tests.sh t/090-redis-faults.t

# The module built with AddressSanitizer and UBSan (gcc), in its own
# build directory, loaded into the stock /usr/sbin/nginx through
# tools/nginx-asan (which preloads the ASan runtime).
ASAN_BUILD  := $(BUILD)/asan
ASAN_MODULE := $(ASAN_BUILD)/nginx/$(MODULE_NAME).so
SAN_FLAGS   := -fsanitize=address,undefined -fno-omit-frame-pointer

asan: $(ASAN_MODULE)

# -z nodelete: nginx unloads its modules when a process exits (a pool
# cleanup of the cycle), before the leak check at exit, which could then
# not name the module's frames
$(ASAN_MODULE): FORCE
	$(MAKE) --no-print-directory module BUILD=$(ASAN_BUILD) \
	    NGX_CC_OPT='$(SAN_FLAGS)' NGX_LD_OPT='$(SAN_FLAGS) -Wl,-z,nodelete'

# the same test files with that module: a file fails on any ASan or
# UBSan report, and on a leak with a frame in the module
test-asan: deps build asan
	TEST_NGINX_USE_ASAN=1 TEST_NGINX_TIMEOUT=10 \
	    TEST_NGINX_BINARY=$(CURDIR)/tools/nginx-asan \
	    TEST_NGINX_LOAD_MODULES=$(ASAN_MODULE) \
	    t/run-tests.sh $(NGINX_TESTS)

# Line coverage: the module, rules-replay, the Redis module and the unit
# tests built with --coverage (unoptimised) in their own build directory,
# the suite run with them (COVERAGE_TESTS: some files only; empty: all),
# then tools/coverage-report: a table per source file, saved in
# coverage.txt, and every line no test ran in uncovered.txt.  Each run
# starts from zero counts; its exit status is the suite's.
COV_BUILD      := $(BUILD)/coverage
COV_FLAGS      := -O0 --coverage
COVERAGE_TESTS ?=

coverage: deps
	find $(COV_BUILD) -name '*.gcda' -delete 2>/dev/null || true
	$(MAKE) --no-print-directory coverage-build BUILD=$(COV_BUILD) \
	    CFLAGS='-g $(COV_FLAGS)' NGX_CC_OPT='$(COV_FLAGS)' \
	    NGX_LD_OPT='--coverage'
	TEST_NGINX_LOAD_MODULES=$(COV_BUILD)/nginx/$(MODULE_NAME).so \
	    RULES_REDIS_MODULE=$(COV_BUILD)/rules_redis_module.so \
	    RULES_REPLAY=$(COV_BUILD)/rules-replay \
	    RULES_UNIT_DIR=$(COV_BUILD)/unit \
	    t/run-tests.sh $(COVERAGE_TESTS); status=$$?; \
	tools/coverage-report $(COV_BUILD) $(COV_BUILD)/coverage.txt \
	    $(COV_BUILD)/uncovered.txt || exit 1; \
	echo "coverage: $(COV_BUILD)/coverage.txt, $(COV_BUILD)/uncovered.txt"; \
	exit $$status

# (with BUILD set to the coverage directory by the rule above)
coverage-build: $(MODULE) $(BUILD)/rules-replay $(UNIT_BINS) \
                $(REDIS_MODULE)

clean:
	rm -rf $(BUILD) t/servroot* t/native/servroot*

FORCE:
