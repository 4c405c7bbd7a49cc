/// An HTTP path with its ids collapsed (`/v1/users/42/orders/9f1c…` → `/v1/users/{id}/orders/{id}`),
/// so a map's endpoint list has one row per route instead of one per object. The query string is
/// dropped (it may carry tokens; the flow table keeps the whole URL). Bounded: a pod chooses its
/// paths, so at most `maxSegments` segments of at most `maxSegmentLength` characters are kept.
enum PathTemplate {
    static let maxSegments = 12
    static let maxSegmentLength = 48

    /// The template of a URL (`http://host/path?q`) or of a bare path.
    static func of(url: String) -> String {
        var path = Substring(url)
        if let scheme = path.range(of: "://") {
            let afterScheme = path[scheme.upperBound...]
            path = afterScheme.firstIndex(of: "/").map { afterScheme[$0...] } ?? "/"
        }
        if let q = path.firstIndex(where: { $0 == "?" || $0 == "#" }) { path = path[..<q] }
        if path.isEmpty { return "/" }
        var out: [String] = []
        var segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        var truncated = false
        if segments.count > maxSegments {
            segments = segments.prefix(maxSegments)
            truncated = true
        }
        for s in segments {
            if isIdentifier(s) {
                out.append("{id}")
            } else if s.count > maxSegmentLength {
                out.append(String(s.prefix(maxSegmentLength)) + "…")
            } else {
                out.append(String(s))
            }
        }
        return "/" + out.joined(separator: "/") + (truncated ? "/…" : "")
    }

    /// Numbers, UUIDs, long hex strings, and long tokens that mix letters and digits.
    static func isIdentifier(_ s: Substring) -> Bool {
        guard !s.isEmpty else { return false }
        let utf8 = s.utf8
        if utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) { return true }
        let isHex = { (c: UInt8) in (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46) }
        let digits = utf8.filter { $0 >= 0x30 && $0 <= 0x39 }.count
        // A UUID: 8-4-4-4-12 hex digits.
        if utf8.count == 36 {
            let parts = s.split(separator: "-")
            if parts.map(\.count) == [8, 4, 4, 4, 12], parts.allSatisfy({ $0.utf8.allSatisfy(isHex) }) { return true }
        }
        if utf8.count >= 8, digits > 0, utf8.allSatisfy(isHex) { return true }
        // Tokens: long, and digits mixed in with letters (words such as `exhaust-port` have none).
        let tokenChars = utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || c == 0x2d || c == 0x5f
        }
        return tokenChars && utf8.count >= 16 && digits >= 2
    }
}
