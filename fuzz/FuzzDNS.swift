// Compiled together with Sources/LoupeProtocols by `make fuzz` (no SwiftPM target: libFuzzer brings its own main).

/// libFuzzer entry point for the DNS codec: any input must parse or fail with an error value;
/// whatever parses must survive a serialize → parse round trip.
/// Build and run: `make fuzz` (swift build -Xswiftc -sanitize=fuzzer …).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDNS(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if case .success(let m) = DNSMessage.parse(bytes) {
        guard case .success = DNSMessage.parse(m.serialize()) else { fatalError("re-serialized message does not parse") }
    }
    return 0
}
