/// How a peer appears in flows: Hubble's endpoint ID, numeric identity and `k8s:` labels.
public struct EndpointIdentity: Sendable, Equatable {
    public var id: UInt32
    public var identity: UInt32
    public var namespace: String?
    public var podName: String?
    public var labels: [String]
    /// Workload name (the `app` label in the lab; the owner in a cluster).
    public var workload: String?

    /// Hubble's reserved identity for addresses outside the cluster.
    public static let world = EndpointIdentity(id: 0, identity: 2, namespace: nil, podName: nil, labels: ["reserved:world"], workload: nil)

    public init(id: UInt32, identity: UInt32, namespace: String?, podName: String?, labels: [String], workload: String?) {
        self.id = id
        self.identity = identity
        self.namespace = namespace
        self.podName = podName
        self.labels = labels
        self.workload = workload
    }

    /// A pod's identity: labels as `k8s:k=v` plus the namespace label; the numeric identity is
    /// derived from the label set (same labels → same identity, as Cilium allocates them).
    public init(pod: Pod) {
        var labels = pod.labels.map { "k8s:\($0.key)=\($0.value)" }
        labels.append("k8s:io.kubernetes.pod.namespace=\(pod.namespace)")
        labels.sort()
        self.init(id: Self.stableNumber(pod.qualifiedName, range: 4000) + 1,
                  identity: Self.stableNumber(labels.joined(separator: ","), range: 60000) + 256,
                  namespace: pod.namespace, podName: pod.name, labels: labels,
                  workload: pod.labels["app"] ?? pod.labels["app.kubernetes.io/name"] ?? pod.name)
    }

    /// FNV-1a, reduced to `range`: stable across runs and machines.
    static func stableNumber(_ s: String, range: UInt32) -> UInt32 {
        var h: UInt32 = 2166136261
        for b in s.utf8 { h = (h ^ UInt32(b)) &* 16777619 }
        return h % range
    }
}

extension Inventory {
    /// Identity of the peer at `ip`: a pod, or the world.
    public func identity(ofIP ip: String) -> EndpointIdentity {
        if let pod = pod(withIP: ip) { return EndpointIdentity(pod: pod) }
        return .world
    }
}
