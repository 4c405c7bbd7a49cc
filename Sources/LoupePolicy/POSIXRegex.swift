import Glibc

/// A POSIX extended regular expression that must match the whole subject, case-sensitively —
/// how Cilium matches `method`, `path` and `host` of HTTP rules.
public final class POSIXRegex: @unchecked Sendable, CustomStringConvertible {
    // @unchecked: regex_t is only read after compilation; glibc's regexec is thread-safe.
    private var compiled = regex_t()
    public let pattern: String

    public struct CompileError: Error, CustomStringConvertible {
        public var pattern: String
        public var reason: String
        public var description: String { "invalid regular expression \"\(pattern)\": \(reason)" }
    }

    public init(_ pattern: String) throws {
        self.pattern = pattern
        // Anchored as a group so alternations stay inside: "a|b" → "^(a|b)$".
        let rc = regcomp(&compiled, "^(\(pattern))$", REG_EXTENDED | REG_NOSUB)
        if rc != 0 {
            var buf = [CChar](repeating: 0, count: 256)
            regerror(rc, &compiled, &buf, buf.count)
            throw CompileError(pattern: pattern, reason: buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        }
    }

    deinit { regfree(&compiled) }

    public func matches(_ subject: String) -> Bool {
        // An embedded NUL would end the C string early and could let a suffix escape the anchor.
        if subject.utf8.contains(0) { return false }
        return regexec(&compiled, subject, 0, nil, 0) == 0
    }

    public var description: String { pattern }
}
