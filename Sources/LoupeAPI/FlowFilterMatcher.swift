import Foundation
import LoupeFlow
import SwiftProtobuf

/// Hubble's `flow.FlowFilter` compiled into a predicate over `flow.Flow`, with Cilium's local
/// observer semantics: within one filter every set field must match (a field's list matches when
/// any of its entries does); a request's whitelist matches when any filter does, its blacklist
/// when none does. Every FlowFilter field is evaluated against the flow as the API sends it; the
/// one Loupe cannot evaluate (CEL expressions) and fields this build does not know are refused.
public struct FlowFilterMatcher: Sendable {
    /// A filter Loupe will not evaluate: becomes INVALID_ARGUMENT naming `field`.
    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public var field: String
        public var reason: String
        public var description: String { "FlowFilter.\(field): \(reason)" }
    }

    typealias Predicate = @Sendable (Flow_Flow) -> Bool
    private let predicates: [Predicate]

    public init(_ f: Flow_FlowFilter) throws {
        var p: [Predicate] = []
        func add(_ pred: @escaping Predicate) { p.append(pred) }
        if !f.unknownFields.data.isEmpty {
            throw Invalid(field: "(unknown field)", reason: "the filter sets a field this Loupe build does not know; upgrade Loupe or drop it")
        }
        if f.hasExperimental {
            if !f.experimental.celExpression.isEmpty {
                throw Invalid(field: "experimental.cel_expression", reason: "CEL expressions are not supported by Loupe")
            }
            if !f.experimental.unknownFields.data.isEmpty {
                throw Invalid(field: "experimental", reason: "unknown experimental filter")
            }
        }
        /// A field of values compiled once (`make` names the field in its errors): it matches
        /// when any value does.
        func any<M: Sendable>(_ values: [String], _ make: (String) throws -> M,
                              _ matches: @escaping @Sendable (M, Flow_Flow) -> Bool) throws {
            guard !values.isEmpty else { return }
            let compiled = try values.map(make)
            add { ev in compiled.contains { matches($0, ev) } }
        }
        if !f.uuid.isEmpty { let s = Set(f.uuid); add { s.contains($0.uuid) } }
        try any(f.sourceIp, { try IPMatch($0, field: "source_ip") }) { $0.matches($1.ip.source) }
        try any(f.sourceIpXlated, { try IPMatch($0, field: "source_ip_xlated") }) { $0.matches($1.ip.sourceXlated) }
        try any(f.destinationIp, { try IPMatch($0, field: "destination_ip") }) { $0.matches($1.ip.destination) }
        try any(f.sourcePod, { try NamePrefix($0, field: "source_pod") }) {
            $0.matches(namespace: $1.source.namespace, name: $1.source.podName)
        }
        try any(f.destinationPod, { try NamePrefix($0, field: "destination_pod") }) {
            $0.matches(namespace: $1.destination.namespace, name: $1.destination.podName)
        }
        try any(f.sourceService, { try NamePrefix($0, field: "source_service") }) {
            $0.matches(namespace: $1.sourceService.namespace, name: $1.sourceService.name)
        }
        try any(f.destinationService, { try NamePrefix($0, field: "destination_service") }) {
            $0.matches(namespace: $1.destinationService.namespace, name: $1.destinationService.name)
        }
        try any(f.sourceFqdn, { try FQDNPattern($0, field: "source_fqdn") }) { p, ev in ev.sourceNames.contains { p.matches($0) } }
        try any(f.destinationFqdn, { try FQDNPattern($0, field: "destination_fqdn") }) { p, ev in
            ev.destinationNames.contains { p.matches($0) }
        }
        try any(f.sourceLabel, { try LabelSelectorText($0, field: "source_label") }) { $0.matches($1.source.labels) }
        try any(f.destinationLabel, { try LabelSelectorText($0, field: "destination_label") }) { $0.matches($1.destination.labels) }
        try any(f.nodeLabels, { try LabelSelectorText($0, field: "node_labels") }) { $0.matches($1.nodeLabels) }
        if !f.sourceWorkload.isEmpty { let w = f.sourceWorkload; add { ev in Self.workloads(w, match: ev.source.workloads) } }
        if !f.destinationWorkload.isEmpty { let w = f.destinationWorkload; add { ev in Self.workloads(w, match: ev.destination.workloads) } }
        if !f.sourceClusterName.isEmpty { let s = Set(f.sourceClusterName); add { s.contains($0.source.clusterName) } }
        if !f.destinationClusterName.isEmpty { let s = Set(f.destinationClusterName); add { s.contains($0.destination.clusterName) } }
        if !f.trafficDirection.isEmpty { let s = f.trafficDirection; add { s.contains($0.trafficDirection) } }
        if !f.verdict.isEmpty { let s = f.verdict; add { s.contains($0.verdict) } }
        if !f.dropReasonDesc.isEmpty { let s = f.dropReasonDesc; add { s.contains($0.dropReasonDesc) } }
        if !f.interface.isEmpty {
            let s = f.interface
            add { ev in
                ev.hasInterface && s.contains { i in (i.index == 0 || i.index == ev.interface.index) && (i.name.isEmpty || i.name == ev.interface.name) }
            }
        }
        if !f.eventType.isEmpty {
            let s = f.eventType
            add { ev in
                ev.hasEventType && s.contains { t in t.type == ev.eventType.type && (!t.matchSubType || t.subType == ev.eventType.subType) }
            }
        }
        try any(f.httpStatusCode, StatusCode.init) { status, ev in
            guard case .http(let h)? = ev.l7.record, h.code != 0 else { return false }
            return status.matches(h.code)
        }
        if !f.protocol.isEmpty {
            let names = try f.protocol.map { p -> String in
                let l = p.lowercased()
                guard Self.protocols.contains(l) else {
                    throw Invalid(field: "protocol", reason: "unknown protocol \"\(p)\" (expected one of \(Self.protocols.joined(separator: ", ")))")
                }
                return l
            }
            add { ev in names.contains { Self.flow(ev, hasProtocol: $0) } }
        }
        if !f.sourcePort.isEmpty {
            let ports = try f.sourcePort.map { try Self.port($0, field: "source_port") }
            add { ev in Self.ports(of: ev).map { ports.contains($0.source) } ?? false }
        }
        if !f.destinationPort.isEmpty {
            let ports = try f.destinationPort.map { try Self.port($0, field: "destination_port") }
            add { ev in Self.ports(of: ev).map { ports.contains($0.destination) } ?? false }
        }
        if !f.reply.isEmpty { let s = f.reply; add { ev in ev.hasIsReply && s.contains(ev.isReply.value) } }
        try any(f.dnsQuery, { try Pattern($0, field: "dns_query") }) { p, ev in
            guard case .dns(let d)? = ev.l7.record else { return false }
            return p.matches(d.query)
        }
        if !f.sourceIdentity.isEmpty { let s = Set(f.sourceIdentity); add { s.contains($0.source.identity) } }
        if !f.destinationIdentity.isEmpty { let s = Set(f.destinationIdentity); add { s.contains($0.destination.identity) } }
        if !f.httpMethod.isEmpty {
            let s = Set(f.httpMethod.map { $0.uppercased() })
            add { ev in
                guard case .http(let h)? = ev.l7.record else { return false }
                return s.contains(h.method.uppercased())
            }
        }
        try any(f.httpPath, { try Pattern($0, field: "http_path") }) { p, ev in
            guard case .http(let h)? = ev.l7.record, !h.url.isEmpty else { return false }
            return p.matches(FlowFilter.path(ofURL: h.url))
        }
        try any(f.httpURL, { try Pattern($0, field: "http_url") }) { p, ev in
            guard case .http(let h)? = ev.l7.record, !h.url.isEmpty else { return false }
            return p.matches(h.url)
        }
        if !f.httpHeader.isEmpty {
            let want = f.httpHeader
            add { ev in
                guard case .http(let h)? = ev.l7.record else { return false }
                return want.contains { w in h.headers.contains { $0.key.lowercased() == w.key.lowercased() && $0.value == w.value } }
            }
        }
        if !f.tcpFlags.isEmpty {
            let want = f.tcpFlags
            add { ev in
                guard case .tcp(let t)? = ev.l4.protocol else { return false }
                return want.contains { Self.flags(t.flags, include: $0) }
            }
        }
        try any(f.nodeName, NodePattern.init) { $0.matches($1.nodeName) }
        if !f.ipVersion.isEmpty { let s = f.ipVersion; add { s.contains($0.ip.ipVersion) } }
        if !f.traceID.isEmpty { let s = Set(f.traceID); add { ev in ev.hasTraceContext && s.contains(ev.traceContext.parent.traceID) } }
        if !f.ipTraceID.isEmpty { let s = Set(f.ipTraceID); add { ev in ev.hasIpTraceID && s.contains(ev.ipTraceID.traceID) } }
        if !f.encrypted.isEmpty { let s = f.encrypted; add { ev in s.contains(ev.ip.encrypted) } }
        predicates = p
    }

    public func matches(_ flow: Flow_Flow) -> Bool {
        for p in predicates where !p(flow) { return false }
        return true
    }

    /// `hubble observe --protocol`'s names (L4 and L7), plus Loupe's `grpc`.
    static let protocols = ["tcp", "udp", "icmp", "icmpv4", "icmpv6", "sctp", "vrrp", "igmp", "http", "dns", "kafka", "grpc"]

    static func flow(_ ev: Flow_Flow, hasProtocol p: String) -> Bool {
        switch (p, ev.l4.protocol, ev.l7.record) {
        case ("tcp", .tcp?, _), ("udp", .udp?, _), ("sctp", .sctp?, _), ("vrrp", .vrrp?, _), ("igmp", .igmp?, _),
             ("icmp", .icmpv4?, _), ("icmp", .icmpv6?, _), ("icmpv4", .icmpv4?, _), ("icmpv6", .icmpv6?, _),
             ("http", _, .http?), ("dns", _, .dns?), ("kafka", _, .kafka?):
            return true
        case ("grpc", _, .http(let h)?):
            return h.headers.contains { $0.key.lowercased() == "content-type" && GRPCStatus.isGRPC(contentType: $0.value) }
        default:
            return false
        }
    }

    static func ports(of ev: Flow_Flow) -> (source: UInt32, destination: UInt32)? {
        switch ev.l4.protocol {
        case .tcp(let t): (t.sourcePort, t.destinationPort)
        case .udp(let u): (u.sourcePort, u.destinationPort)
        case .sctp(let s): (s.sourcePort, s.destinationPort)
        default: nil
        }
    }

    static func port(_ text: String, field: String) throws -> UInt32 {
        guard let p = UInt16(text) else { throw Invalid(field: field, reason: "\"\(text)\" is not a port number (0-65535)") }
        return UInt32(p)
    }

    static func workloads(_ want: [Flow_Workload], match have: [Flow_Workload]) -> Bool {
        want.contains { w in have.contains { (w.name.isEmpty || $0.name == w.name) && (w.kind.isEmpty || $0.kind == w.kind) } }
    }

    /// Every flag set in `want` is set in `have`.
    static func flags(_ have: Flow_TCPFlags, include want: Flow_TCPFlags) -> Bool {
        (!want.fin || have.fin) && (!want.syn || have.syn) && (!want.rst || have.rst) && (!want.psh || have.psh)
            && (!want.ack || have.ack) && (!want.urg || have.urg) && (!want.ece || have.ece) && (!want.cwr || have.cwr)
            && (!want.ns || have.ns)
    }
}

/// An address or a CIDR (`198.18.0.0/16`, `2001:db8::/32`).
struct IPMatch: Sendable {
    let network: [UInt8]
    let prefix: Int

    init(_ text: String, field: String) throws {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let addr = Self.bytes(String(parts[0])) else {
            throw FlowFilterMatcher.Invalid(field: field, reason: "\"\(text)\" is not an IP address or CIDR")
        }
        var prefix = addr.count * 8
        if parts.count == 2 {
            guard let p = Int(parts[1]), (0...(addr.count * 8)).contains(p) else {
                throw FlowFilterMatcher.Invalid(field: field, reason: "\"\(text)\": bad prefix length")
            }
            prefix = p
        }
        self.network = addr
        self.prefix = prefix
    }

    func matches(_ ip: String) -> Bool {
        guard let a = Self.bytes(ip), a.count == network.count else { return false }
        var bits = prefix
        for i in 0..<a.count where bits > 0 {
            let mask: UInt8 = bits >= 8 ? 0xff : ~(0xff >> UInt8(bits))
            if a[i] & mask != network[i] & mask { return false }
            bits -= 8
        }
        return true
    }

    static func bytes(_ s: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, s, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, s, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}

/// `[namespace/]name-prefix` as Hubble reads pod and service filters: no namespace means
/// `default`; `ns/` alone means the whole namespace.
struct NamePrefix: Sendable {
    let namespace: String
    let prefix: String

    init(_ text: String, field: String) throws {
        guard !text.isEmpty else { throw FlowFilterMatcher.Invalid(field: field, reason: "empty name") }
        if let slash = text.firstIndex(of: "/") {
            namespace = String(text[..<slash])
            prefix = String(text[text.index(after: slash)...])
        } else {
            namespace = "default"
            prefix = text
        }
    }

    func matches(namespace ns: String, name: String) -> Bool {
        ns == namespace && (prefix.isEmpty || (!name.isEmpty && name.hasPrefix(prefix)))
    }
}

/// A regular expression (RE2 syntax in Hubble; Swift's Regex reads the common subset),
/// unanchored as Go's MatchString.
struct Pattern: @unchecked Sendable { // the compiled Regex is immutable
    let regex: Regex<AnyRegexOutput>
    init(_ text: String, field: String) throws {
        do { regex = try Regex(text) } catch {
            throw FlowFilterMatcher.Invalid(field: field, reason: "\"\(text)\" is not a valid regular expression")
        }
    }
    func matches(_ s: String) -> Bool { (try? regex.firstMatch(in: s)) != nil }
}

/// A DNS name with `*` wildcards (`*.example.test`), case-insensitive, trailing dot ignored.
struct FQDNPattern: @unchecked Sendable {
    let regex: Regex<AnyRegexOutput>
    init(_ text: String, field: String) throws {
        let name = Self.normal(text)
        guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.*".contains($0) }) else {
            throw FlowFilterMatcher.Invalid(field: field, reason: "\"\(text)\" is not a DNS name pattern")
        }
        let body = name.split(separator: "*", omittingEmptySubsequences: false)
            .map { NSRegularExpression.escapedPattern(for: String($0)) }
            .joined(separator: "[-a-z0-9_]*")
        regex = try Regex("^" + body + "$")
    }
    func matches(_ s: String) -> Bool { (try? regex.wholeMatch(in: Self.normal(s))) != nil }
    static func normal(_ s: String) -> String { (s.hasSuffix(".") ? String(s.dropLast()) : s).lowercased() }
}

/// A node name pattern (`loupe-*`, `cluster/node`, `cluster/`): `*` stands for any run of
/// characters but dots; Loupe's nodes are in cluster `default`.
struct NodePattern: Sendable {
    let cluster: FQDNPattern?
    let node: FQDNPattern?
    init(_ text: String) throws {
        guard !text.isEmpty else { throw FlowFilterMatcher.Invalid(field: "node_name", reason: "empty pattern") }
        if let slash = text.firstIndex(of: "/") {
            let c = String(text[..<slash]), n = String(text[text.index(after: slash)...])
            cluster = c.isEmpty ? nil : try FQDNPattern(c, field: "node_name")
            node = n.isEmpty ? nil : try FQDNPattern(n, field: "node_name")
        } else {
            cluster = nil
            node = try FQDNPattern(text, field: "node_name")
        }
    }
    func matches(_ nodeName: String) -> Bool {
        var c = "default", n = nodeName
        if let slash = nodeName.firstIndex(of: "/") {
            c = String(nodeName[..<slash])
            n = String(nodeName[nodeName.index(after: slash)...])
        }
        return (cluster?.matches(c) ?? true) && (node?.matches(n) ?? true)
    }
}

/// An HTTP status filter: `404`, or a prefix `4+` / `40+`.
struct StatusCode: Sendable {
    let text: String
    let isPrefix: Bool
    init(_ spec: String) throws {
        isPrefix = spec.hasSuffix("+")
        text = isPrefix ? String(spec.dropLast()) : spec
        guard !text.isEmpty, text.count <= 3, text.allSatisfy(\.isNumber), isPrefix || text.count == 3 else {
            throw FlowFilterMatcher.Invalid(field: "http_status_code", reason: "\"\(spec)\": expected a code like 404 or a prefix like 5+")
        }
    }
    func matches(_ code: UInt32) -> Bool {
        let s = String(code)
        return isPrefix ? s.hasPrefix(text) : s == text
    }
}

/// A Kubernetes label selector as text (`app=xwing`, `k8s:org in (empire, alliance)`, `!debug`,
/// `tier!=db`, comma-separated, all must hold) over Cilium-style labels (`k8s:app=xwing`). A
/// key without a source (`app`) matches that key from any source.
struct LabelSelectorText: Sendable {
    enum Op: Sendable { case equals([String]), notEquals([String]), exists, notExists }
    let requirements: [(key: String, op: Op)]

    init(_ text: String, field: String) throws {
        func invalid(_ why: String) -> FlowFilterMatcher.Invalid {
            .init(field: field, reason: "\"\(text)\": \(why)")
        }
        // Split on commas outside parentheses.
        var parts: [String] = [], depth = 0, cur = ""
        for ch in text {
            if ch == "(" { depth += 1 } else if ch == ")" { depth -= 1 }
            if ch == "," && depth == 0 { parts.append(cur); cur = "" } else { cur.append(ch) }
        }
        parts.append(cur)
        var reqs: [(String, Op)] = []
        for raw in parts {
            let r = raw.trimmingCharacters(in: .whitespaces)
            guard !r.isEmpty else { throw invalid("empty requirement") }
            func values(_ s: Substring) throws -> [String] {
                let t = s.trimmingCharacters(in: .whitespaces)
                guard t.hasPrefix("("), t.hasSuffix(")") else { throw invalid("expected (value, …)") }
                return t.dropFirst().dropLast().split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            }
            if r.hasPrefix("!") {
                reqs.append((try Self.key(String(r.dropFirst()), invalid), .notExists))
            } else if let range = r.range(of: " notin ") {
                reqs.append((try Self.key(String(r[..<range.lowerBound]), invalid), .notEquals(try values(r[range.upperBound...]))))
            } else if let range = r.range(of: " in ") {
                reqs.append((try Self.key(String(r[..<range.lowerBound]), invalid), .equals(try values(r[range.upperBound...]))))
            } else if let range = r.range(of: "!=") {
                reqs.append((try Self.key(String(r[..<range.lowerBound]), invalid), .notEquals([String(r[range.upperBound...]).trimmingCharacters(in: .whitespaces)])))
            } else if let range = r.range(of: "==") ?? r.range(of: "=") {
                reqs.append((try Self.key(String(r[..<range.lowerBound]), invalid), .equals([String(r[range.upperBound...]).trimmingCharacters(in: .whitespaces)])))
            } else {
                reqs.append((try Self.key(r, invalid), .exists))
            }
        }
        requirements = reqs
    }

    static func key(_ s: String, _ invalid: (String) -> FlowFilterMatcher.Invalid) throws -> String {
        let k = s.trimmingCharacters(in: .whitespaces)
        guard !k.isEmpty, !k.contains(where: { $0 == " " || $0 == "=" || $0 == "(" || $0 == ")" }) else { throw invalid("bad label key \"\(s)\"") }
        return k
    }

    func matches(_ labels: [String]) -> Bool {
        // source:key=value → the value under "source:key" and under "key".
        var byKey: [String: String] = [:]
        for l in labels {
            let kv = l.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let full = String(kv[0]), value = kv.count > 1 ? String(kv[1]) : ""
            byKey[full] = value
            if let colon = full.firstIndex(of: ":") { byKey[String(full[full.index(after: colon)...])] = value }
        }
        return requirements.allSatisfy { req in
            let v = byKey[req.key]
            switch req.op {
            case .exists: return v != nil
            case .notExists: return v == nil
            case .equals(let vs): return v.map(vs.contains) ?? false
            case .notEquals(let vs): return v.map { !vs.contains($0) } ?? true
            }
        }
    }
}

/// A request's whitelist and blacklist together.
public struct FlowFilterSet: Sendable {
    let whitelist: [FlowFilterMatcher]
    let blacklist: [FlowFilterMatcher]

    public init(whitelist: [Flow_FlowFilter], blacklist: [Flow_FlowFilter]) throws {
        self.whitelist = try whitelist.map(FlowFilterMatcher.init)
        self.blacklist = try blacklist.map(FlowFilterMatcher.init)
    }

    public var isEmpty: Bool { whitelist.isEmpty && blacklist.isEmpty }

    public func matches(_ flow: Flow_Flow) -> Bool {
        if !whitelist.isEmpty && !whitelist.contains(where: { $0.matches(flow) }) { return false }
        return !blacklist.contains { $0.matches(flow) }
    }
}
