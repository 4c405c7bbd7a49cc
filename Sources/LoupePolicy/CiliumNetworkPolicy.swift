/// The supported subset of `cilium.io/v2` CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy.
/// Parsed by `PolicyParser`; decisions by `PolicyEngine`.
public struct CiliumNetworkPolicy: Sendable {
    public var name: String
    /// nil for a clusterwide policy; a namespaced policy without one lives in `default`.
    public var namespace: String?
    public var rules: [Rule]
    public var file: String
    public var line: Int

    public var isClusterwide: Bool { namespace == nil }

    public struct Rule: Sendable {
        public var description: String?
        public var endpointSelector: LabelSelector
        /// nil when the rule has no `ingress` (resp. `egress`) section.
        public var ingress: [PeerRule]?
        public var egress: [PeerRule]?
    }

    /// One `ingress[]`/`egress[]` entry: who (`fromEndpoints`/`toEndpoints`) on which ports.
    public struct PeerRule: Sendable {
        /// nil: no endpoint restriction.
        public var peers: [LabelSelector]?
        /// nil: all ports.
        public var toPorts: [PortRule]?
    }

    public struct PortRule: Sendable {
        public var ports: [PortProtocol]
        /// nil: no HTTP rules. With neither HTTP nor DNS rules, every request on these ports is
        /// allowed for the peers.
        public var http: [HTTPRule]?
        /// `rules.dns[]`: queries must match one.
        public var dns: [DNSRule]?

        public var hasL7: Bool { http != nil || dns != nil }
    }

    /// `rules.dns[]`: `matchName` (the exact name) or `matchPattern` (`*` matches any run of
    /// name characters within one label; a lone `*` matches every name). Case-insensitive,
    /// trailing dot ignored — Cilium's semantics.
    public struct DNSRule: Sendable, CustomStringConvertible {
        public var matchName: String?
        public var matchPattern: String?

        public func matches(_ query: String) -> Bool {
            let name = Self.normalize(query)
            if let n = matchName, Self.normalize(n) == name { return true }
            if let p = matchPattern {
                let pattern = Self.normalize(p)
                if pattern == "*" { return true }
                return Self.glob(Array(pattern.utf8)[...], Array(name.utf8)[...])
            }
            return false
        }

        static func normalize(_ s: String) -> String {
            var n = s.lowercased()
            while n.hasSuffix(".") { n.removeLast() }
            return n
        }

        /// `*` matches zero or more characters other than `.`.
        static func glob(_ p: ArraySlice<UInt8>, _ s: ArraySlice<UInt8>) -> Bool {
            guard let first = p.first else { return s.isEmpty }
            if first == UInt8(ascii: "*") {
                var rest = s
                while true {
                    if glob(p.dropFirst(), rest) { return true }
                    guard let c = rest.first, c != UInt8(ascii: ".") else { return false }
                    rest = rest.dropFirst()
                }
            }
            guard let c = s.first, c == first else { return false }
            return glob(p.dropFirst(), s.dropFirst())
        }

        public var description: String {
            matchName.map { "matchName=\($0)" } ?? matchPattern.map { "matchPattern=\($0)" } ?? "{}"
        }
    }

    public struct PortProtocol: Sendable, Equatable {
        public enum L4: String, Sendable { case tcp = "TCP", udp = "UDP", any = "ANY" }
        public var port: UInt16   // 0 = any port
        public var l4: L4
        public func matches(port p: UInt16, tcp: Bool) -> Bool {
            (port == 0 || port == p) && (l4 == .any || (l4 == .tcp) == tcp)
        }
    }

    /// `rules.http[]`: every field set must match; `{}` matches every request.
    public struct HTTPRule: Sendable, CustomStringConvertible {
        public var method: POSIXRegex?
        public var path: POSIXRegex?
        public var host: POSIXRegex?
        /// `"Name"` (present) or `"Name: value"` (equal).
        public var headers: [HeaderMatch]

        public struct HeaderMatch: Sendable {
            public var name: String
            public var value: String?
        }

        public func matches(_ request: HTTPRequestFacts) -> Bool {
            if let method, !method.matches(request.method) { return false }
            if let path, !path.matches(request.path) { return false }
            if let host, !host.matches(request.host) { return false }
            for h in headers {
                let values = request.headers.filter { $0.name.lowercased() == h.name.lowercased() }.map(\.value)
                if values.isEmpty { return false }
                if let want = h.value, !values.contains(want) { return false }
            }
            return true
        }

        public var description: String {
            var parts: [String] = []
            if let method { parts.append("method=\(method)") }
            if let path { parts.append("path=\(path)") }
            if let host { parts.append("host=\(host)") }
            for h in headers { parts.append("header=\(h.name)\(h.value.map { ": \($0)" } ?? "")") }
            return parts.isEmpty ? "{}" : parts.joined(separator: " ")
        }
    }
}

/// What an HTTP rule looks at in a request.
public struct HTTPRequestFacts: Sendable {
    public var method: String
    /// The request target as sent (path and query), as Envoy's `:path`.
    public var path: String
    public var host: String
    public var headers: [(name: String, value: String)]

    public init(method: String, path: String, host: String, headers: [(name: String, value: String)]) {
        self.method = method
        self.path = path
        self.host = host
        self.headers = headers
    }
}
