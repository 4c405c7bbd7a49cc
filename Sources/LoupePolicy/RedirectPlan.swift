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

    public var pods: [PodRules]
    public var problems: [Problem]

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
    }

    /// The rule that selects a connection from `client` to `serverIP:port`, if any: the
    /// client's Egress rule first, then the server pod's Ingress rule.
    public func rule(clientIP: String, serverIP: String, port: UInt16, udp: Bool = false) -> VisibilityRule? {
        let carries = { (r: VisibilityRule) in udp ? r.carriesUDP : r.carriesTCP }
        if let c = pods.first(where: { $0.pod.ips.contains(clientIP) }),
           let r = c.rules.first(where: { $0.direction == .egress && $0.port == port && carries($0) }) {
            return r
        }
        if let s = pods.first(where: { $0.pod.ips.contains(serverIP) }),
           let r = s.rules.first(where: { $0.direction == .ingress && $0.port == port && carries($0) }) {
            return r
        }
        return nil
    }
}
