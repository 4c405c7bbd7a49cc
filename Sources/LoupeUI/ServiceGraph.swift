import Foundation
import LoupeAPI
import LoupeFlow

/// The service map aggregated from flows, on the server (Hubble UI aggregates in the browser and
/// freezes on busy clusters): workloads grouped by namespace, the world by the DNS name it was
/// reached by, and edges (client, server, port, protocol) with request counts, verdicts, status
/// classes, DNS rcodes and latency. A pure value: `add` per flow, `snapshot` per question.
///
/// Time: flows land in one-minute slices by their own time; `sliceCount` slices are kept apart
/// so that `since` can pick whole minutes, older ones are merged into one aggregate (a `since`
/// further back than the slices reach covers everything since `loupe ui` started).
public struct ServiceGraph: Sendable {
    public static let sliceSeconds: Int64 = 60
    public static let sliceCount = 15

    var slices: [(minute: Int64, slice: GraphSlice)] = []
    var older = GraphSlice()
    /// Bumped on every change; the live stream tells the page when to fetch the map again.
    public private(set) var version: UInt64 = 0
    public private(set) var flowsSeen: UInt64 = 0
    /// URL → path template: the same URLs come again and again (bounded; emptied when full).
    var templates: [String: String] = [:]
    static let templateCacheSize = 8_192

    public init() {}

    mutating func template(_ url: String) -> String {
        if let t = templates[url] { return t }
        let t = PathTemplate.of(url: url)
        if templates.count >= Self.templateCacheSize { templates.removeAll(keepingCapacity: true) }
        templates[url] = t
        return t
    }

    /// Adds one flow. Requests and connection-level flows count as requests (with their verdict);
    /// responses bring status, rcode and latency. Flows the map cannot place (no endpoints at all)
    /// are still counted in `flowsSeen`.
    public mutating func add(_ f: Flow_Flow) {
        flowsSeen &+= 1
        let reply = f.isReply.value
        let clientEnd = reply ? f.destination : f.source
        let serverEnd = reply ? f.source : f.destination
        let client = GraphNodeKey(clientEnd, names: reply ? f.destinationNames : f.sourceNames)
        let server = GraphNodeKey(serverEnd, names: reply ? f.sourceNames : f.destinationNames)
        let (port, l4) = Self.serverPort(f, reply: reply)
        let proto = Self.protocolName(f, l4: l4)
        let minute = Int64(f.time.seconds) / Self.sliceSeconds
        let seen = Int64(f.time.seconds)

        var s = takeSlice(minute)
        let edgeKey = GraphEdgeKey(source: client, destination: server, port: port, protocol: proto)
        let isResponse = f.hasL7 && f.l7.type == .response
        // One in-place update of the edge (through the dictionary's default subscript): no copy
        // of its stats and one hash of its key per flow.
        s.edges[edgeKey, default: GraphEdgeStats()].add(f, isResponse: isResponse, seen: seen)
        if f.hasL7 {
            switch f.l7.record {
            case .http(let h)?:
                s.addEndpoint(server, method: h.method, path: template(h.url), status: isResponse ? Int(h.code) : nil)
            case .dns(let d)? where !isResponse:
                s.addName(client, d.query)
            default: break
            }
        }
        s.touch(client, seen: seen, dropped: !isResponse && f.verdict == .dropped, access: nil)
        s.touch(server, seen: seen, dropped: !isResponse && f.verdict == .dropped,
                access: port > 0 ? GraphAccessPoint(port: port, l4: l4, l7: f.hasL7 ? proto : nil) : nil)
        putSlice(minute, s)
        version &+= 1
    }

    /// The slice of `minute` (removed from the array while it is changed, so it is not copied).
    private mutating func takeSlice(_ minute: Int64) -> GraphSlice {
        if let i = slices.lastIndex(where: { $0.minute == minute }) {
            let s = slices[i].slice
            slices[i].slice = GraphSlice()
            return s
        }
        if let oldest = slices.first?.minute, minute < oldest, slices.count >= Self.sliceCount {
            var s = older
            older = GraphSlice()
            s.isOlder = true
            return s
        }
        return GraphSlice()
    }

    private mutating func putSlice(_ minute: Int64, _ s: GraphSlice) {
        if s.isOlder {
            older = s
            older.isOlder = false
            return
        }
        if let i = slices.lastIndex(where: { $0.minute == minute }) {
            slices[i].slice = s
            return
        }
        let at = slices.firstIndex(where: { $0.minute > minute }) ?? slices.endIndex
        slices.insert((minute, s), at: at)
        while slices.count > Self.sliceCount {
            older.merge(slices.removeFirst().slice)
        }
    }

    /// Everything since `seconds` (Unix time; nil: everything kept).
    func merged(since seconds: Int64?) -> GraphSlice {
        var out = GraphSlice()
        let fromMinute = seconds.map { $0 / Self.sliceSeconds }
        if fromMinute == nil || (slices.first.map { fromMinute! < $0.minute } ?? true) { out.merge(older) }
        for (minute, s) in slices where fromMinute == nil || minute >= fromMinute! { out.merge(s) }
        return out
    }

    /// The server's port and the L4 protocol name (`TCP`, `UDP`, …).
    static func serverPort(_ f: Flow_Flow, reply: Bool) -> (Int, String) {
        switch f.l4.protocol {
        case .tcp(let t)?: return (Int(reply ? t.sourcePort : t.destinationPort), "TCP")
        case .udp(let u)?: return (Int(reply ? u.sourcePort : u.destinationPort), "UDP")
        case .sctp(let s)?: return (Int(reply ? s.sourcePort : s.destinationPort), "SCTP")
        case .icmpv4?, .icmpv6?: return (0, "ICMP")
        default: return (0, "")
        }
    }

    /// `http`, `grpc`, `dns`, or the L4 protocol in lower case.
    static func protocolName(_ f: Flow_Flow, l4: String) -> String {
        guard f.hasL7 else { return l4.lowercased() }
        switch f.l7.record {
        case .http(let h)?:
            let contentType = h.headers.first { $0.key.lowercased() == "content-type" }?.value
            return GRPCStatus.isGRPC(contentType: contentType) ? "grpc" : "http"
        case .dns?: return "dns"
        default: return l4.lowercased()
        }
    }
}

/// A box on the map: a workload in a namespace, or something outside the cluster.
public struct GraphNodeKey: Hashable, Sendable, Comparable {
    public enum Kind: String, Sendable, Codable { case workload, world, host, more }
    public var namespace: String
    public var name: String
    public var kind: Kind

    public init(namespace: String, name: String, kind: Kind) {
        self.namespace = namespace
        self.name = name
        self.kind = kind
    }

    /// Workload = the pod's owner (Hubble's `workloads`), else its `app` label, else the pod;
    /// outside the cluster the DNS name it was reached by, the host, or `world`.
    init(_ e: Flow_Endpoint, names: [String]) {
        if !e.namespace.isEmpty {
            namespace = e.namespace
            kind = .workload
            if let w = e.workloads.first, !w.name.isEmpty {
                name = w.name
            } else if let app = e.labels.first(where: { $0.hasPrefix("k8s:app=") }) {
                name = String(app.dropFirst("k8s:app=".count))
            } else {
                name = e.podName.isEmpty ? "unknown" : e.podName
            }
            return
        }
        namespace = ""
        if e.labels.contains("reserved:host") {
            name = "host"
            kind = .host
        } else {
            name = names.first ?? "world"
            kind = .world
        }
    }

    /// `namespace/name`, or the name alone outside the cluster.
    public var id: String { namespace.isEmpty ? name : "\(namespace)/\(name)" }

    public static func < (a: Self, b: Self) -> Bool { (a.namespace, a.name) < (b.namespace, b.name) }
}

struct GraphEdgeKey: Hashable, Sendable {
    var source: GraphNodeKey
    var destination: GraphNodeKey
    var port: Int
    var `protocol`: String
}

/// How a workload is reached: port, L4 and (when parsed) L7 protocol.
struct GraphAccessPoint: Hashable, Sendable, Comparable, Codable {
    var port: Int
    var l4: String
    var l7: String?
    static func < (a: Self, b: Self) -> Bool { (a.port, a.l4, a.l7 ?? "") < (b.port, b.l4, b.l7 ?? "") }
}

struct GraphEdgeStats: Sendable {
    var requests = 0
    /// FORWARDED, DROPPED, ERROR, AUDIT.
    var verdicts = [0, 0, 0, 0]
    /// 1xx … 5xx.
    var httpStatus = [0, 0, 0, 0, 0]
    var dnsRcodes: [String: Int] = [:]
    var latency = LatencyHistogram()
    var lastSeen: Int64 = 0

    /// A request or connection-level flow counts as a request with its verdict; a response brings
    /// its HTTP status or DNS rcode and its latency.
    mutating func add(_ f: Flow_Flow, isResponse: Bool, seen: Int64) {
        lastSeen = max(lastSeen, seen)
        guard isResponse else {
            requests += 1
            switch f.verdict {
            case .forwarded: verdicts[0] += 1
            case .dropped: verdicts[1] += 1
            case .error: verdicts[2] += 1
            case .audit: verdicts[3] += 1
            default: break
            }
            return
        }
        switch f.l7.record {
        case .http(let h)?:
            if (100..<600).contains(h.code) { httpStatus[Int(h.code) / 100 - 1] += 1 }
        case .dns(let d)?:
            dnsRcodes[FlowFilter.rcodeName(d.rcode), default: 0] += 1
        default: break
        }
        if f.l7.latencyNs > 0 { latency.add(nanoseconds: f.l7.latencyNs) }
    }

    mutating func merge(_ o: Self) {
        requests += o.requests
        for i in 0..<4 { verdicts[i] += o.verdicts[i] }
        for i in 0..<5 { httpStatus[i] += o.httpStatus[i] }
        for (k, v) in o.dnsRcodes { dnsRcodes[k, default: 0] += v }
        latency.merge(o.latency)
        lastSeen = max(lastSeen, o.lastSeen)
    }
}

struct GraphNodeStats: Sendable {
    var access: Set<GraphAccessPoint> = []
    var flows = 0
    var dropped = 0
    var lastSeen: Int64 = 0

    mutating func add(seen: Int64, dropped isDropped: Bool, access point: GraphAccessPoint?) {
        flows += 1
        if isDropped { dropped += 1 }
        lastSeen = max(lastSeen, seen)
        if let point, access.count < 32, !access.contains(point) { access.insert(point) }
    }

    mutating func merge(_ o: Self) {
        access.formUnion(o.access)
        flows += o.flows
        dropped += o.dropped
        lastSeen = max(lastSeen, o.lastSeen)
    }
}

struct EndpointKey: Hashable, Sendable {
    var method: String
    var path: String
}

struct EndpointStats: Sendable {
    var requests = 0
    var statuses: [Int: Int] = [:]
    mutating func add(status: Int?) {
        if let status { statuses[status, default: 0] += 1 } else { requests += 1 }
    }
    mutating func merge(_ o: Self) {
        requests += o.requests
        for (k, v) in o.statuses { statuses[k, default: 0] += v }
    }
}

/// One minute of the map (or everything older).
struct GraphSlice: Sendable {
    /// Per node: at most this many endpoints and DNS names; the rest are counted as `(other)`.
    static let maxEndpointsPerNode = 64
    static let maxNamesPerNode = 64
    static let other = "(other)"

    var nodes: [GraphNodeKey: GraphNodeStats] = [:]
    var edges: [GraphEdgeKey: GraphEdgeStats] = [:]
    var endpoints: [GraphNodeKey: [EndpointKey: EndpointStats]] = [:]
    var names: [GraphNodeKey: [String: Int]] = [:]
    var isOlder = false

    mutating func touch(_ k: GraphNodeKey, seen: Int64, dropped: Bool, access: GraphAccessPoint?) {
        nodes[k, default: GraphNodeStats()].add(seen: seen, dropped: dropped, access: access)
    }

    mutating func addEndpoint(_ server: GraphNodeKey, method: String, path: String, status: Int?) {
        var key = EndpointKey(method: String(method.prefix(16)), path: path)
        if endpoints[server]?[key] == nil && (endpoints[server]?.count ?? 0) >= Self.maxEndpointsPerNode {
            key = EndpointKey(method: "", path: Self.other)
        }
        endpoints[server, default: [:]][key, default: EndpointStats()].add(status: status)
    }

    mutating func addName(_ client: GraphNodeKey, _ query: String) {
        var name = String(query.prefix(253))
        if names[client]?[name] == nil && (names[client]?.count ?? 0) >= Self.maxNamesPerNode { name = Self.other }
        names[client, default: [:]][name, default: 0] += 1
    }

    mutating func merge(_ o: Self) {
        for (k, v) in o.nodes { nodes[k, default: GraphNodeStats()].merge(v) }
        for (k, v) in o.edges { edges[k, default: GraphEdgeStats()].merge(v) }
        for (node, eps) in o.endpoints {
            var mine = endpoints[node] ?? [:]
            for (k, v) in eps { mine[k, default: EndpointStats()].merge(v) }
            endpoints[node] = mine
        }
        for (node, ns) in o.names {
            var mine = names[node] ?? [:]
            for (k, v) in ns { mine[k, default: 0] += v }
            names[node] = mine
        }
    }
}

/// Latency on a log scale: bucket i holds [1 µs · √2^i, 1 µs · √2^(i+1)); 48 buckets reach ≈ 17 s
/// (the last one holds everything slower). Quantiles are the bucket's geometric middle: within
/// ±19 % of the true value, which is what a map needs.
struct LatencyHistogram: Sendable {
    static let buckets = 48
    var counts = [UInt32](repeating: 0, count: 0)
    var total: UInt64 = 0

    mutating func add(nanoseconds: UInt64) {
        if counts.isEmpty { counts = [UInt32](repeating: 0, count: Self.buckets) }
        let us = Double(max(nanoseconds, 1_000)) / 1_000
        let i = min(Self.buckets - 1, Int((2 * log2(us)).rounded(.down)))
        counts[i] &+= 1
        total += 1
    }

    mutating func merge(_ o: Self) {
        guard !o.counts.isEmpty else { return }
        if counts.isEmpty { counts = [UInt32](repeating: 0, count: Self.buckets) }
        for i in 0..<Self.buckets { counts[i] &+= o.counts[i] }
        total += o.total
    }

    /// The q-quantile in milliseconds (nil without samples).
    func quantile(_ q: Double) -> Double? {
        guard total > 0 else { return nil }
        let rank = UInt64((Double(total) * q).rounded(.up))
        var seen: UInt64 = 0
        for (i, c) in counts.enumerated() {
            seen += UInt64(c)
            if seen >= max(rank, 1) {
                return pow(2, (Double(i) + 0.5) / 2) / 1_000
            }
        }
        return nil
    }
}
