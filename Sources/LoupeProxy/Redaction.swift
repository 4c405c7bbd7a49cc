import LoupeFlow

/// Hubble's default redaction: values of credential headers never reach a flow.
public enum Redaction {
    public static let placeholder = "HUBBLE_REDACTED"
    static let redactedHeaders: Set<String> = ["authorization", "proxy-authorization", "cookie", "set-cookie"]

    public static func headers(_ pairs: [(String, String)]) -> [HTTP.Header] {
        pairs.map { name, value in
            HTTP.Header(key: name, value: redactedHeaders.contains(name.lowercased()) ? placeholder : value)
        }
    }

    /// Removes `user:password@` from an absolute URL.
    public static func url(_ url: String) -> String {
        // Fast path: no '@' means no user-info (the common case, once per flow).
        guard url.utf8.contains(UInt8(ascii: "@")), let scheme = url.range(of: "://") else { return url }
        let rest = url[scheme.upperBound...]
        let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
        guard let at = rest[..<authorityEnd].lastIndex(of: "@") else { return url }
        return String(url[..<scheme.upperBound]) + String(rest[rest.index(after: at)...])
    }
}
