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
        /// The peer is allowed; requests must match one of these rules (HTTP requests the
        /// HTTP rules, DNS queries the DNS rules).
        case rules(http: [CiliumNetworkPolicy.HTTPRule], dns: [CiliumNetworkPolicy.DNSRule])

        func allows(_ request: HTTPRequestFacts) -> Bool {
            switch self {
            case .notEnforced, .allowAll: return true
            case .denied: return false
            case .rules(let http, _): return http.contains { $0.matches(request) }
            }
        }

        func allows(dnsQuery name: String) -> Bool {
            switch self {
            case .notEnforced, .allowAll: return true
            case .denied: return false
            case .rules(_, let dns): return dns.contains { $0.matches(name) }
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
            if case .rules(let h, _) = ingress, !h.isEmpty { return true }
            if case .rules(let h, _) = egress, !h.isEmpty { return true }
            return false
        }

        /// DNS rules apply on this connection (DNS over TCP is inspected frame by frame).
        public var hasDNSRules: Bool {
            if case .rules(_, let d) = ingress, !d.isEmpty { return true }
            if case .rules(_, let d) = egress, !d.isEmpty { return true }
            return false
        }

        /// Which side denied, for flows.
        public var deniedDirection: String { ingress.isDenied ? "ingress" : "egress" }

        public func allows(_ request: HTTPRequestFacts) -> Bool {
            ingress.allows(request) && egress.allows(request)
        }

        public func allows(dnsQuery name: String) -> Bool {
            ingress.allows(dnsQuery: name) && egress.allows(dnsQuery: name)
        }
    }

    /// `client`/`server` are nil for peers outside the inventory (the world).
    public func decide(client: Pod?, server: Pod?, port: UInt16, tcp: Bool = true) -> ConnectionDecision {
        ConnectionDecision(
            ingress: server.map { direction(endpoint: $0, peer: client, port: port, tcp: tcp, ingress: true) } ?? .notEnforced,
            egress: client.map { direction(endpoint: $0, peer: server, port: port, tcp: tcp, ingress: false) } ?? .notEnforced)
    }

    /// A port with L7 rules: redirected to the proxy even without a visibility annotation,
    /// and fail closed. `dns` ports go to the DNS proxy.
    public struct L7Port: Hashable, Sendable {
        public var port: UInt16
        public var tcp: Bool
        public var dns: Bool
        public init(port: UInt16, tcp: Bool, dns: Bool) {
            self.port = port
            self.tcp = tcp
            self.dns = dns
        }
    }

    /// Ports of `pod` that carry HTTP or DNS rules, per direction.
    public func l7Ports(of pod: Pod) -> (ingress: Set<L7Port>, egress: Set<L7Port>) {
        var ingress = Set<L7Port>(), egress = Set<L7Port>()
        for (_, rule) in selectingRules(pod) {
            for pr in rule.ingress ?? [] { ingress.formUnion(Self.l7Ports(pr)) }
            for pr in rule.egress ?? [] { egress.formUnion(Self.l7Ports(pr)) }
        }
        return (ingress, egress)
    }

    static func l7Ports(_ pr: CiliumNetworkPolicy.PeerRule) -> Set<L7Port> {
        var out = Set<L7Port>()
        for portRule in pr.toPorts ?? [] where portRule.hasL7 {
            for p in portRule.ports where p.port != 0 {
                let dns = portRule.dns != nil
                if p.l4 != .udp { out.insert(L7Port(port: p.port, tcp: true, dns: dns)) }
                if p.l4 != .tcp && dns { out.insert(L7Port(port: p.port, tcp: false, dns: true)) }
            }
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

    func direction(endpoint: Pod, peer: Pod?, port: UInt16, tcp: Bool, ingress: Bool) -> DirectionDecision {
        let rules = selectingRules(endpoint).compactMap { p, r -> (CiliumNetworkPolicy, [CiliumNetworkPolicy.PeerRule])? in
            guard let prs = ingress ? r.ingress : r.egress else { return nil }
            return (p, prs)
        }
        if rules.isEmpty { return .notEnforced }
        var peerAllowed = false, allowAll = false
        var http: [CiliumNetworkPolicy.HTTPRule] = []
        var dns: [CiliumNetworkPolicy.DNSRule] = []
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
                for portRule in toPorts where portRule.ports.isEmpty || portRule.ports.contains(where: { $0.matches(port: port, tcp: tcp) }) {
                    peerAllowed = true
                    if !portRule.hasL7 { allowAll = true }
                    http += portRule.http ?? []
                    dns += portRule.dns ?? []
                }
            }
        }
        if !peerAllowed { return .denied }
        return allowAll ? .allowAll : .rules(http: http, dns: dns)
    }

    static func selector(_ s: LabelSelector, of policy: CiliumNetworkPolicy, matches peer: Pod) -> Bool {
        if let ns = policy.namespace, !s.mentionsNamespace, peer.namespace != ns { return false }
        return s.matches(peer.selectorLabels)
    }
}
