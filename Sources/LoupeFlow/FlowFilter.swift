/// The filters of `loupe observe`, named after `hubble observe`'s flags. All set filters must match.
/// `@unchecked Sendable`: the compiled regexes are immutable once `prepare()` ran.
public struct FlowFilter: @unchecked Sendable {
    public enum FilterError: Error, CustomStringConvertible, Sendable {
        case invalid(flag: String, value: String, reason: String)
        public var description: String {
            switch self {
            case .invalid(let flag, let value, let reason): "\(flag) \"\(value)\": \(reason)"
            }
        }
    }

    /// `--namespace`: either side in one of these namespaces.
    public var namespaces: [String] = []
    /// `--pod [ns/]name`: either side is this pod (name prefix, as Hubble).
    public var pods: [String] = []
    public var fromPods: [String] = []
    public var toPods: [String] = []
    /// `--protocol`: http, grpc, dns, tcp, udp.
    public var protocols: [String] = []
    public var verdicts: [Verdict] = []
    /// `--http-status`: `403`, `5+`, `40+`.
    public var httpStatuses: [String] = []
    public var httpMethods: [String] = []
    public var httpPaths: [String] = []
    /// `--dns-rcode`: a number or a name (`NXDOMAIN`, `SERVFAIL`, `REFUSED`, …).
    public var dnsRCodes: [String] = []
    /// `--grpc-status`: a number or a name (`NOT_FOUND`, `PERMISSION_DENIED`, …); matches gRPC
    /// response flows whose `grpc-status` is one of them.
    public var grpcStatuses: [String] = []
    private var pathRegexes: [Regex<AnyRegexOutput>] = []

    public init() {}

    /// The filter as a JSON-friendly dictionary (sent to the agent by `loupe observe`).
    public var asDictionary: [String: [String]] {
        ["namespace": namespaces, "pod": pods, "from-pod": fromPods, "to-pod": toPods, "protocol": protocols,
         "verdict": verdicts.map(\.rawValue), "http-status": httpStatuses, "http-method": httpMethods, "http-path": httpPaths,
         "dns-rcode": dnsRCodes, "grpc-status": grpcStatuses]
            .filter { !$0.value.isEmpty }
    }

    /// Parses `asDictionary`'s shape; unknown keys and bad values are errors.
    public init(dictionary: [String: [String]]) throws {
        for (key, values) in dictionary {
            switch key {
            case "namespace": namespaces = values
            case "pod": pods = values
            case "from-pod": fromPods = values
            case "to-pod": toPods = values
            case "protocol": protocols = values
            case "verdict":
                verdicts = try values.map { v in
                    guard let verdict = Verdict(rawValue: v.uppercased()) else {
                        throw FilterError.invalid(flag: "--verdict", value: v, reason: "expected FORWARDED, DROPPED, ERROR or AUDIT")
                    }
                    return verdict
                }
            case "http-status": httpStatuses = values
            case "http-method": httpMethods = values
            case "http-path": httpPaths = values
            case "dns-rcode": dnsRCodes = values
            case "grpc-status": grpcStatuses = values
            default: throw FilterError.invalid(flag: key, value: values.joined(separator: ","), reason: "unknown filter")
            }
        }
        try prepare()
    }

    /// The same filter written as `loupe observe` flags, e.g. `--namespace shop --protocol http`
    /// (or `--protocol=http`); values without spaces. For the agent's export allow/deny lists.
    public init(flags: String) throws {
        var dict: [String: [String]] = [:]
        var words = flags.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)[...]
        while let word = words.popFirst() {
            guard word.hasPrefix("--") else {
                throw FilterError.invalid(flag: word, value: flags, reason: "expected a filter flag like --namespace")
            }
            var key = String(word.dropFirst(2)), value: String
            if let eq = key.firstIndex(of: "=") {
                value = String(key[key.index(after: eq)...])
                key = String(key[..<eq])
            } else {
                guard let next = words.popFirst() else {
                    throw FilterError.invalid(flag: word, value: "", reason: "missing value")
                }
                value = next
            }
            dict[key, default: []].append(value)
        }
        try self.init(dictionary: dict)
    }

    /// Validates and compiles what needs compiling (`--http-path`, `--http-status`).
    public mutating func prepare() throws {
        pathRegexes = try httpPaths.map { p in
            do { return try Regex(p) } catch {
                throw FilterError.invalid(flag: "--http-path", value: p, reason: "not a valid regular expression: \(error)")
            }
        }
        for r in dnsRCodes where Self.rcodeNumber(r) == nil {
            throw FilterError.invalid(flag: "--dns-rcode", value: r, reason: "expected a number or NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED")
        }
        for p in protocols where !Self.knownProtocols.contains(p.lowercased()) {
            throw FilterError.invalid(flag: "--protocol", value: p, reason: "expected one of \(Self.knownProtocols.joined(separator: ", "))")
        }
        for g in grpcStatuses where GRPCStatus.code(g) == nil {
            throw FilterError.invalid(flag: "--grpc-status", value: g, reason: "expected a number or a gRPC status name like NOT_FOUND")
        }
        for s in httpStatuses {
            let digits = s.hasSuffix("+") ? String(s.dropLast()) : s
            guard !digits.isEmpty, digits.count <= 3, digits.allSatisfy(\.isNumber) else {
                throw FilterError.invalid(flag: "--http-status", value: s, reason: "expected a code like 403, or a prefix like 5+")
            }
        }
    }

    public func matches(_ f: Flow) -> Bool {
        if !namespaces.isEmpty, !namespaces.contains(where: { $0 == f.source.namespace || $0 == f.destination.namespace }) { return false }
        if !pods.isEmpty, !pods.contains(where: { Self.pod($0, matches: f.source) || Self.pod($0, matches: f.destination) }) { return false }
        // from/to are the connection's client and server, so a response flow matches the same way as its request.
        let client = f.isReply ? f.destination : f.source
        let server = f.isReply ? f.source : f.destination
        if !fromPods.isEmpty, !fromPods.contains(where: { Self.pod($0, matches: client) }) { return false }
        if !toPods.isEmpty, !toPods.contains(where: { Self.pod($0, matches: server) }) { return false }
        if !protocols.isEmpty, !protocols.contains(where: { Self.proto($0.lowercased(), matches: f) }) { return false }
        if !verdicts.isEmpty, !verdicts.contains(f.verdict) { return false }
        if !httpStatuses.isEmpty {
            guard let code = f.l7?.http?.code else { return false }
            if !httpStatuses.contains(where: { Self.status($0, matches: code) }) { return false }
        }
        if !httpMethods.isEmpty {
            guard let m = f.l7?.http?.method else { return false }
            if !httpMethods.contains(where: { $0.uppercased() == m.uppercased() }) { return false }
        }
        if !dnsRCodes.isEmpty {
            guard let dns = f.l7?.dns, f.l7?.type == .response else { return false }
            if !dnsRCodes.contains(where: { Self.rcodeNumber($0) == dns.rcode }) { return false }
        }
        if !grpcStatuses.isEmpty {
            guard let status = Self.grpcStatus(of: f) else { return false }
            if !grpcStatuses.contains(where: { GRPCStatus.code($0) == status }) { return false }
        }
        if !pathRegexes.isEmpty {
            guard let url = f.l7?.http?.url else { return false }
            let path = Self.path(ofURL: url)
            if !pathRegexes.contains(where: { (try? $0.firstMatch(in: path)) != nil }) { return false }
        }
        return true
    }

    static func pod(_ spec: String, matches e: Endpoint) -> Bool {
        guard let name = e.podName else { return false }
        if let slash = spec.firstIndex(of: "/") {
            let ns = String(spec[..<slash])
            let prefix = String(spec[spec.index(after: slash)...])
            return e.namespace == ns && name.hasPrefix(prefix)
        }
        return (e.namespace ?? "default") == "default" && name.hasPrefix(spec)
    }

    static func proto(_ p: String, matches f: Flow) -> Bool {
        switch p {
        case "http": return f.l7?.http != nil
        case "grpc": return f.l7?.http?.headers.contains { $0.key.lowercased() == "content-type" && GRPCStatus.isGRPC(contentType: $0.value) } ?? false
        case "dns": return f.l7?.dns != nil
        case "tcp": return f.l4.tcp != nil
        case "udp": return f.l4.udp != nil
        default: return false
        }
    }

    static let knownProtocols = ["http", "grpc", "dns", "tcp", "udp"]

    /// The `grpc-status` a response flow carries in its headers.
    static func grpcStatus(of f: Flow) -> Int? {
        guard f.l7?.type == .response, let v = f.l7?.http?.headers.first(where: { $0.key == "grpc-status" })?.value else { return nil }
        return Int(v)
    }

    /// DNS response codes by number, as `--dns-rcode` and the service map spell them.
    static let rcodeNames = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"]

    static func rcodeNumber(_ s: String) -> UInt32? {
        UInt32(s) ?? rcodeNames.firstIndex(of: s.uppercased()).map(UInt32.init)
    }

    /// `3` → `NXDOMAIN`; a code outside the table as `RCODE<n>`.
    public static func rcodeName(_ code: UInt32) -> String {
        rcodeNames.indices.contains(Int(code)) ? rcodeNames[Int(code)] : "RCODE\(code)"
    }

    static func status(_ spec: String, matches code: Int) -> Bool {
        let s = String(code)
        if spec.hasSuffix("+") { return s.hasPrefix(String(spec.dropLast())) }
        return s == spec
    }

    /// The path part of an absolute URL (`http://host/p?q` → `/p`).
    public static func path(ofURL url: String) -> String {
        var rest = Substring(url)
        if let scheme = rest.range(of: "://") { rest = rest[scheme.upperBound...] }
        guard let slash = rest.firstIndex(of: "/") else { return "/" }
        var path = rest[slash...]
        if let q = path.firstIndex(where: { $0 == "?" || $0 == "#" }) { path = path[..<q] }
        return String(path)
    }
}
