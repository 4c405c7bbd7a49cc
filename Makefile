# Loupe: `make demo` runs the Star Wars-free spine demo in the netns lab; `make test` runs every test.
SHELL := /bin/bash
BPF_OUT := bpf/.output
BPF_SRC := $(wildcard bpf/*.bpf.c)
BPF_OBJ := $(patsubst bpf/%.bpf.c,$(BPF_OUT)/%.bpf.o,$(BPF_SRC))
BPF_HDR := $(wildcard bpf/lib/*.h bpf/shared/*.h)
CLANG ?= clang
SWIFT_BUILD_FLAGS ?=

.PHONY: all deps bpf build demo test test-unit test-e2e bench fuzz clean

all: build

deps:
	@scripts/install-deps.sh

$(BPF_OUT)/%.bpf.o: bpf/%.bpf.c $(BPF_HDR)
	@mkdir -p $(BPF_OUT)
	$(CLANG) -O2 -g -Wall -target bpf -I/usr/include/x86_64-linux-gnu -c $< -o $@

bpf: $(BPF_OBJ)

build: deps bpf
	swift build $(SWIFT_BUILD_FLAGS)

demo: build
	scripts/demo.sh

test-unit: build
	swift test $(SWIFT_BUILD_FLAGS)

test-e2e: build
	python3 -m pytest -v -x tests/e2e

test: build
	swift test $(SWIFT_BUILD_FLAGS)
	python3 -m pytest -v tests/e2e

# libFuzzer over the DNS codec (FUZZ_SECONDS, default 60); corpus in .build/fuzz-corpus.
FUZZ_SECONDS ?= 60
fuzz:
	@mkdir -p .build/fuzz-corpus
	swiftc -O -sanitize=fuzzer,address -parse-as-library Sources/LoupeProtocols/*.swift fuzz/FuzzDNS.swift -o .build/fuzz-dns
	.build/fuzz-dns -max_total_time=$(FUZZ_SECONDS) .build/fuzz-corpus

bench: deps bpf
	bench/run.sh

clean:
	rm -rf $(BPF_OUT) .build
