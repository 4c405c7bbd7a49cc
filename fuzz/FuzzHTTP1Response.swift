// Compiled together with Sources/LoupeProtocols by `make fuzz` (no SwiftPM target: libFuzzer brings its own main).

/// libFuzzer entry point for the HTTP/1 response parser: any input (its first byte picks the
/// request the responses answer: HEAD, CONNECT or another), whole or split at any point, must
/// parse or fail with a `Failure` (never trap), every step must consume no more than it was
/// given, and the two feeds must agree.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP1Response(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let answering: HTTP1ResponseParser.Request = switch data[0] % 3 { case 0: .head; case 1: .connect; default: .other }
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    func run(split: Int) -> [String] {
        var parser = HTTP1ResponseParser(maxHeaderBytes: 4096)
        var buffer: [UInt8] = []
        var fed = 0
        var log: [String] = []
        while true {
            guard let (step, consumed) = try? parser.step(buffer, answering: answering) else { return log + ["failure"] }
            precondition(consumed <= buffer.count, "consumed more than given")
            buffer.removeFirst(consumed)
            switch step {
            case .needMore:
                guard fed < bytes.count else { return log }
                let n = fed == 0 ? max(1, min(split, bytes.count)) : bytes.count - fed
                buffer += bytes[fed..<(fed + n)]
                fed += n
            case .stopped: return log + ["stopped"]
            case .body, .skip: break
            default: log.append("\(step)")
            }
        }
    }
    precondition(run(split: bytes.count) == run(split: (size - 1) / 2), "whole and split feeds disagree")
    return 0
}
