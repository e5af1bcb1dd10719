# ngx_http_rules_module: the one entry point.
#
#   make deps    install build and test dependencies (Debian 12, as root)
#   make         build the module, librules.a, rules-replay, unit tests
#   make demo    start Redis + nginx + module and replay a pixel sequence
#   make test    run the whole test suite (starts and stops its own Redis)
#   make clean

SHELL := /bin/bash

NGX_SRC    ?= /usr/share/nginx/src
BUILD      := $(CURDIR)/build
NGX_BUILD  := $(BUILD)/nginx
MODULE     := $(NGX_BUILD)/ngx_http_rules_module.so

CC         ?= cc
CFLAGS     ?= -O2 -g
WARN       := -Wall -Wextra -Wpointer-arith -Wno-unused-parameter -Werror
ENGINE_CFLAGS := $(CFLAGS) $(WARN) -fPIC -Isrc
LIBS       := -lhiredis -ljansson -lpcre2-8

ENGINE_SRCS := $(wildcard src/*.c)
ENGINE_HDRS := $(wildcard src/*.h)
ENGINE_OBJS := $(patsubst src/%.c,$(BUILD)/engine/%.o,$(ENGINE_SRCS))
GLUE_SRCS   := $(wildcard ngx_module/*.c ngx_module/*.h)
UNIT_SRCS   := $(wildcard t/unit/test_*.c)
UNIT_BINS   := $(patsubst t/unit/%.c,$(BUILD)/unit/%,$(UNIT_SRCS))
FUZZ_SRCS   := $(wildcard t/fuzz/fuzz_*.c)
FUZZ_BINS   := $(patsubst t/fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRCS))
FUZZ_SECS   ?= 300
FUZZ_CFLAGS := -g -O1 -Wall -Werror -fsanitize=fuzzer,address,undefined -Isrc

DEB_PACKAGES := nginx nginx-dev libhiredis-dev libjansson-dev libpcre2-dev \
                redis-server redis-tools libtest-base-perl wrk gnuplot-nox \
                curl gcc make perl valgrind clang prometheus

.PHONY: all build deps demo test test-valgrind clean script bench fuzz

all: build

build: $(MODULE) $(BUILD)/librules.a $(BUILD)/rules-replay $(UNIT_BINS) \
       $(FUZZ_BINS)

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	        | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    policy=; \
	    if [ ! -e /usr/sbin/policy-rc.d ]; then \
	        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
	        chmod 755 /usr/sbin/policy-rc.d; policy=1; \
	    fi; \
	    apt-get update -qq && \
	    apt-get install -y -qq --no-install-recommends $$missing < /dev/null; \
	    rc=$$?; \
	    [ -z "$$policy" ] || rm -f /usr/sbin/policy-rc.d; \
	    exit $$rc; \
	else \
	    echo "dependencies: all installed"; \
	fi

# the Redis script: src/rules_script.lua is the source, the .c is committed
script: src/rules_script.c

src/rules_script.c: src/rules_script.lua tools/gen-script.sh
	tools/gen-script.sh

# (policy-rc.d keeps the packages' own services, such as a system-wide
# redis-server or prometheus, from starting: the tests start their own)

# nginx's configure writes into its source tree: configure a private copy
$(NGX_BUILD)/Makefile: config
	rm -rf $(BUILD)/nginx-src $(NGX_BUILD)
	mkdir -p $(BUILD)
	cp -r $(NGX_SRC) $(BUILD)/nginx-src
	cd $(BUILD)/nginx-src && source ./conf_flags && \
	    ./configure --with-compat "$${NGX_CONF_FLAGS[@]}" \
	        --add-dynamic-module=$(CURDIR) --builddir=$(NGX_BUILD) \
	        > $(BUILD)/configure.log 2>&1 \
	    || { tail -30 $(BUILD)/configure.log; exit 1; }

$(MODULE): $(NGX_BUILD)/Makefile $(ENGINE_SRCS) $(ENGINE_HDRS) $(GLUE_SRCS) src/rules_script.c
	cd $(BUILD)/nginx-src && $(MAKE) -s -f $(NGX_BUILD)/Makefile modules

$(BUILD)/engine/%.o: src/%.c $(ENGINE_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ENGINE_CFLAGS) -c $< -o $@

$(BUILD)/librules.a: $(ENGINE_OBJS)
	ar rcs $@ $^

$(BUILD)/rules-replay: tools/rules-replay.c $(BUILD)/librules.a
	$(CC) $(ENGINE_CFLAGS) $< $(BUILD)/librules.a $(LIBS) -o $@

$(BUILD)/unit/%: t/unit/%.c $(BUILD)/librules.a $(wildcard t/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ENGINE_CFLAGS) -It/unit $< $(BUILD)/librules.a $(LIBS) -lm -o $@

$(BUILD)/bench/engine_bench: bench/engine_bench.c $(BUILD)/librules.a
	@mkdir -p $(dir $@)
	$(CC) $(ENGINE_CFLAGS) $< $(BUILD)/librules.a $(LIBS) -o $@

# engine micro-benchmark, then the nginx + Redis load benchmark
bench: deps build $(BUILD)/bench/engine_bench
	$(BUILD)/bench/engine_bench
	bench/run.sh

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

test: deps build
	t/run-tests.sh

# the Test::Nginx suites with nginx under valgrind's memcheck
test-valgrind: deps build
	TEST_NGINX_USE_VALGRIND=1 TEST_NGINX_TIMEOUT=10 \
	    t/run-tests.sh t/030-directives.t t/050-inline.t t/051-json-body.t \
	        t/052-redis-failures.t t/053-hostile-input.t

clean:
	rm -rf $(BUILD) t/servroot*
