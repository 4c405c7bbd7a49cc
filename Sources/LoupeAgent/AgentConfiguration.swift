import LoupeProxy

/// Everything the agent needs to run, with the defaults of a lab node. Loading (flags) lives
/// in the CLI.
public struct AgentConfiguration: Sendable {
    /// The inventory (Kubernetes YAML) the agent follows; re-read when it changes.
    public var inventoryPath: String = "/run/loupe/lab/inventory.yaml"
    /// Compiled `bpf/tc_from_pod.bpf.c`.
    public var bpfObjectPath: String = "bpf/.output/tc_from_pod.bpf.o"
    public var pinRoot: String = "/sys/fs/bpf/loupe"
    /// Compiled `bpf/splice.bpf.c`: beside the tc program.
    public var spliceObjectPath: String {
        let dir = bpfObjectPath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return (dir.isEmpty ? "" : dir + "/") + "splice.bpf.o"
    }
    /// Hubble's gRPC API (flows, status): the unix socket and the TCP listener.
    public var hubble = HubbleConfiguration()
    /// Every CiliumNetworkPolicy YAML file here is enforced; re-read when the directory changes.
    public var policyDirectory: String = "/etc/loupe/policies"
    /// How often the inventory file and the policy directory are checked for changes.
    public var inventoryPollMilliseconds: Int = 250
    /// Flows kept in memory for `loupe observe --last`.
    public var flowCapacity: Int = 65_536
    /// Install the `fwmark → local table` routing rules (needed for bpf_sk_assign delivery).
    public var installRoutingRules: Bool = true
    /// Remove pins on clean shutdown (a crash leaves them for the next agent to reuse).
    public var unpinOnShutdown: Bool = true
    public var proxy = ProxyConfiguration()
    /// `--uplink`: the node's uplinks by name (where remote replies arrive, for
    /// `--upstream-source pod`); empty: found from the routes (`UplinkResolver`).
    public var uplinks: [String] = []
    /// Replies to the proxy's pod-sourced upstream sockets are steered back by the datapath.
    public var steersReplies: Bool { proxy.upstreamSource == .pod && !datapathOnly }
    /// Steer selected traffic to `proxy.port` but run no proxy there: another transparent proxy
    /// listens on that port (the benchmarks put Envoy behind the same redirect this way).
    public var datapathOnly: Bool = false
    /// Prometheus `/metrics` (host, port) in the agent's netns; nil: no metrics endpoint.
    public var metricsAddress: (host: String, port: Int)? = ("127.0.0.1", 9965)
    /// Context labels of the Hubble metrics (Hubble's `labelsContext`).
    public var metricsContext = MetricsContext.default
    /// Flow export to a JSON-lines file; nil: none.
    public var flowExport: FlowExportConfiguration?
    /// Follow the Kubernetes API (namespaces, pods, CiliumNetworkPolicies) instead of the
    /// inventory file; nil: the inventory file.
    public var kubernetes: KubernetesConfiguration?
    /// Benchmark switch: record this many synthetic flows once a follower is attached; nil: none.
    public var syntheticFlows: SyntheticFlowConfiguration?

    public init() {}
}
