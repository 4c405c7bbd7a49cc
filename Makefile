# Loupe: `make demo` runs the Star Wars-free spine demo in the netns lab; `make test` runs every test.
SHELL := /bin/bash
BPF_OUT := bpf/.output
BPF_SRC := $(wildcard bpf/*.bpf.c)
BPF_OBJ := $(patsubst bpf/%.bpf.c,$(BPF_OUT)/%.bpf.o,$(BPF_SRC))
BPF_HDR := $(wildcard bpf/lib/*.h bpf/shared/*.h)
CLANG ?= clang
SWIFT_BUILD_FLAGS ?=

.PHONY: all deps bpf build demo test test-unit test-e2e bench fuzz clean proto image-binary image-rootfs splice-stress

all: build

deps:
	@scripts/install-deps.sh

$(BPF_OUT)/%.bpf.o: bpf/%.bpf.c $(BPF_HDR)
	@mkdir -p $(BPF_OUT)
	$(CLANG) -O2 -g -Wall -target bpf -mcpu=v3 -I/usr/include/x86_64-linux-gnu -c $< -o $@

bpf: $(BPF_OBJ)

build: deps bpf
	swift build $(SWIFT_BUILD_FLAGS)

demo: build
	scripts/demo.sh

test-unit: build
	swift test $(SWIFT_BUILD_FLAGS)

test-e2e: build
	python3 -m pytest -v -x tests/e2e

# The whole e2e suite on the routed CNI shape, then the spine, policy, DNS, upstream-source and two-node
# scenarios again on the bridged one (pod veths on a cni0 bridge, as flannel), then the spine
# with the agent run from the image's rootfs.
test: build
	swift test $(SWIFT_BUILD_FLAGS)
	python3 -m pytest -v tests/e2e
	LOUPE_LAB_CNI=bridged python3 -m pytest -v tests/e2e/test_spine.py tests/e2e/test_policy.py tests/e2e/test_dns.py tests/e2e/test_upstream_source.py tests/e2e/test_two_nodes.py
	$(MAKE) image-rootfs
	LOUPE_AGENT_ROOTFS=$(IMAGE_ROOTFS) python3 -m pytest -v tests/e2e/test_image.py tests/e2e/test_spine.py

# The image's binary: release, the Swift runtime linked in (--static-swift-stdlib), stripped.
# Its own scratch directory, so it and the benchmarks' plain release build do not rebuild
# each other.
IMAGE_ROOTFS ?= .build/image-rootfs
IMAGE_SCRATCH ?= .build/image-build
image-binary: deps
	swift build -c release --static-swift-stdlib --product loupe --scratch-path $(IMAGE_SCRATCH)
	install -D -m 0755 $(IMAGE_SCRATCH)/release/loupe .build/image/loupe
	strip --strip-unneeded .build/image/loupe

# The image's content as a directory (debootstrap; see deploy/image/Containerfile), and its size.
image-rootfs: image-binary bpf
	IMAGE_ROOTFS=$(IMAGE_ROOTFS) scripts/image-rootfs.sh

# libFuzzer over the DNS codec, the TLS ClientHello parser and the HTTP/1 request parser
# (FUZZ_SECONDS each, default 60); corpora in .build/fuzz-corpus-*.
FUZZ_SECONDS ?= 60
fuzz:
	@mkdir -p .build/fuzz-corpus-dns .build/fuzz-corpus-tls .build/fuzz-corpus-http1 .build/fuzz-corpus-http1-response
	swiftc -O -sanitize=fuzzer,address -parse-as-library Sources/LoupeProtocols/*.swift fuzz/FuzzDNS.swift -o .build/fuzz-dns
	.build/fuzz-dns -max_total_time=$(FUZZ_SECONDS) .build/fuzz-corpus-dns
	swiftc -O -sanitize=fuzzer,address -parse-as-library Sources/LoupeProtocols/*.swift fuzz/FuzzClientHello.swift -o .build/fuzz-tls
	for f in Tests/LoupeProtocolsTests/Fixtures/*.hex; do python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(open(sys.argv[1]).read()))' $$f > .build/fuzz-corpus-tls/$$(basename $$f .hex); done
	.build/fuzz-tls -max_total_time=$(FUZZ_SECONDS) .build/fuzz-corpus-tls
	swiftc -O -sanitize=fuzzer,address -parse-as-library Sources/LoupeProtocols/*.swift fuzz/FuzzHTTP1Request.swift -o .build/fuzz-http1
	printf 'POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\nget / HTTP/1.0\r\nContent-Length: 2\r\n\r\nok' > .build/fuzz-corpus-http1/seed
	.build/fuzz-http1 -max_total_time=$(FUZZ_SECONDS) .build/fuzz-corpus-http1
	swiftc -O -sanitize=fuzzer,address -parse-as-library Sources/LoupeProtocols/*.swift fuzz/FuzzHTTP1Response.swift -o .build/fuzz-http1-response
	printf '2HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\nHTTP/1.0 204 No Content\r\nContent-Length: 0\r\n\r\n' > .build/fuzz-corpus-http1-response/seed
	.build/fuzz-http1-response -max_total_time=$(FUZZ_SECONDS) .build/fuzz-corpus-http1-response

bench: deps bpf
	bench/run.sh

# Kernel splice under CPU contention: N (60) echo transfers of 200 MiB beside HOGS (2) CPU
# hogs, every one exact (tests/e2e/stress_splice.py; minutes, not part of `make test`).
splice-stress: build
	python3 -m pytest -s tests/e2e/stress_splice.py

# Regenerates Sources/LoupeAPI/Generated from api/v1 (protoc from grpcio-tools; plugins built here).
proto:
	scripts/gen-proto.sh

clean:
	rm -rf $(BPF_OUT) .build
