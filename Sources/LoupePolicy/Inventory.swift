/// What the node runs: namespaces, pods and (in the lab) outside hosts, in Kubernetes' words.
/// Loaded from multi-document YAML by `InventoryLoader`; the lab writes the resolved copy with
/// `status` filled in.
public struct Inventory: Sendable, Equatable {
    public var namespaces: [Namespace]
    public var pods: [Pod]
    public var labHosts: [LabHost]
    /// The cluster's nodes (`v1 Node`): Hubble's peers. Empty: a single node, this one.
    public var nodes: [ClusterNode]

    public init(namespaces: [Namespace] = [], pods: [Pod] = [], labHosts: [LabHost] = [], nodes: [ClusterNode] = []) {
        self.namespaces = namespaces
        self.pods = pods
        self.labHosts = labHosts
        self.nodes = nodes
    }

    public func namespace(named name: String) -> Namespace? {
        namespaces.first { $0.name == name }
    }

    /// The pod that owns `ip`, if any.
    public func pod(withIP ip: String) -> Pod? {
        pods.first { $0.ips.contains(ip) }
    }

    public func labHost(withIP ip: String) -> LabHost? {
        labHosts.first { $0.ips.contains(ip) }
    }
}

public struct Namespace: Sendable, Equatable {
    public var name: String
    public var labels: [String: String]
    public var annotations: [String: String]

    public init(name: String, labels: [String: String] = [:], annotations: [String: String] = [:]) {
        self.name = name
        self.labels = labels
        self.annotations = annotations
    }
}

public struct Pod: Sendable, Equatable {
    public var name: String
    public var namespace: String
    public var labels: [String: String]
    public var annotations: [String: String]
    /// `spec.containers[]`: in the lab, `command + args` of each run inside the pod's netns.
    public var containers: [Container]
    /// `status.podIPs` (the first is `status.podIP`); empty until the lab or the cluster assigns them.
    public var ips: [String]
    /// `status.loupe.hostInterface`: the node-side veth the lab made for this pod. Informational:
    /// the agent finds each pod's interface over rtnetlink from its address, on any CNI.
    public var hostInterface: String?
    /// `spec.nodeName`: the node the pod runs on (nil in a node's own inventory file: all local).
    public var nodeName: String?
    /// `spec.hostNetwork`: the pod shares the node's netns; it has no veth to attach to.
    public var hostNetwork: Bool

    public init(name: String, namespace: String = "default", labels: [String: String] = [:],
                annotations: [String: String] = [:], containers: [Container] = [], ips: [String] = [],
                hostInterface: String? = nil, nodeName: String? = nil, hostNetwork: Bool = false) {
        self.name = name
        self.namespace = namespace
        self.labels = labels
        self.annotations = annotations
        self.containers = containers
        self.ips = ips
        self.hostInterface = hostInterface
        self.nodeName = nodeName
        self.hostNetwork = hostNetwork
    }

    /// Runs on `node` (a pod without `spec.nodeName` is taken to be local).
    public func runs(on node: String) -> Bool { nodeName == nil || nodeName == node }

    public var qualifiedName: String { "\(namespace)/\(name)" }
}

public struct Container: Sendable, Equatable {
    public var name: String
    public var command: [String]
    public var args: [String]

    public init(name: String, command: [String] = [], args: [String] = []) {
        self.name = name
        self.command = command
        self.args = args
    }

    /// The argv the lab runs: command followed by args.
    public var argv: [String] { command + args }
}

/// `loupe.io/v1alpha1 LabHost`: a host in the lab's outside world (a server outside the cluster).
public struct LabHost: Sendable, Equatable {
    public var name: String
    public var command: [String]
    public var dnsNames: [String]
    public var ips: [String]

    public init(name: String, command: [String] = [], dnsNames: [String] = [], ips: [String] = []) {
        self.name = name
        self.command = command
        self.dnsNames = dnsNames
        self.ips = ips
    }
}

/// A cluster node: its name and InternalIP addresses (`status.addresses`), where its agent's
/// Hubble API is dialled.
public struct ClusterNode: Sendable, Equatable {
    public var name: String
    public var addresses: [String]

    public init(name: String, addresses: [String] = []) {
        self.name = name
        self.addresses = addresses
    }

    /// The address other nodes reach it at: its first IPv4 InternalIP, else its first.
    public var preferredAddress: String? { addresses.first { !$0.contains(":") } ?? addresses.first }
}
