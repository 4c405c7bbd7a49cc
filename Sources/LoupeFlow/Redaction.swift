import Foundation

/// Hubble's redaction options, applied to every flow as it is recorded (so flows, the API,
/// the export and anything downstream see the same redacted values).
public struct Redaction: Sendable, Equatable {
    public static let placeholder = "HUBBLE_REDACTED"
    public static let credentialHeaders = ["authorization", "proxy-authorization", "cookie", "set-cookie"]

    /// Remove `user:password@` from URLs (default on).
    public var userInfo = true
    /// Replace URL query values with the placeholder (default off).
    public var urlQuery = false
    /// When not empty, only these headers keep their values (lowercase names).
    public var headersAllow: Set<String> = []
    /// These headers' values are replaced (lowercase; the credential headers by default).
    public var headersDeny: Set<String> = Set(credentialHeaders)

    public init() {}

    public func apply(_ flow: inout Flow) {
        guard let http = flow.l7?.http else { return }
        // Once per flow on the proxy's hot path: touch the flow only where something changes.
        let original = http.url
        let redactedURL = url(original)
        var headers: [HTTP.Header]?
        for (i, h) in http.headers.enumerated() where !keepsValue(h.key) && h.value != Self.placeholder {
            if headers == nil { headers = http.headers }
            headers![i].value = Self.placeholder
        }
        guard redactedURL != original || headers != nil else { return }
        if let headers { flow.l7?.http?.headers = headers }
        if redactedURL != original {
            flow.l7?.http?.url = redactedURL
            flow.summary = flow.summary.replacingOccurrences(of: original, with: redactedURL)
        }
    }

    /// Whether header `name` keeps its value (names compared as lowercase).
    func keepsValue(_ name: String) -> Bool {
        // The usual case, no allow list: lowercased only when a denied name has its length.
        if headersAllow.isEmpty {
            let n = name.utf8.count
            return !headersDeny.contains { $0.utf8.count == n && $0 == name.lowercased() }
        }
        // Header names from the wire are usually lowercase already (HTTP/2 always): no copy then.
        let lower = name.utf8.contains(where: { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") }) ? name.lowercased() : name
        if headersDeny.contains(lower) { return false }
        return headersAllow.isEmpty || headersAllow.contains(lower)
    }

    public func url(_ url: String) -> String {
        var out = url
        if userInfo { out = Self.removingUserInfo(out) }
        if urlQuery { out = Self.redactingQuery(out) }
        return out
    }

    /// Removes `user:password@` from an absolute URL.
    static func removingUserInfo(_ url: String) -> String {
        // Fast path: no '@' means no user-info (the common case, once per flow).
        guard url.utf8.contains(UInt8(ascii: "@")), let scheme = url.range(of: "://") else { return url }
        let rest = url[scheme.upperBound...]
        let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
        guard let at = rest[..<authorityEnd].lastIndex(of: "@") else { return url }
        return String(url[..<scheme.upperBound]) + String(rest[rest.index(after: at)...])
    }

    /// `?a=1&b=2` → `?a=HUBBLE_REDACTED&b=HUBBLE_REDACTED` (names kept, values gone).
    static func redactingQuery(_ url: String) -> String {
        guard let q = url.firstIndex(of: "?") else { return url }
        let fragment = url[q...].firstIndex(of: "#") ?? url.endIndex
        let query = url[url.index(after: q)..<fragment]
        let redacted = query.split(separator: "&", omittingEmptySubsequences: false).map { part -> String in
            guard let eq = part.firstIndex(of: "=") else { return String(part) }
            return part[..<eq] + "=" + placeholder
        }.joined(separator: "&")
        return String(url[...q]) + redacted + String(url[fragment...])
    }
}
