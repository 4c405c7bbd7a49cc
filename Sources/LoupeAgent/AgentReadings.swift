import LoupeBPF

/// What `loupe status` and `/metrics` read from the long-lived parts at the moment they are
/// asked: the tc program's counters, each local pod's interface, the Kubernetes informers.
public struct AgentReadings: Sendable {
    public var datapathCounters: @Sendable () -> [DatapathCounter: UInt64] = { [:] }
    public var endpoints: @Sendable () -> [DatapathService.EndpointReport] = { [] }
    /// Informer status by resource; empty without `--kubernetes`.
    public var kubernetes: @Sendable () -> [String: InformerStatus] = { [:] }
    public var rejectedPolicies: @Sendable () -> [String] = { [] }
    /// Where pods come from: `inventory PATH` or `kubernetes SERVER`.
    public var source = ""

    public init() {}
}
