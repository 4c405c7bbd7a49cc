// Compiled together with Sources/LoupeProtocols by `make fuzz` (no SwiftPM target: libFuzzer brings its own main).

/// libFuzzer entry point for the HTTP/1 request parser: any input, whole or split at any
/// point, must parse or fail with a `Failure` (never trap), every step must consume no more
/// than it was given, and the two feeds must agree.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP1Request(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    func run(split: Int) -> [String] {
        var parser = HTTP1RequestParser(maxHeaderBytes: 4096)
        var buffer: [UInt8] = []
        var fed = 0
        var log: [String] = []
        while true {
            guard let (step, consumed) = try? parser.step(buffer) else { return log + ["failure"] }
            precondition(consumed <= buffer.count, "consumed more than given")
            let taken = buffer.prefix(consumed)
            buffer.removeFirst(consumed)
            switch step {
            case .needMore:
                guard fed < bytes.count else { return log }
                let n = fed == 0 ? max(1, min(split, bytes.count)) : bytes.count - fed
                buffer += bytes[fed..<(fed + n)]
                fed += n
            case .stopped: return log + ["stopped"]
            case .body: log.append("body " + taken.map { String($0) }.joined(separator: ","))
            case .skip: break
            default: log.append("\(step)")
            }
        }
    }
    // Body pieces may be cut differently; compare only heads, ends and failures.
    let whole = run(split: bytes.count).filter { !$0.hasPrefix("body") }
    let split = run(split: size / 2).filter { !$0.hasPrefix("body") }
    precondition(whole == split, "whole and split feeds disagree")
    return 0
}
