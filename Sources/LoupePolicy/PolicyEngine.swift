/// Cilium's semantics over a set of policies (pure). For a connection client → server:port,
/// each direction that some policy enforces (the server's ingress, the client's egress)
/// decides: the peer is not allowed on that port (denied), or allowed with every request,
/// or allowed with the requests that match any of the HTTP rules that apply. Multiple
/// policies add up; a namespaced policy selects only pods of its namespace, and its peer
/// selectors only pods of its namespace unless they name the namespace label.
public struct PolicyEngine: Sendable {
    public let policies: [CiliumNetworkPolicy]

    public init(policies: [CiliumNetworkPolicy] = []) {
        self.policies = policies
    }

    public enum DirectionDecision: Sendable {
        /// No policy selects this endpoint in this direction.
        case notEnforced
        /// The peer is not allowed on this port.
        case denied
        /// The peer is allowed on this port, every request.
        case allowAll
        /// The peer is allowed; requests must match one of these rules.
        case http([CiliumNetworkPolicy.HTTPRule])

        func allows(_ request: HTTPRequestFacts) -> Bool {
            switch self {
            case .notEnforced, .allowAll: return true
            case .denied: return false
            case .http(let rules): return rules.contains { $0.matches(request) }
            }
        }

        var isDenied: Bool { if case .denied = self { true } else { false } }
        var isEnforced: Bool { if case .notEnforced = self { false } else { true } }
    }

    public struct ConnectionDecision: Sendable {
        public var ingress: DirectionDecision
        public var egress: DirectionDecision

        public static let unrestricted = ConnectionDecision(ingress: .notEnforced, egress: .notEnforced)

        /// The peer may not connect at all (L3/L4 deny).
        public var deniesConnection: Bool { ingress.isDenied || egress.isDenied }
        public var isEnforced: Bool { ingress.isEnforced || egress.isEnforced }
        /// HTTP rules apply on this connection: bytes that are not HTTP/1 cannot be checked
        /// against them and must not pass.
        public var requiresHTTP: Bool {
            if case .http = ingress { return true }
            if case .http = egress { return true }
            return false
        }

        /// Which side denied, for flows.
        public var deniedDirection: String { ingress.isDenied ? "ingress" : "egress" }

        public func allows(_ request: HTTPRequestFacts) -> Bool {
            ingress.allows(request) && egress.allows(request)
        }
    }

    /// `client`/`server` are nil for peers outside the inventory (the world).
    public func decide(client: Pod?, server: Pod?, port: UInt16) -> ConnectionDecision {
        ConnectionDecision(
            ingress: server.map { direction(endpoint: $0, peer: client, port: port, ingress: true) } ?? .notEnforced,
            egress: client.map { direction(endpoint: $0, peer: server, port: port, ingress: false) } ?? .notEnforced)
    }

    /// Ports of `pod` that carry HTTP rules, per direction: these are redirected to the proxy
    /// even without a visibility annotation, and fail closed.
    public func l7Ports(of pod: Pod) -> (ingress: Set<UInt16>, egress: Set<UInt16>) {
        var ingress = Set<UInt16>(), egress = Set<UInt16>()
        for (_, rule) in selectingRules(pod) {
            for pr in rule.ingress ?? [] { ingress.formUnion(Self.l7Ports(pr)) }
            for pr in rule.egress ?? [] { egress.formUnion(Self.l7Ports(pr)) }
        }
        return (ingress, egress)
    }

    static func l7Ports(_ pr: CiliumNetworkPolicy.PeerRule) -> Set<UInt16> {
        var out = Set<UInt16>()
        for portRule in pr.toPorts ?? [] where portRule.http != nil {
            for p in portRule.ports where p.l4 != .udp && p.port != 0 { out.insert(p.port) }
        }
        return out
    }

    func selectingRules(_ pod: Pod) -> [(CiliumNetworkPolicy, CiliumNetworkPolicy.Rule)] {
        var out: [(CiliumNetworkPolicy, CiliumNetworkPolicy.Rule)] = []
        let labels = pod.selectorLabels
        for p in policies where p.isClusterwide || p.namespace == pod.namespace {
            for r in p.rules where r.endpointSelector.matches(labels) { out.append((p, r)) }
        }
        return out
    }

    func direction(endpoint: Pod, peer: Pod?, port: UInt16, ingress: Bool) -> DirectionDecision {
        let rules = selectingRules(endpoint).compactMap { p, r -> (CiliumNetworkPolicy, [CiliumNetworkPolicy.PeerRule])? in
            guard let prs = ingress ? r.ingress : r.egress else { return nil }
            return (p, prs)
        }
        if rules.isEmpty { return .notEnforced }
        var peerAllowed = false, allowAll = false
        var http: [CiliumNetworkPolicy.HTTPRule] = []
        for (policy, peerRules) in rules {
            for pr in peerRules {
                let peerMatches: Bool
                if let selectors = pr.peers {
                    peerMatches = peer.map { p in selectors.contains { Self.selector($0, of: policy, matches: p) } } ?? false
                } else {
                    peerMatches = pr.toPorts != nil // `{}` alone selects nobody
                }
                guard peerMatches else { continue }
                guard let toPorts = pr.toPorts else {
                    peerAllowed = true
                    allowAll = true
                    continue
                }
                for portRule in toPorts where portRule.ports.isEmpty || portRule.ports.contains(where: { $0.matches(port: port, tcp: true) }) {
                    peerAllowed = true
                    if let h = portRule.http { http += h } else { allowAll = true }
                }
            }
        }
        if !peerAllowed { return .denied }
        return allowAll ? .allowAll : .http(http)
    }

    static func selector(_ s: LabelSelector, of policy: CiliumNetworkPolicy, matches peer: Pod) -> Bool {
        if let ns = policy.namespace, !s.mentionsNamespace, peer.namespace != ns { return false }
        return s.matches(peer.selectorLabels)
    }
}
