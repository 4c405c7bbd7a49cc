import Foundation
import Logging
import LoupePolicy
import ServiceLifecycle
import Synchronization

/// What `--kubernetes` needs: where the API is, and the informers' timing.
public struct KubernetesConfiguration: Sendable {
    public var config: KubeConfig
    public var timing = InformerTiming()

    public init(config: KubeConfig) { self.config = config }
}

/// Service: the Kubernetes API as the agent's source of namespaces, pods, nodes and
/// CiliumNetworkPolicies. One informer per resource, each keeping its objects as the model's
/// values (decoded once per event); they make the same `Inventory` and policy list the
/// inventory file and the policy directory give, published to the `ClusterView` (coalesced: at
/// most one rebuild per 20 ms). Nothing is published until
/// namespaces and pods have been listed once; during an API outage the last state stays.
/// A CiliumNetworkPolicy the parser rejects is reported with its namespace/name and field;
/// the others apply.
public final class KubernetesSource: Service, Sendable {
    struct Objects: Sendable {
        var dirty = false
        var rejected: [String] = []
    }

    public struct PolicyRejection: Error, Sendable {
        public var errors: [PolicyError]
    }

    private let configuration: KubernetesConfiguration
    private let view: ClusterView
    private let logger: Logger
    private let client: KubernetesClient
    private let namespaces: Informer<Namespace>
    private let pods: Informer<Pod?>
    /// Nodes: Hubble's peers (not needed before the first rebuild: until listed, only this node).
    private let nodes: Informer<ClusterNode>
    private let policies: [Informer<Result<[CiliumNetworkPolicy], PolicyRejection>>]
    /// The informers' objects (a class: the informers' callbacks share it before `self` exists).
    final class Shared: Sendable {
        let objects = Mutex(Objects())
    }
    private let shared = Shared()
    private let wake: AsyncStream<Void>
    private let wakeContinuation: AsyncStream<Void>.Continuation

    public init(configuration: KubernetesConfiguration, view: ClusterView, logger: Logger) throws {
        self.configuration = configuration
        self.view = view
        self.logger = logger
        let client = try KubernetesClient(config: configuration.config)
        self.client = client
        let (wake, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        self.wake = wake
        wakeContinuation = continuation
        let shared = self.shared
        let changed: @Sendable () -> Void = {
            shared.objects.withLock { $0.dirty = true }
            continuation.yield()
        }
        let timing = configuration.timing
        namespaces = Informer(resource: .namespaces, client: client, timing: timing, logger: logger,
                              decode: Self.namespace, changed: changed)
        pods = Informer(resource: .pods, client: client, timing: timing, logger: logger, decode: Self.pod, changed: changed)
        nodes = Informer(resource: .nodes, client: client, timing: timing, logger: logger, decode: Self.node, changed: changed)
        policies = [KubernetesResource.ciliumNetworkPolicies, .ciliumClusterwideNetworkPolicies].map { resource in
            Informer(resource: resource, client: client, timing: timing, logger: logger,
                     decode: { Self.policy($0, resource: resource) }, changed: changed)
        }
    }

    /// Every informer's run loop and status, whatever its value type.
    private var runners: [Runner] {
        [Runner(namespaces), Runner(pods), Runner(nodes)] + policies.map(Runner.init)
    }

    struct Runner: Sendable {
        let name: String
        let run: @Sendable () async -> Void
        let status: @Sendable () -> InformerStatus

        init<V>(_ informer: Informer<V>) {
            name = informer.resource.name
            run = { await informer.run() }
            status = { informer.status }
        }
    }

    public func run() async throws {
        logger.info("following the Kubernetes API at \(configuration.config.server) (\(configuration.config.origin))")
        try? await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                for runner in self.runners { group.addTask { await runner.run() } }
                group.addTask { await self.publishLoop() }
                await group.waitForAll()
            }
        }
        wakeContinuation.finish()
        await client.shutdown()
    }

    /// Rebuilds after changes, at most once per 20 ms — or per twice the last rebuild's time,
    /// so a burst of events on a large cluster costs a bounded share of a core.
    private func publishLoop() async {
        let clock = ContinuousClock()
        for await _ in wake {
            if Task.isCancelled { return }
            let took = clock.measure { publish() }
            try? await Task.sleep(for: max(.milliseconds(20), took * 2))
        }
    }

    /// Rebuilds the inventory and policies when every required resource has been listed.
    func publish() {
        guard shared.objects.withLock({ o in defer { o.dirty = false }; return o.dirty }),
              let namespaceValues = namespaces.objects(), let podValues = pods.objects() else { return }
        var inventory = Inventory()
        inventory.namespaces = namespaceValues.values.sorted { $0.name < $1.name }
        inventory.pods = podValues.values.compactMap { $0 }.sorted { ($0.namespace, $0.name) < ($1.namespace, $1.name) }
        inventory.nodes = (nodes.objects() ?? [:]).values.sorted { $0.name < $1.name }
        var accepted: [CiliumNetworkPolicy] = []
        var rejected: [String] = []
        for informer in policies {
            for (_, result) in (informer.objects() ?? [:]).sorted(by: { $0.key < $1.key }) {
                switch result {
                case .success(let p): accepted += p
                case .failure(let r): rejected += r.errors.map(\.description)
                }
            }
        }
        let newlyRejected = shared.objects.withLock { o in
            defer { o.rejected = rejected }
            return rejected.filter { !o.rejected.contains($0) }
        }
        for r in newlyRejected { logger.error("policy rejected (the others apply): \(r)") }
        view.replace(inventory: inventory, policies: accepted)
    }

    /// Each resource's informer, for `loupe status` and the metrics.
    public func status() -> [String: InformerStatus] {
        Dictionary(uniqueKeysWithValues: runners.map { ($0.name, $0.status()) })
    }

    /// Policies the parser refused, each with its object and field.
    public func rejectedPolicies() -> [String] { shared.objects.withLock { $0.rejected } }

    // MARK: objects → the model

    static func strings(_ any: Any?) -> [String: String] {
        var out: [String: String] = [:]
        for (k, v) in any as? [String: Any] ?? [:] { if let s = v as? String { out[k] = s } }
        return out
    }

    static func namespace(_ o: KubeObject) -> Namespace {
        Namespace(name: o.name, labels: strings(o.metadata["labels"]), annotations: strings(o.metadata["annotations"]))
    }

    /// A pod as the model knows it; nil for pods that have finished (their address may already
    /// belong to another pod). Pods without an address yet are kept (flows need their labels
    /// as soon as they have one; the datapath skips them until then).
    static func pod(_ o: KubeObject) -> Pod? {
        let spec = o.json["spec"] as? [String: Any] ?? [:]
        let status = o.json["status"] as? [String: Any] ?? [:]
        if let phase = status["phase"] as? String, phase == "Succeeded" || phase == "Failed" { return nil }
        var ips = (status["podIPs"] as? [Any] ?? []).compactMap { ($0 as? [String: Any])?["ip"] as? String }
        if ips.isEmpty, let ip = status["podIP"] as? String, !ip.isEmpty { ips = [ip] }
        return Pod(name: o.name, namespace: o.namespace ?? "default", labels: strings(o.metadata["labels"]),
                   annotations: strings(o.metadata["annotations"]), ips: ips,
                   nodeName: spec["nodeName"] as? String ?? "", hostNetwork: spec["hostNetwork"] as? Bool ?? false)
    }

    /// A node: its name and InternalIP addresses (where its agent's Hubble API listens).
    static func node(_ o: KubeObject) -> ClusterNode {
        let status = o.json["status"] as? [String: Any] ?? [:]
        let addresses = (status["addresses"] as? [Any] ?? []).compactMap { entry -> String? in
            guard let e = entry as? [String: Any], e["type"] as? String == "InternalIP" else { return nil }
            return e["address"] as? String
        }
        return ClusterNode(name: o.name, addresses: addresses)
    }

    /// The policy as the strict parser reads a file: the API's bookkeeping (uid,
    /// resourceVersion, managedFields, status, …) is not the author's and is left out.
    static func policy(_ o: KubeObject, resource: KubernetesResource) -> Result<[CiliumNetworkPolicy], PolicyRejection> {
        let kind = resource == .ciliumClusterwideNetworkPolicies ? "CiliumClusterwideNetworkPolicy" : "CiliumNetworkPolicy"
        var metadata: [String: Any] = ["name": o.name]
        if let ns = o.namespace { metadata["namespace"] = ns }
        if let labels = o.metadata["labels"] { metadata["labels"] = labels }
        var doc: [String: Any] = ["apiVersion": "cilium.io/v2", "kind": kind, "metadata": metadata]
        for key in ["spec", "specs"] { if let v = o.json[key] { doc[key] = v } }
        let origin = "\(kind) \(o.key)"
        guard let data = try? JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys]),
              let text = String(data: data, encoding: .utf8) else {
            return .failure(PolicyRejection(errors: [PolicyError(file: origin, line: 0, field: "(object)", message: "not serializable")]))
        }
        let parsed = PolicyParser.parse(text, file: origin)
        return parsed.errors.isEmpty ? .success(parsed.policies) : .failure(PolicyRejection(errors: parsed.errors))
    }
}
