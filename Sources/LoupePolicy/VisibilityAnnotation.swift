/// One `<Direction/Port/Protocol/L7>` token of the proxy-visibility annotation (Cilium's syntax).
public struct VisibilityRule: Sendable, Hashable, CustomStringConvertible {
    public enum Direction: String, Sendable, Hashable { case ingress = "Ingress", egress = "Egress" }
    public enum L4: String, Sendable, Hashable { case tcp = "TCP", udp = "UDP", any = "ANY" }
    public enum L7: String, Sendable, Hashable { case http = "HTTP", dns = "DNS", tls = "TLS", https = "HTTPS", kafka = "Kafka" }

    public var direction: Direction
    public var port: UInt16
    public var l4: L4
    public var l7: L7

    public init(direction: Direction, port: UInt16, l4: L4, l7: L7) {
        self.direction = direction
        self.port = port
        self.l4 = l4
        self.l7 = l7
    }

    public var description: String { "<\(direction.rawValue)/\(port)/\(l4.rawValue)/\(l7.rawValue)>" }
    /// True when the rule steers TCP (TCP or ANY).
    public var carriesTCP: Bool { l4 != .udp }
    /// True when the rule steers UDP (UDP or ANY).
    public var carriesUDP: Bool { l4 != .tcp }
}

/// A malformed token, with the token itself and why.
public struct VisibilityAnnotationError: Error, Sendable, Equatable, CustomStringConvertible {
    public var token: String
    public var reason: String
    public var description: String { "\"\(token)\": \(reason)" }
}

/// Parses `loupe.io/proxy-visibility` (or Cilium's `policy.cilium.io/proxy-visibility`) values.
/// Malformed tokens are returned as errors; well-formed ones still apply.
public enum VisibilityAnnotation {
    public static let key = "loupe.io/proxy-visibility"
    public static let ciliumKey = "policy.cilium.io/proxy-visibility"

    /// The annotation value from `annotations`, Loupe's key first.
    public static func value(in annotations: [String: String]) -> String? {
        annotations[key] ?? annotations[ciliumKey]
    }

    public static func parse(_ value: String) -> (rules: [VisibilityRule], errors: [VisibilityAnnotationError]) {
        var rules: [VisibilityRule] = []
        var errors: [VisibilityAnnotationError] = []
        for raw in value.split(separator: ",", omittingEmptySubsequences: false) {
            let token = String(raw).trimmed(" \t\n")
            if token.isEmpty {
                if value.trimmed(" \t\n").isEmpty { break }
                errors.append(.init(token: token, reason: "empty entry"))
                continue
            }
            switch parseToken(token) {
            case .success(let rule): if !rules.contains(rule) { rules.append(rule) }
            case .failure(let e): errors.append(e)
            }
        }
        return (rules, errors)
    }

    static func parseToken(_ token: String) -> Result<VisibilityRule, VisibilityAnnotationError> {
        func fail(_ why: String) -> Result<VisibilityRule, VisibilityAnnotationError> { .failure(.init(token: token, reason: why)) }
        guard token.hasPrefix("<"), token.hasSuffix(">"), token.count >= 2 else {
            return fail("expected <Direction/Port/Protocol/L7>")
        }
        let parts = token.dropFirst().dropLast().split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 4 else { return fail("expected 4 fields Direction/Port/Protocol/L7, got \(parts.count)") }
        guard let direction = VisibilityRule.Direction(rawValue: parts[0]) else {
            return fail("direction \"\(parts[0])\" is not Ingress or Egress")
        }
        guard let port = UInt16(parts[1]), port > 0 else { return fail("port \"\(parts[1])\" is not in 1-65535") }
        guard let l4 = VisibilityRule.L4(rawValue: parts[2]) else { return fail("protocol \"\(parts[2])\" is not TCP, UDP or ANY") }
        guard let l7 = VisibilityRule.L7(rawValue: parts[3]) else {
            return fail("L7 protocol \"\(parts[3])\" is not HTTP, DNS, TLS, HTTPS or Kafka")
        }
        return .success(VisibilityRule(direction: direction, port: port, l4: l4, l7: l7))
    }
}

extension StringProtocol {
    /// Without leading and trailing characters from `set`.
    func trimmed(_ set: String) -> String {
        var s = self[...]
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
