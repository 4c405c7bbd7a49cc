/// Which traffic of which pod goes to the proxy: the visibility annotations of the inventory,
/// resolved per pod (a pod annotation overrides its namespace's).
public struct RedirectPlan: Sendable, Equatable {
    public struct PodRules: Sendable, Equatable {
        public var pod: Pod
        public var rules: [VisibilityRule]
    }

    /// One malformed annotation token, with where it was.
    public struct Problem: Sendable, Equatable, CustomStringConvertible {
        public var object: String
        public var error: VisibilityAnnotationError
        public var description: String { "\(object): annotation \(VisibilityAnnotation.key): \(error)" }
    }

    public var pods: [PodRules] { didSet { index() } }
    public var problems: [Problem]
    /// Position in `pods` by pod address: `rule` and `pod(withIP:)` run per connection and per
    /// DNS query, and a node has a hundred pods.
    private var byIP: [String: Int] = [:]

    private mutating func index() {
        byIP = [:]
        for (i, p) in pods.enumerated() { for ip in p.pod.ips where byIP[ip] == nil { byIP[ip] = i } }
    }

    public init(inventory: Inventory) {
        var pods: [PodRules] = []
        var problems: [Problem] = []
        var nsRules: [String: [VisibilityRule]] = [:]
        for ns in inventory.namespaces {
            guard let value = VisibilityAnnotation.value(in: ns.annotations) else { continue }
            let parsed = VisibilityAnnotation.parse(value)
            nsRules[ns.name] = parsed.rules
            problems += parsed.errors.map { Problem(object: "namespace \(ns.name)", error: $0) }
        }
        for pod in inventory.pods {
            var rules = nsRules[pod.namespace] ?? []
            if let value = VisibilityAnnotation.value(in: pod.annotations) {
                let parsed = VisibilityAnnotation.parse(value)
                rules = parsed.rules
                problems += parsed.errors.map { Problem(object: "pod \(pod.qualifiedName)", error: $0) }
            }
            pods.append(PodRules(pod: pod, rules: rules))
        }
        self.pods = pods
        self.problems = problems
        index()
    }

    /// The pod with address `ip` (the plan holds every pod of its inventory, in order; the
    /// first with that address, as `Inventory.pod(withIP:)`).
    public func pod(withIP ip: String) -> Pod? { byIP[ip].map { pods[$0].pod } }

    /// The rule that selects a connection from `client` to `serverIP:port`, if any: the
    /// client's Egress rule first, then the server pod's Ingress rule.
    public func rule(clientIP: String, serverIP: String, port: UInt16, udp: Bool = false) -> VisibilityRule? {
        let carries = { (r: VisibilityRule) in udp ? r.carriesUDP : r.carriesTCP }
        if let c = byIP[clientIP].map({ pods[$0] }),
           let r = c.rules.first(where: { $0.direction == .egress && $0.port == port && carries($0) }) {
            return r
        }
        if let s = byIP[serverIP].map({ pods[$0] }),
           let r = s.rules.first(where: { $0.direction == .ingress && $0.port == port && carries($0) }) {
            return r
        }
        return nil
    }
}
