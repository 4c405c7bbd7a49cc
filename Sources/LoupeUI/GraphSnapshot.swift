import Foundation
import LoupeAPI

/// What `/api/graph` is asked: `namespace` (any number; none = all), `since` (RFC 3339 or a
/// duration ago), `verdict` and `protocol` (edges with any flow of them), and the most nodes and
/// edges to draw (the rest collapse into one "+N more" card per namespace).
public struct GraphQuery: Sendable, Equatable {
    public static let parameterNames = ["namespace", "since", "verdict", "protocol", "max-nodes", "max-edges"]
    public static let nodeLimit = 2_000, edgeLimit = 10_000

    public var namespaces: [String] = []
    /// Unix seconds.
    public var since: Int64?
    public var verdicts: [String] = []
    public var protocols: [String] = []
    public var maxNodes = 150
    public var maxEdges = 400

    public init() {}

    /// From URL query parameters; unknown names and malformed values are errors naming them.
    public init(parameters: [(String, String)], now: Date = Date()) throws {
        for (name, value) in parameters {
            func number(_ limit: Int) throws -> Int {
                guard let n = Int(value), n > 0, n <= limit else {
                    throw ObserveQuery.Invalid(name: name, value: value, reason: "expected a number from 1 to \(limit)")
                }
                return n
            }
            switch name {
            case "namespace": namespaces += value.split(separator: ",").map(String.init)
            case "since":
                since = try ObserveQuery.timestamp(value, name: name, now: now).seconds
            case "verdict":
                for v in value.split(separator: ",").map({ $0.uppercased() }) {
                    guard ["FORWARDED", "DROPPED", "ERROR", "AUDIT"].contains(v) else {
                        throw ObserveQuery.Invalid(name: name, value: value, reason: "expected FORWARDED, DROPPED, ERROR or AUDIT")
                    }
                    verdicts.append(v)
                }
            case "protocol": protocols += value.split(separator: ",").map { $0.lowercased() }
            case "max-nodes": maxNodes = try number(Self.nodeLimit)
            case "max-edges": maxEdges = try number(Self.edgeLimit)
            default:
                throw ObserveQuery.Invalid(name: name, value: value, reason: "unknown parameter (expected one of \(Self.parameterNames.joined(separator: ", ")))")
            }
        }
    }
}

/// `/api/graph`'s answer (JSON, snake_case keys).
public struct GraphSnapshot: Codable, Sendable {
    public struct Node: Codable, Sendable {
        public var id: String
        public var namespace: String
        public var name: String
        public var kind: String
        public var access: [Access]
        public var flows: Int
        public var dropped: Int
        public var lastSeen: Int64
        /// For a "+N more" card: how many workloads it stands for.
        public var hidden: Int?
    }
    public struct Access: Codable, Sendable {
        public var port: Int
        public var l4: String
        public var l7: String?
    }
    public struct Edge: Codable, Sendable {
        public var id: String
        public var source: String
        public var destination: String
        public var port: Int
        public var `protocol`: String
        public var requests: Int
        public var verdicts: [String: Int]
        public var httpStatus: [String: Int]
        public var dnsRcodes: [String: Int]
        public var latencyMs: Latency?
        public var lastSeen: Int64
    }
    public struct Latency: Codable, Sendable {
        public var p50: Double
        public var p95: Double
    }
    public struct Endpoint: Codable, Sendable {
        public var method: String
        public var path: String
        public var requests: Int
        public var statuses: [String: Int]
    }
    public struct Name: Codable, Sendable {
        public var name: String
        public var queries: Int
    }
    public struct Hidden: Codable, Sendable {
        public var nodes: Int
        public var edges: Int
    }

    public var version: UInt64
    public var flowsSeen: UInt64
    public var since: Int64?
    /// Every namespace seen in the period (for the namespace picker), filtered or not.
    public var namespaces: [String]
    public var nodes: [Node]
    public var edges: [Edge]
    /// Per destination node id: method + path template with status counts.
    public var endpoints: [String: [Endpoint]]
    /// Per source node id: DNS names queried.
    public var dnsNames: [String: [Name]]
    public var hidden: Hidden
}

extension ServiceGraph {
    /// The map for `q`: filtered, then bounded (most-used nodes and edges first).
    public func snapshot(_ q: GraphQuery) -> GraphSnapshot {
        let all = merged(since: q.since)
        let namespaces = Set(all.nodes.keys.map(\.namespace).filter { !$0.isEmpty }).sorted()
        let nsSet = Set(q.namespaces)
        let verdictIndex = ["FORWARDED": 0, "DROPPED": 1, "ERROR": 2, "AUDIT": 3]
        let wantVerdicts = q.verdicts.compactMap { verdictIndex[$0] }
        let edgeFilter = !wantVerdicts.isEmpty || !q.protocols.isEmpty

        func inNamespaces(_ k: GraphNodeKey) -> Bool { nsSet.isEmpty || nsSet.contains(k.namespace) }
        var edges = all.edges.filter { k, v in
            (inNamespaces(k.source) || inNamespaces(k.destination))
                && (wantVerdicts.isEmpty || wantVerdicts.contains { v.verdicts[$0] > 0 })
                && (q.protocols.isEmpty || q.protocols.contains(k.protocol))
        }
        var nodeKeys = Set(edges.keys.flatMap { [$0.source, $0.destination] })
        if !edgeFilter { nodeKeys.formUnion(all.nodes.keys.filter { $0.kind == .workload && inNamespaces($0) }) }

        // Bound the nodes: the busiest stay, the others of a namespace become one "+N more".
        var hiddenNodes = 0
        var replacement: [GraphNodeKey: GraphNodeKey] = [:]
        if nodeKeys.count > q.maxNodes {
            let ranked = nodeKeys.sorted { (all.nodes[$0]?.flows ?? 0, $1) > (all.nodes[$1]?.flows ?? 0, $0) }
            let kept = ranked.prefix(max(q.maxNodes - 1, 1))
            for k in ranked.dropFirst(kept.count) {
                replacement[k] = GraphNodeKey(namespace: k.namespace, name: "+more", kind: .more)
            }
            hiddenNodes = replacement.count
            nodeKeys = Set(kept)
        }
        var moreNodes: [GraphNodeKey: GraphSnapshot.Node] = [:]
        for (k, more) in replacement {
            var n = moreNodes[more] ?? GraphSnapshot.Node(id: more.id, namespace: more.namespace, name: "", kind: "more", access: [],
                                                          flows: 0, dropped: 0, lastSeen: 0, hidden: 0)
            let stats = all.nodes[k] ?? GraphNodeStats()
            n.hidden! += 1
            n.flows += stats.flows
            n.dropped += stats.dropped
            n.lastSeen = max(n.lastSeen, stats.lastSeen)
            n.name = "+\(n.hidden!) more"
            moreNodes[more] = n
        }
        if !replacement.isEmpty {
            var merged: [GraphEdgeKey: GraphEdgeStats] = [:]
            for (k, v) in edges {
                var k = k
                k.source = replacement[k.source] ?? k.source
                k.destination = replacement[k.destination] ?? k.destination
                merged[k, default: GraphEdgeStats()].merge(v)
            }
            edges = merged
        }

        // Bound the edges: the busiest first.
        let sortedEdges = edges.sorted { a, b in
            a.value.requests != b.value.requests ? a.value.requests > b.value.requests
                : (a.key.source, a.key.destination, a.key.port, a.key.protocol) < (b.key.source, b.key.destination, b.key.port, b.key.protocol)
        }
        let shownEdges = sortedEdges.prefix(q.maxEdges)

        var nodes: [GraphSnapshot.Node] = nodeKeys.sorted().map { k in
            let s = all.nodes[k] ?? GraphNodeStats()
            return GraphSnapshot.Node(id: k.id, namespace: k.namespace, name: k.name, kind: k.kind.rawValue,
                                      access: Self.accessPoints(s.access),
                                      flows: s.flows, dropped: s.dropped, lastSeen: s.lastSeen, hidden: nil)
        }
        nodes += moreNodes.values.sorted { $0.id < $1.id }
        let verdictNames = ["FORWARDED", "DROPPED", "ERROR", "AUDIT"]
        let edgesOut: [GraphSnapshot.Edge] = shownEdges.map { k, v in
            var verdicts: [String: Int] = [:]
            for (i, n) in verdictNames.enumerated() where v.verdicts[i] > 0 { verdicts[n] = v.verdicts[i] }
            var status: [String: Int] = [:]
            for (i, n) in v.httpStatus.enumerated() where n > 0 { status["\(i + 1)xx"] = n }
            let latency = v.latency.quantile(0.5).map { GraphSnapshot.Latency(p50: Self.round($0), p95: Self.round(v.latency.quantile(0.95) ?? $0)) }
            return GraphSnapshot.Edge(id: "\(k.source.id)→\(k.destination.id):\(k.port)/\(k.protocol)", source: k.source.id,
                                      destination: k.destination.id, port: k.port, protocol: k.protocol, requests: v.requests,
                                      verdicts: verdicts, httpStatus: status, dnsRcodes: v.dnsRcodes, latencyMs: latency,
                                      lastSeen: v.lastSeen)
        }
        let shownIds = Set(nodes.map(\.id))
        var endpoints: [String: [GraphSnapshot.Endpoint]] = [:]
        for (node, eps) in all.endpoints where shownIds.contains(node.id) {
            endpoints[node.id] = eps.map { k, v in
                GraphSnapshot.Endpoint(method: k.method, path: k.path, requests: v.requests,
                                       statuses: Dictionary(uniqueKeysWithValues: v.statuses.map { (String($0.key), $0.value) }))
            }.sorted { ($0.requests, $1.path, $1.method) > ($1.requests, $0.path, $0.method) }
        }
        var dnsNames: [String: [GraphSnapshot.Name]] = [:]
        for (node, names) in all.names where shownIds.contains(node.id) {
            dnsNames[node.id] = names.map { GraphSnapshot.Name(name: $0.key, queries: $0.value) }
                .sorted { ($0.queries, $1.name) > ($1.queries, $0.name) }
        }
        return GraphSnapshot(version: version, flowsSeen: flowsSeen, since: q.since, namespaces: namespaces, nodes: nodes,
                             edges: edgesOut, endpoints: endpoints, dnsNames: dnsNames,
                             hidden: .init(nodes: hiddenNodes, edges: sortedEdges.count - shownEdges.count))
    }

    /// Sorted; a port seen with an L7 protocol is not listed again without it.
    static func accessPoints(_ set: Set<GraphAccessPoint>) -> [GraphSnapshot.Access] {
        let parsed = Set(set.filter { $0.l7 != nil }.map { "\($0.port)/\($0.l4)" })
        return set.filter { $0.l7 != nil || !parsed.contains("\($0.port)/\($0.l4)") }.sorted()
            .map { GraphSnapshot.Access(port: $0.port, l4: $0.l4, l7: $0.l7) }
    }

    static func round(_ ms: Double) -> Double { (ms * 1000).rounded() / 1000 }
}
