import Foundation
import LoupeFlow
import SwiftProtobuf

/// One `loupe observe` request in the terms of its flags (`hubble observe`'s): filter name →
/// values, plus how many flows and from when. `loupe observe` fills it from its options,
/// `loupe ui`'s `/api/flows` and `/api/events` from URL query parameters of the same names
/// (`?namespace=default&verdict=DROPPED&last=50`), so both ask the Hubble API the same
/// question and get the same answer.
public struct ObserveQuery: Sendable, Equatable {
    /// A filter or paging value that cannot be used; `name` is spelled as the caller wrote it
    /// (`--verdict` on the command line, `verdict` in a URL).
    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public var name: String
        public var value: String
        public var reason: String
        public init(name: String, value: String, reason: String) {
            self.name = name
            self.value = value
            self.reason = reason
        }
        public var description: String { value.isEmpty ? "\(name): \(reason)" : "\(name) \"\(value)\": \(reason)" }
    }

    /// The filter names (long flags without `--`). Each takes one or more values.
    public static let filterNames: [String] = [
        "namespace", "from-namespace", "to-namespace", "pod", "from-pod", "to-pod",
        "ip", "from-ip", "to-ip", "port", "from-port", "to-port", "fqdn", "from-fqdn", "to-fqdn",
        "label", "from-label", "to-label", "identity", "from-identity", "to-identity",
        "workload", "from-workload", "to-workload",
        "protocol", "verdict", "type", "traffic-direction", "http-status", "http-method", "http-path", "http-url",
        "node-name", "uuid", "dns-rcode", "grpc-status",
    ]
    /// How many and from when: `last`/`first` N, `all`, `since`/`until` (RFC 3339 or a duration ago).
    public static let pagingNames: [String] = ["last", "first", "all", "since", "until"]

    public var filters: [String: [String]] = [:]
    public var follow = false
    public var last: UInt64?
    public var first: UInt64?
    public var all = false
    public var since: String?
    public var until: String?
    /// How names are written in errors: `--` on the command line, nothing in a URL.
    public var namePrefix: String

    public init(namePrefix: String = "--") { self.namePrefix = namePrefix }

    /// From URL query parameters (already percent-decoded); repeated names add values. An
    /// unknown name or a malformed number is an error naming it.
    public init(parameters: [(String, String)]) throws {
        self.init(namePrefix: "")
        for (name, value) in parameters {
            switch name {
            case "last", "first":
                guard let n = UInt64(value) else { throw Invalid(name: name, value: value, reason: "expected a number of flows") }
                if name == "last" { last = n } else { first = n }
            case "all":
                guard ["", "1", "true"].contains(value) else { throw Invalid(name: name, value: value, reason: "expected true") }
                all = true
            case "since": since = value
            case "until": until = value
            default:
                guard Self.filterNames.contains(name) else {
                    throw Invalid(name: name, value: value, reason: "unknown filter (expected one of \(Self.filterNames.joined(separator: ", ")) or \(Self.pagingNames.joined(separator: ", ")))")
                }
                guard !value.isEmpty else { throw Invalid(name: name, value: value, reason: "empty value") }
                filters[name, default: []].append(value)
            }
        }
    }

    private func values(_ name: String) -> [String] { filters[name] ?? [] }
    private func invalid(_ name: String, _ value: String, _ reason: String) -> Invalid {
        Invalid(name: namePrefix + name, value: value, reason: reason)
    }

    /// The filters Hubble's FlowFilter has no field for (`dns-rcode`, `grpc-status`): the
    /// client evaluates them on the flows it receives.
    public var clientSideFilters: Bool { !values("dns-rcode").isEmpty || !values("grpc-status").isEmpty }

    /// The client-side part, validated.
    public func clientSideFilter() throws -> FlowFilter {
        var extra = FlowFilter()
        extra.dnsRCodes = values("dns-rcode")
        extra.grpcStatuses = values("grpc-status")
        do { try extra.prepare() } catch let FlowFilter.FilterError.invalid(flag, value, reason) {
            throw invalid(String(flag.drop(while: { $0 == "-" })), value, reason)
        }
        return extra
    }

    /// How many of the stream's flows the client keeps when it filters them itself (nil: all).
    public var clientSideKeep: Int? {
        guard clientSideFilters && !follow else { return nil }
        return first.map(Int.init) ?? (all || since != nil || until != nil ? nil : Int(last ?? 20))
    }

    /// With client-side filters and `first N`: whether `count` held flows are enough (stop reading).
    public func isComplete(held count: Int) -> Bool {
        first != nil && clientSideKeep.map { count >= $0 } == true
    }

    /// The held flows to show: the first or last `clientSideKeep` of them (all without a bound).
    public func chosen<T>(from held: [T]) -> [T] {
        guard let keep = clientSideKeep else { return held }
        return first != nil ? Array(held.prefix(keep)) : Array(held.suffix(keep))
    }

    /// The GetFlows request `hubble observe` would send for the same flags.
    public func request() throws -> Observer_GetFlowsRequest {
        if first != nil && follow { throw invalid("first", "", "cannot be combined with \(namePrefix)follow") }
        if first != nil && last != nil { throw invalid("first", "", "cannot be combined with \(namePrefix)last") }
        let clientSide = clientSideFilters
        var r = Observer_GetFlowsRequest()
        r.follow = follow
        r.whitelist = try whitelist()
        if let since { r.since = try Self.timestamp(since, name: namePrefix + "since") }
        if let until { r.until = try Self.timestamp(until, name: namePrefix + "until") }
        if let first {
            r.first = true
            r.number = clientSide ? 0 : first
        } else if all {
            r.number = UInt64.max
        } else if let last {
            r.number = clientSide && !follow ? 0 : last
        } else if !follow && since == nil && until == nil {
            r.number = clientSide ? 0 : 20
        }
        return r
    }

    /// Hubble's CLI shape: the either-side filters (pod, ip, …) make two filters, one with them
    /// as the source and one as the destination; from-*/to-* and the rest go into both.
    public func whitelist() throws -> [Flow_FlowFilter] {
        var base = Flow_FlowFilter()
        func pods(_ pods: [String], _ namespaces: [String]) -> [String] {
            if pods.isEmpty { return namespaces.map { "\($0)/" } }
            if namespaces.isEmpty { return pods }
            return pods.flatMap { p in p.contains("/") ? [p] : namespaces.map { "\($0)/\(p)" } }
        }
        func side(_ prefix: String, namespaces: String) throws -> Endpoints {
            try Endpoints(pods: pods(values(prefix + "pod"), values(namespaces)), ips: values(prefix + "ip"),
                          ports: values(prefix + "port"), fqdns: values(prefix + "fqdn"), labels: values(prefix + "label"),
                          identities: values(prefix + "identity").map { v in
                              guard let n = UInt32(v) else { throw invalid(prefix + "identity", v, "expected a number") }
                              return n
                          },
                          workloads: values(prefix + "workload").map(Self.workload))
        }
        try side("from-", namespaces: "from-namespace").add(asSource: true, to: &base)
        try side("to-", namespaces: "to-namespace").add(asSource: false, to: &base)
        base.protocol = values("protocol")
        base.verdict = try values("verdict").map { v in
            guard let x = Flow_Verdict.named(v.uppercased()) else {
                throw invalid("verdict", v, "expected FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED or TRANSLATED")
            }
            return x
        }
        base.eventType = try values("type").map(eventType)
        base.trafficDirection = try values("traffic-direction").map { d in
            switch d.lowercased() {
            case "ingress": return .ingress
            case "egress": return .egress
            default: throw invalid("traffic-direction", d, "expected ingress or egress")
            }
        }
        base.httpStatusCode = values("http-status")
        base.httpMethod = values("http-method")
        base.httpPath = values("http-path")
        base.httpURL = values("http-url")
        base.nodeName = values("node-name")
        base.uuid = values("uuid")

        let either = try side("", namespaces: "namespace")
        var result: [Flow_FlowFilter]
        if either.isEmpty {
            result = base == Flow_FlowFilter() ? [] : [base]
        } else {
            var a = base, b = base
            either.add(asSource: true, to: &a)
            either.add(asSource: false, to: &b)
            result = [a, b]
        }
        // Checked here, as the agent would, so a bad value is named before anything is sent.
        do { _ = try FlowFilterSet(whitelist: result, blacklist: []) } catch let e as FlowFilterMatcher.Invalid {
            throw Invalid(name: namePrefix + name(ofField: e.field), value: "", reason: e.reason)
        }
        return result
    }

    /// The filter name a FlowFilter field came from (`destination_ip` → `to-ip`, or `ip` when
    /// that is what was given).
    func name(ofField field: String) -> String {
        var name = field.replacingOccurrences(of: "source_", with: "from-").replacingOccurrences(of: "destination_", with: "to-")
            .replacingOccurrences(of: "_", with: "-")
        if name == "http-status-code" { name = "http-status" }
        if filters[name] == nil {
            for prefix in ["from-", "to-"] where name.hasPrefix(prefix) && filters[String(name.dropFirst(prefix.count))] != nil {
                return String(name.dropFirst(prefix.count))
            }
        }
        return name
    }

    /// `KIND/NAME` or `NAME` (any kind).
    static func workload(_ text: String) -> Flow_Workload {
        var w = Flow_Workload()
        if let slash = text.firstIndex(of: "/") {
            w.kind = String(text[..<slash])
            w.name = String(text[text.index(after: slash)...])
        } else {
            w.name = text
        }
        return w
    }

    /// The endpoint selectors of one side (from-*, to-*) or of either side (pod, ip, …).
    struct Endpoints {
        var pods: [String], ips: [String], ports: [String], fqdns: [String], labels: [String], identities: [UInt32]
        var workloads: [Flow_Workload]

        var isEmpty: Bool {
            pods.isEmpty && ips.isEmpty && ports.isEmpty && fqdns.isEmpty && labels.isEmpty && identities.isEmpty && workloads.isEmpty
        }

        /// Adds them to `f` as its source_* or destination_* fields.
        func add(asSource: Bool, to f: inout Flow_FlowFilter) {
            if asSource {
                f.sourcePod += pods; f.sourceIp += ips; f.sourcePort += ports
                f.sourceFqdn += fqdns; f.sourceLabel += labels; f.sourceIdentity += identities
                f.sourceWorkload += workloads
            } else {
                f.destinationPod += pods; f.destinationIp += ips; f.destinationPort += ports
                f.destinationFqdn += fqdns; f.destinationLabel += labels; f.destinationIdentity += identities
                f.destinationWorkload += workloads
            }
        }
    }

    /// `TYPE[:SUBTYPE]` as Hubble's CLI reads `-t` (Cilium's monitor message types).
    func eventType(_ spec: String) throws -> Flow_EventTypeFilter {
        let types: [String: Int32] = ["drop": 1, "debug": 2, "capture": 3, "trace": 4, "policy-verdict": 5,
                                      "recorder": 6, "trace-sock": 7, "l7": 129, "agent": 130]
        let traceSubtypes: [String: Int32] = ["to-endpoint": 0, "to-proxy": 1, "to-host": 2, "to-stack": 3, "to-overlay": 4,
                                              "from-endpoint": 5, "from-proxy": 6, "from-host": 7, "from-stack": 8,
                                              "from-overlay": 9, "from-network": 10, "to-network": 11]
        let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
        guard let head = parts.first, let t = types[head.lowercased()] ?? Int32(head) else {
            throw invalid("type", spec, "expected one of \(types.keys.sorted().joined(separator: ", ")) or a number")
        }
        var f = Flow_EventTypeFilter()
        f.type = t
        if parts.count == 2 {
            guard let sub = (t == 4 ? traceSubtypes[parts[1].lowercased()] : nil) ?? Int32(parts[1]) else {
                throw invalid("type", spec, "unknown sub-type \"\(parts[1])\"")
            }
            f.matchSubType = true
            f.subType = sub
        }
        return f
    }

    /// RFC 3339 (`2026-12-02T15:04:05Z`) or a duration before now (`90s`, `5m`, `1h30m`).
    public static func timestamp(_ text: String, name: String, now: Date = Date()) throws -> Google_Protobuf_Timestamp {
        if let t = FlowTime.parse(text) { return .init(seconds: Int64(t.seconds), nanos: Int32(t.nanoseconds)) }
        let bad = Invalid(name: name, value: text, reason: "expected RFC 3339 (2026-12-02T15:04:05Z) or a duration like 5m")
        var seconds = 0.0, number = "", matched = false
        var chars = Substring(text)
        while let c = chars.first {
            if c.isNumber || c == "." {
                number.append(c)
                chars = chars.dropFirst()
                continue
            }
            let units: [(String, Double)] = [("ms", 0.001), ("us", 0.000001), ("ns", 0.000000001), ("h", 3600), ("m", 60), ("s", 1)]
            guard let (u, scale) = units.first(where: { chars.hasPrefix($0.0) }), let n = Double(number) else { throw bad }
            seconds += n * scale
            number = ""
            matched = true
            chars = chars.dropFirst(u.count)
        }
        guard matched, number.isEmpty else { throw bad }
        return Google_Protobuf_Timestamp(date: now.addingTimeInterval(-seconds))
    }
}

extension Flow_Verdict {
    /// The verdict by its Hubble name (`DROPPED`).
    public static func named(_ name: String) -> Flow_Verdict? {
        ["FORWARDED": .forwarded, "DROPPED": .dropped, "ERROR": .error, "AUDIT": .audit,
         "REDIRECTED": .redirected, "TRACED": .traced, "TRANSLATED": .translated][name]
    }
}
