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

/// Service: the Kubernetes API as the agent's source of namespaces, pods and
/// CiliumNetworkPolicies. One informer per resource; their objects are turned into the same
/// `Inventory` and policy list the inventory file and the policy directory give, and published
/// to the `ClusterView` (coalesced: at most one rebuild per 20 ms). Nothing is published until
/// namespaces and pods have been listed once; during an API outage the last state stays.
/// A CiliumNetworkPolicy the parser rejects is reported with its namespace/name and field;
/// the others apply.
public final class KubernetesSource: Service, Sendable {
    /// What the last rebuild made of each object, kept while its resourceVersion is the same.
    struct Objects: Sendable {
        var dirty = false
        var pods: [String: (version: String, pod: Pod?)] = [:]
        var parsed: [String: (version: String, result: Result<[CiliumNetworkPolicy], PolicyRejection>)] = [:]
        var rejected: [String] = []
    }

    public struct PolicyRejection: Error, Sendable {
        public var errors: [PolicyError]
    }

    public static let resources: [KubernetesResource] = [.namespaces, .pods, .ciliumNetworkPolicies, .ciliumClusterwideNetworkPolicies]

    private let configuration: KubernetesConfiguration
    private let view: ClusterView
    private let logger: Logger
    private let client: KubernetesClient
    private let informers: [Informer]
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
        informers = Self.resources.map { resource in
            Informer(resource: resource, client: client, timing: configuration.timing, logger: logger) {
                shared.objects.withLock { $0.dirty = true }
                continuation.yield()
            }
        }
    }

    public func run() async throws {
        logger.info("following the Kubernetes API at \(configuration.config.server) (\(configuration.config.origin))")
        try? await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                for informer in self.informers { group.addTask { await informer.run() } }
                group.addTask { await self.publishLoop() }
                await group.waitForAll()
            }
        }
        wakeContinuation.finish()
        await client.shutdown()
    }

    private func publishLoop() async {
        for await _ in wake {
            if Task.isCancelled { return }
            publish()
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Rebuilds the inventory and policies when every required resource has been listed.
    func publish() {
        var byResource: [KubernetesResource: [String: KubeObject]] = [:]
        for informer in informers { byResource[informer.resource] = informer.objects() }
        let built: (Inventory, [CiliumNetworkPolicy], [String])? = shared.objects.withLock { o in
            guard o.dirty, let namespaces = byResource[.namespaces], let pods = byResource[.pods] else { return nil }
            o.dirty = false
            var inventory = Inventory()
            inventory.namespaces = namespaces.values.map(Self.namespace).sorted { $0.name < $1.name }
            var podCache: [String: (version: String, pod: Pod?)] = [:]
            podCache.reserveCapacity(pods.count)
            for (key, object) in pods {
                let version = object.resourceVersion
                if let cached = o.pods[key], cached.version == version, !version.isEmpty {
                    podCache[key] = cached
                } else {
                    podCache[key] = (version, Self.pod(object))
                }
            }
            o.pods = podCache
            inventory.pods = podCache.values.compactMap(\.pod).sorted { $0.qualifiedName < $1.qualifiedName }
            var policies: [CiliumNetworkPolicy] = []
            var rejected: [String] = []
            var live = Set<String>()
            for resource in [KubernetesResource.ciliumNetworkPolicies, .ciliumClusterwideNetworkPolicies] {
                for (key, object) in (byResource[resource] ?? [:]).sorted(by: { $0.key < $1.key }) {
                    let cacheKey = resource.name + "/" + key
                    live.insert(cacheKey)
                    let result: Result<[CiliumNetworkPolicy], PolicyRejection>
                    if let cached = o.parsed[cacheKey], cached.version == object.resourceVersion {
                        result = cached.result
                    } else {
                        result = Self.policy(object, resource: resource)
                        o.parsed[cacheKey] = (object.resourceVersion, result)
                    }
                    switch result {
                    case .success(let p): policies += p
                    case .failure(let r): rejected += r.errors.map(\.description)
                    }
                }
            }
            o.parsed = o.parsed.filter { live.contains($0.key) }
            let newlyRejected = rejected.filter { !o.rejected.contains($0) }
            o.rejected = rejected
            return (inventory, policies, newlyRejected)
        }
        byResource = [:]
        guard let (inventory, policies, newlyRejected) = built else { return }
        for r in newlyRejected { logger.error("policy rejected (the others apply): \(r)") }
        view.replace(inventory: inventory, policies: policies)
    }

    /// Each resource's informer, for `loupe status` and the metrics.
    public func status() -> [String: InformerStatus] {
        Dictionary(uniqueKeysWithValues: informers.map { ($0.resource.name, $0.status) })
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
