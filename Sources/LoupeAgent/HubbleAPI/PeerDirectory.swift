import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import LoupeAPI
import LoupePolicy
import LoupeProxy
import ServiceLifecycle
import Synchronization

/// Hubble's peers (`peer.Peer/Notify`, what Hubble Relay dials): every node of the cluster —
/// the inventory's `v1 Node` objects, this node alone when there are none — at its InternalIP
/// and this agent's Hubble port (this node: the address its API advertises). A Service: it
/// follows inventory changes (PEER_ADDED / PEER_DELETED / PEER_UPDATED for a new address) and
/// asks the other nodes' Hubble API for ServerStatus every two seconds (16 nodes per round, in
/// turn); a node whose agent is back (answering again, or with a smaller uptime: restarted) is
/// sent as PEER_UPDATED, so Relay reconnects at once instead of at its next backoff.
final class PeerDirectory: Service, Sendable {
    struct Peer: Sendable, Equatable {
        var name: String
        var address: String
        var tlsServerName: String?
    }

    private struct Probe {
        var answering = false
        var uptimeNanoseconds: UInt64 = 0
    }

    private struct State {
        var peers: [Peer] = []
        var subscribers: [UInt64: AsyncStream<Peer_ChangeNotification>.Continuation] = [:]
        var next: UInt64 = 1
        var probes: [String: Probe] = [:]
        var probeCursor = 0
        var closed = false
    }

    private let environment: ProxyEnvironment
    private let selfNode: HubbleNode
    private let hubblePort: Int?
    private let probing: Bool
    private let logger: Logger
    private let state = Mutex(State())

    /// `hubblePort`: the TCP port of the Hubble API on every node (nil: no TCP listener, so other
    /// nodes are listed but not probed). `probing`: false when the API is TLS-only (the probe
    /// speaks plaintext).
    init(environment: ProxyEnvironment, selfNode: HubbleNode, hubblePort: Int?, probing: Bool, logger: Logger) {
        self.environment = environment
        self.selfNode = selfNode
        self.hubblePort = hubblePort
        self.probing = probing
        self.logger = logger
        let initial = Self.peers(nodes: environment.snapshot.inventory.nodes, selfNode: selfNode, port: hubblePort)
        state.withLock { $0.peers = initial }
    }

    /// The peers now, and a stream of the changes after them; `cancel(id)` ends it.
    func subscribe() -> (id: UInt64, peers: [Peer], changes: AsyncStream<Peer_ChangeNotification>) {
        let (stream, continuation) = AsyncStream<Peer_ChangeNotification>.makeStream(bufferingPolicy: .bufferingNewest(1024))
        let (id, peers, closed) = state.withLock { s -> (UInt64, [Peer], Bool) in
            let id = s.next
            s.next += 1
            if !s.closed { s.subscribers[id] = continuation }
            return (id, s.peers, s.closed)
        }
        if closed { continuation.finish() }
        return (id, peers, stream)
    }

    func cancel(_ id: UInt64) {
        state.withLock { $0.subscribers.removeValue(forKey: id) }?.finish()
    }

    var peers: [Peer] { state.withLock { $0.peers } }

    /// Every peer with whether its Hubble API answered the last probe (nil: not probed yet, or
    /// this node).
    var reachability: [(peer: Peer, answering: Bool?)] {
        state.withLock { s in s.peers.map { ($0, $0.name == selfNode.name ? nil : s.probes[$0.name]?.answering) } }
    }

    static func notification(_ peer: Peer, _ type: Peer_ChangeNotificationType) -> Peer_ChangeNotification {
        .with {
            $0.name = peer.name
            $0.address = peer.address
            $0.type = type
            if let name = peer.tlsServerName { $0.tls = .with { $0.serverName = name } }
        }
    }

    /// Every node, this one with its own advertised address; the others at InternalIP:port
    /// (IPv4 first).
    static func peers(nodes: [ClusterNode], selfNode: HubbleNode, port: Int?) -> [Peer] {
        var out = [Peer(name: selfNode.name, address: selfNode.address, tlsServerName: selfNode.tlsServerName)]
        for node in nodes where node.name != selfNode.name {
            guard let ip = node.preferredAddress else { continue }
            let address = HubbleServer.hostPort(ip, port ?? 4244)
            // Cilium's scheme, `<node>.<cluster>.hubble-grpc.cilium.io`, with this node's suffix.
            let tls = selfNode.tlsServerName.map { own in
                "\(node.name.replacingOccurrences(of: ".", with: "-")).\(own.split(separator: ".").dropFirst().joined(separator: "."))"
            }
            out.append(Peer(name: node.name, address: address, tlsServerName: tls))
        }
        return out
    }

    func run() async throws {
        try? await cancelWhenGracefulShutdown {
            var generation = UInt64.max
            var tick = 0
            while !Task.isCancelled {
                let g = self.environment.generation
                if g != generation {
                    generation = g
                    self.apply(Self.peers(nodes: self.environment.snapshot.inventory.nodes, selfNode: self.selfNode, port: self.hubblePort))
                }
                if self.probing && self.hubblePort != nil && tick % 8 == 0 { await self.probeOthers() }
                tick += 1
                try await Task.sleep(for: .milliseconds(250))
            }
        }
        let ends = state.withLock { s -> [AsyncStream<Peer_ChangeNotification>.Continuation] in
            s.closed = true
            defer { s.subscribers = [:] }
            return Array(s.subscribers.values)
        }
        for c in ends { c.finish() }
    }

    /// The differences from the current list, to every subscriber (by name: a pod event changes
    /// the inventory's generation every time, the node list rarely).
    private func apply(_ wanted: [Peer]) {
        state.withLock { s in
            guard wanted != s.peers else { return }
            let before = Dictionary(s.peers.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
            let after = Set(wanted.map(\.name))
            var changes: [Peer_ChangeNotification] = []
            for p in wanted {
                if let old = before[p.name] {
                    if old != p { changes.append(Self.notification(p, .peerUpdated)) }
                } else {
                    changes.append(Self.notification(p, .peerAdded))
                }
            }
            for old in s.peers where !after.contains(old.name) {
                changes.append(Self.notification(old, .peerDeleted))
                s.probes[old.name] = nil
            }
            s.peers = wanted
            for c in changes { for sub in s.subscribers.values { sub.yield(c) } }
            if !changes.isEmpty {
                logger.info("Hubble peers: \(wanted.map { "\($0.name) \($0.address)" }.joined(separator: ", "))")
            }
        }
    }

    /// At most this many nodes are asked per round (every 2 s), in turn: a large cluster is not
    /// dialled all at once by every agent (each node is then asked every N/16 rounds).
    static let probesPerRound = 16

    /// ServerStatus on the next other nodes (1 s each, concurrently); a node back → PEER_UPDATED.
    private func probeOthers() async {
        let others = state.withLock { s -> [Peer] in
            let all = s.peers.filter { $0.name != selfNode.name }
            guard all.count > Self.probesPerRound else { return all }
            let start = s.probeCursor % all.count
            s.probeCursor = start + Self.probesPerRound
            return (0..<Self.probesPerRound).map { all[(start + $0) % all.count] }
        }
        guard !others.isEmpty else { return }
        await withTaskGroup(of: (Peer, UInt64?).self) { group in
            for peer in others {
                group.addTask { (peer, await Self.uptime(of: peer.address)) }
            }
            for await (peer, uptime) in group {
                state.withLock { s in
                    var probe = s.probes[peer.name] ?? Probe()
                    let back = uptime.map { !probe.answering || $0 < probe.uptimeNanoseconds } ?? false
                    // The first answer after start is not news: the node was listed as added.
                    let first = s.probes[peer.name] == nil
                    probe.answering = uptime != nil
                    probe.uptimeNanoseconds = uptime ?? 0
                    s.probes[peer.name] = probe
                    if back && !first, let current = s.peers.first(where: { $0.name == peer.name }) {
                        logger.info("Hubble peer \(peer.name) (\(peer.address)) is back: PEER_UPDATED")
                        for sub in s.subscribers.values { sub.yield(Self.notification(current, .peerUpdated)) }
                    }
                }
            }
        }
    }

    /// The uptime a node's Hubble API reports, or nil when it does not answer within a second.
    static func uptime(of address: String) async -> UInt64? {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else { return nil }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        let endpoint = HubbleEndpoint(name: address) { [host] in
            let target: any ResolvableTarget = host.contains(":") ? .ipv6(address: host, port: port) : .ipv4(address: host, port: port)
            return try HTTP2ClientTransport.Posix(target: target, transportSecurity: .plaintext)
        }
        return try? await endpoint.withObserver { try await HubbleEndpoint.checkServerStatus($0, timeout: .seconds(1)).uptimeNs }
    }
}
