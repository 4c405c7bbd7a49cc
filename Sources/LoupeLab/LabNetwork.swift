/// The two shapes CNIs give a node: a veth per pod with a host route to it (Cilium, Calico,
/// ptp), or pod veths as ports of one bridge that holds the node's pod-subnet address (flannel,
/// the `bridge` plugin).
public enum LabCNI: String, Sendable, CaseIterable {
    case routed
    case bridged
}

/// Names and addresses of the lab: one node netns with no uplink (or several, linked), one netns
/// per pod with a veth to its node, and a world netns behind the first node for LabHosts.
public enum LabNetwork {
    public static let nodeNetns = "loupe-node"
    public static let worldNetns = "loupe-world"
    public static let podNetnsPrefix = "loupe-pod-"
    public static let worldVeth = "lxcworld"
    public static let stateDirectory = "/run/loupe/lab"
    /// The lab's node CA (`loupe lab up` makes one; `loupe agent --lab` uses it) and the trust
    /// bundle (system roots + that CA) the lab gives pods that opt into HTTPS interception.
    public static let caDirectory = stateDirectory + "/ca"
    public static let trustBundle = caDirectory + "/trust.pem"
    public static var resolvedInventoryPath: String { stateDirectory + "/inventory.yaml" }
    /// Node address used as the source of the proxy's upstream connections.
    public static let nodeIPv4 = "198.18.0.1"
    public static let nodeIPv6 = "2001:db8:18::1"
    /// The bridge of the bridged shape (`--cni bridged`), as flannel's and the `bridge` plugin's.
    public static let bridge = "cni0"
    /// Gateway the pods route through in the routed shape (a static neighbour; nobody owns it).
    public static let gatewayIPv4 = "169.254.1.1"
    public static let gatewayIPv6 = "fe80::1"

    /// Pod netns names are derived from the pod, short and stable.
    public static func podNetns(namespace: String, name: String) -> String {
        podNetnsPrefix + shortHash("\(namespace)/\(name)")
    }

    /// Node-side veth of a pod (≤ 15 characters, as Cilium's lxc…).
    public static func hostVeth(namespace: String, name: String) -> String {
        "lxc" + shortHash("\(namespace)/\(name)")
    }

    public static func podIPv4(_ n: Int) -> String { "198.18.\(n / 256).\(n % 256)" }
    public static func podIPv6(_ n: Int) -> String { "2001:db8:18::\(String(n, radix: 16))" }

    // A lab of several nodes (`v1 Node` objects in the inventory): node k (inventory order) has
    // the pod subnets 198.18.k.0/24 and 2001:db8:18:k::/64, its own address .1 / ::1 in them,
    // and a veth to node 0 (`nodeLink`), which holds the world. The netns is the node's name.
    public static let nodeNamePrefix = "loupe-node"
    public static func nodeIPv4(node k: Int) -> String { "198.18.\(k).1" }
    public static func nodeIPv6(node k: Int) -> String { k == 0 ? nodeIPv6 : "2001:db8:18:\(String(k, radix: 16))::1" }
    public static func podIPv4(node k: Int, _ n: Int) -> String { "198.18.\(k).\(n)" }
    public static func podIPv6(node k: Int, _ n: Int) -> String {
        k == 0 ? podIPv6(n) : "2001:db8:18:\(String(k, radix: 16))::\(String(n, radix: 16))"
    }
    /// The link between node 0 and node k: `lab-nK` on node 0, `lab-n0` on node k.
    public static func nodeLink(to k: Int) -> String { "lab-n\(k)" }
    /// Where the agent of lab node `name` serves the Hubble API and pins its maps (the first
    /// node keeps the single-node paths).
    public static func hubbleSocket(node name: String) -> String {
        name == nodeNetns ? "/run/loupe/hubble.sock" : "/run/loupe/\(name)/hubble.sock"
    }
    public static func pinRoot(node name: String) -> String {
        name == nodeNetns ? "/sys/fs/bpf/loupe" : "/sys/fs/bpf/\(name)"
    }
    public static func worldIPv4(_ n: Int) -> String { "198.19.\(n / 256).\(n % 256)" }
    public static func worldIPv6(_ n: Int) -> String { "2001:db8:19::\(String(n, radix: 16))" }

    /// Host number of a lab address (inverse of podIPv4/worldIPv4).
    static func hostNumber(_ ipv4: String) -> Int? {
        let p = ipv4.split(separator: ".").compactMap { Int($0) }
        guard p.count == 4 else { return nil }
        return p[2] * 256 + p[3]
    }

    static func shortHash(_ s: String) -> String {
        var h: UInt32 = 2166136261
        for b in s.utf8 { h = (h ^ UInt32(b)) &* 16777619 }
        let hex = String(h, radix: 16)
        return String(repeating: "0", count: 8 - hex.count) + hex
    }
}
