import LoupeBPF
import LoupeFlow
import LoupePolicy
import Synchronization

/// What the proxy consults per connection and request: the current inventory (identities,
/// the rule that selected the connection) and policy, and where flows go. Swapped atomically
/// when the inventory or the policy set changes; `generation` tells cached decisions apart.
public final class ProxyEnvironment: Sendable {
    public struct Snapshot: Sendable {
        public var inventory: Inventory
        public var plan: RedirectPlan
        public var policy: PolicyEngine
        public var generation: UInt64
        /// Flow endpoints by pod address, computed once per inventory (not per connection or query).
        public var endpoints: [String: Endpoint]

        init(inventory: Inventory, policy: PolicyEngine, generation: UInt64) {
            self.inventory = inventory
            self.plan = RedirectPlan(inventory: inventory)
            self.policy = policy
            self.generation = generation
            var endpoints: [String: Endpoint] = [:]
            for pod in inventory.pods {
                let e = Endpoint(EndpointIdentity(pod: pod))
                for ip in pod.ips { endpoints[ip] = e }
            }
            self.endpoints = endpoints
        }

        /// The pod with address `ip`, for the policy decisions made per connection and per DNS
        /// query (the plan's index: Inventory.pod(withIP:) scans).
        public func pod(withIP ip: String) -> Pod? { plan.pod(withIP: ip) }

        /// The endpoint of `ip`: a pod, or the world.
        public func endpoint(ofIP ip: String) -> Endpoint {
            endpoints[ip] ?? Endpoint(EndpointIdentity.world)
        }
    }

    private let current: Mutex<Snapshot>
    public let flows: FlowStore
    public let configuration: ProxyConfiguration
    /// Names pods resolved through the DNS proxy, for `destination_names`.
    public let fqdn = FQDNCache()
    public let counters = ProxyCounters()
    /// Agent start, policy and endpoint changes, for Hubble's GetAgentEvents.
    public let agentEvents = AgentEventLog()
    /// HTTPS interception's node CA and TLS contexts.
    let tls: TLSIntercept.Contexts
    /// `--upstream-source pod`: the address each upstream connection binds.
    let upstreamSource = UpstreamSourceAddress()
    /// HTTPS interception's shared HTTP/2 connections to destinations, per event loop.
    let http2Upstreams = HTTP2Intercept.Pools()

    public init(inventory: Inventory, policy: PolicyEngine = PolicyEngine(), flows: FlowStore, configuration: ProxyConfiguration) {
        self.current = Mutex(Snapshot(inventory: inventory, policy: policy, generation: 0))
        self.flows = flows
        self.configuration = configuration
        self.tls = TLSIntercept.Contexts(configuration: configuration)
        agentEvents.append(AgentEventRecord(kind: .agentStarted))
        // The pods and policies the agent starts with are created as far as clients can tell.
        recordAgentEvents(from: Snapshot(inventory: Inventory(), policy: PolicyEngine(), generation: 0), to: snapshot)
    }

    public func update(inventory: Inventory, policy: PolicyEngine) {
        fqdn.retain(clients: Set(inventory.pods.flatMap(\.ips)))
        let previous = current.withLock { $0 }
        let generation = previous.generation + 1
        let next = Snapshot(inventory: inventory, policy: policy, generation: generation)
        current.withLock { $0 = next }
        recordAgentEvents(from: previous, to: next)
    }

    /// Endpoint (this node's pods) and policy changes between two snapshots, as agent events.
    private func recordAgentEvents(from old: Snapshot, to new: Snapshot) {
        let node = configuration.nodeName
        func endpoints(_ s: Snapshot) -> [String: AgentEventRecord.Endpoint] {
            var out: [String: AgentEventRecord.Endpoint] = [:]
            for pod in s.inventory.pods where pod.runs(on: node) {
                let id = EndpointIdentity(pod: pod)
                out[pod.qualifiedName] = .init(id: UInt64(id.id), namespace: pod.namespace, podName: pod.name, labels: id.labels)
            }
            return out
        }
        let before = endpoints(old), after = endpoints(new)
        for name in after.keys.sorted() where before[name] == nil { agentEvents.append(.init(kind: .endpointCreated(after[name]!))) }
        for name in before.keys.sorted() where after[name] == nil { agentEvents.append(.init(kind: .endpointDeleted(before[name]!))) }
        func fingerprint(_ p: PolicyEngine) -> [String] {
            p.policies.map { "\($0.namespace ?? "")/\($0.name) \($0.rules.count) \($0.file):\($0.line)" }
        }
        if fingerprint(old.policy) != fingerprint(new.policy) {
            agentEvents.append(.init(kind: .policyUpdated(
                labels: new.policy.policies.map { p in p.namespace.map { "\($0)/\(p.name)" } ?? p.name },
                revision: new.generation, ruleCount: new.policy.policies.reduce(0) { $0 + $1.rules.count })))
        }
    }

    public var snapshot: Snapshot { current.withLock { $0 } }
    public var generation: UInt64 { current.withLock { $0.generation } }

    /// Every flow goes through here: redacted (Hubble's options), then recorded — on an event
    /// loop, once the loop's current round of I/O is done (`PendingFlows`).
    public func record(_ flow: consuming Flow) {
        configuration.redaction.apply(&flow)
        if let pending = PendingFlows.onThisThread {
            pending.add(flow, to: flows)
        } else {
            flows.append(flow)
        }
    }

    /// Proxy-level counters (connections, upstream errors, parse errors, policy denials) for `loupe status`.
    public func count(_ counter: ProxyCounter, _ n: UInt64 = 1) {
        counters.add(counter, n)
    }

    /// Every counter by name.
    public var counterValues: [String: UInt64] { counters.byName }

    private let spliceMapsStore = Mutex<SpliceMaps?>(nil)
    /// The kernel splice, when loaded (the proxy service attaches it before accepting).
    public var spliceMaps: SpliceMaps? { spliceMapsStore.withLock { $0 } }
    public func attachSplice(_ maps: SpliceMaps?) { spliceMapsStore.withLock { $0 = maps } }

    /// `loupe status`'s splice section: the `splice_*` counters and what the maps hold.
    public var spliceStatus: [String: UInt64] {
        var out: [String: UInt64] = ["available": spliceMaps == nil ? 0 : 1]
        for (k, v) in counterValues where k.hasPrefix("splice_") { out[String(k.dropFirst("splice_".count))] = v }
        for (k, v) in spliceMaps?.status() ?? [:] { out[k] = v }
        return out
    }
}
