import Foundation
import Logging
import LoupeBPF
import LoupeNetlink
import LoupePolicy
import LoupeProcess
import LoupeProxy
import ServiceLifecycle

/// Service: the tc datapath and the control loop that programs it. Loads `loupe_from_pod`,
/// installs the routing rules, and keeps the endpoint and redirect maps, the tc attachments
/// and the proxy's view equal to what the cluster (visibility annotations; the inventory file,
/// or the Kubernetes informers' `ClusterView`) and the policies (the policy directory plus the
/// API's CiliumNetworkPolicies) say. Each local pod's interface is found over rtnetlink from
/// its address (`PodInterfaceResolver`: routed or bridged CNIs) and re-resolved whenever links,
/// neighbours or routes change. A bad inventory or policy file is logged and the last good one
/// stays in force.
/// `@unchecked Sendable`: `run` (one task) owns the inventory and policy it applies; the loaded
/// `Datapath` (a non-Sendable libbpf handle also read by `loupe status`) and the interface
/// report are behind `lock`, an NSLock because the handle is used inside it and handed out of
/// it, which `Mutex` refuses.
public final class DatapathService: Service, @unchecked Sendable {
    /// One local pod's interface as last resolved, for `loupe status`.
    public struct EndpointReport: Sendable {
        public var pod: String
        public var interface: String?
        public var shape: String
        public var problem: String?
    }

    private let configuration: AgentConfiguration
    private let environment: ProxyEnvironment
    private let cluster: ClusterView?
    private let logger: Logger
    private let lock = NSLock()
    private var datapath: Datapath?
    private var lastProblems: [String] = []
    private var inventory = Inventory()
    private var filePolicies: [CiliumNetworkPolicy] = []
    private var clusterPolicies: [CiliumNetworkPolicy] = []
    private var policy = PolicyEngine()
    private var lastPolicyFingerprint: [String]?
    private var attachments: [String: PodAttachment] = [:]
    /// The node's uplinks: remote clients (Ingress rules) and replies from remote destinations.
    private var uplinks: [PodAttachment] = []
    private var missingUplinks: [String] = []
    private var unresolved: [String: PodInterfaceProblem] = [:]
    private var lastProbe: [String: ContinuousClock.Instant] = [:]
    private var report: [EndpointReport] = []

    /// `cluster`: follow it instead of the inventory file (`--kubernetes`).
    public init(configuration: AgentConfiguration, environment: ProxyEnvironment, cluster: ClusterView? = nil, logger: Logger) {
        self.configuration = configuration
        self.environment = environment
        self.cluster = cluster
        self.logger = logger
    }

    public func run() async throws {
        let rules = RoutingRules(logger: logger)
        let dp = try Datapath(objectPath: configuration.bpfObjectPath, pinRoot: configuration.pinRoot)
        lock.withLock { datapath = dp }
        try rules.install()
        let monitor: NetlinkMonitor?
        do { monitor = try NetlinkMonitor() } catch {
            logger.warning("\(error); interfaces are re-resolved every second instead")
            monitor = nil
        }
        try? FileManager.default.createDirectory(atPath: configuration.policyDirectory, withIntermediateDirectories: true)
        let source = cluster == nil ? "inventory \(configuration.inventoryPath)" : "the Kubernetes API"
        logger.info("datapath loaded from \(configuration.bpfObjectPath), maps pinned in \(configuration.pinRoot); pods from \(source); policies from \(configuration.policyDirectory)")
        defer {
            lock.withLock {
                dp.close(unpin: configuration.unpinOnShutdown)
                datapath = nil
            }
            rules.remove()
            logger.info("datapath detached, routing rules removed")
        }
        let policies = PolicyDirectory(path: configuration.policyDirectory)
        try? await cancelWhenGracefulShutdown {
            var inventoryStamp: (Int, Int)? = nil
            var policySignature: [String]? = nil
            var clusterVersion = -1
            var tick = 0
            // A short tick for what is cheap to check (the cluster view's version, netlink
            // changes); files are stat'ed every `inventoryPollMilliseconds`.
            let tickMilliseconds = 25
            let fileEvery = max(1, self.configuration.inventoryPollMilliseconds / tickMilliseconds)
            while !Task.isCancelled {
                var changed = false
                let fileTick = tick % fileEvery == 0
                if let cluster = self.cluster {
                    let view = cluster.read()
                    if view.ready && view.version != clusterVersion {
                        clusterVersion = view.version
                        self.inventory = view.inventory
                        self.clusterPolicies = view.policies
                        self.rebuildPolicy()
                        changed = true
                    }
                } else if fileTick, let stamp = Self.modificationStamp(self.configuration.inventoryPath), stamp != inventoryStamp ?? (-1, -1) {
                    inventoryStamp = stamp
                    changed = self.loadInventory() || changed
                }
                if fileTick {
                    let signature = policies.signature()
                    if signature != policySignature {
                        policySignature = signature
                        changed = self.loadPolicies(policies) || changed
                    }
                }
                let ready = self.cluster == nil || clusterVersion >= 0
                let netChanged = monitor?.changed() ?? (tick % 40 == 0)
                let retry = !self.unresolved.isEmpty && tick % 20 == 0
                var took = Duration.zero
                if ready && (changed || netChanged || retry) {
                    took = ContinuousClock().measure {
                        let moved = self.resolveInterfaces()
                        if changed || moved { self.applyToDatapath() }
                    }
                }
                tick += 1
                // A large cluster's apply takes a while: wait as long again before the next.
                try await Task.sleep(for: max(.milliseconds(tickMilliseconds), took))
            }
        }
    }

    /// Outcome counters of the tc program, for `loupe status`.
    public func counters() -> [DatapathCounter: UInt64] {
        lock.withLock { datapath?.readCounters() ?? [:] }
    }

    private func loadInventory() -> Bool {
        do {
            let text = try String(contentsOfFile: configuration.inventoryPath, encoding: .utf8)
            inventory = try InventoryLoader.parse(text, file: configuration.inventoryPath)
            return true
        } catch {
            logger.error("inventory not applied, keeping the previous one: \(error)")
            return false
        }
    }

    private func loadPolicies(_ dir: PolicyDirectory) -> Bool {
        let loaded = dir.load()
        if !loaded.errors.isEmpty {
            for e in loaded.errors { logger.error("policy rejected, the previous policy set stays in force: \(e)") }
            return false
        }
        filePolicies = loaded.policies
        rebuildPolicy()
        return true
    }

    /// The policy directory's and the API's policies add up.
    private func rebuildPolicy() {
        let all = filePolicies + clusterPolicies
        let names = all.map { p in p.namespace.map { "\($0)/\(p.name)" } ?? p.name }.joined(separator: ", ")
        // Logged when the set changes (a Kubernetes pod event rebuilds it unchanged).
        let fingerprint = all.map { "\($0.namespace ?? "")/\($0.name) \($0.rules.count) \($0.file):\($0.line)" }
        if fingerprint != lastPolicyFingerprint {
            lastPolicyFingerprint = fingerprint
            logger.info("policies applied: \(names)")
        }
        policy = PolicyEngine(policies: all)
    }

    /// The pods this node attaches to: local, not on the host network, with an address.
    private var localPods: [Pod] {
        inventory.pods.filter { $0.runs(on: configuration.proxy.nodeName) && !$0.hostNetwork && !$0.ips.isEmpty }
    }

    /// Finds every local pod's interface from a fresh netlink snapshot; true when an attachment
    /// changed. A bridged pod the node has no neighbour entry for yet gets an ARP/ND probe (at
    /// most one a second) and is retried.
    private func resolveInterfaces() -> Bool {
        let net: NetworkSnapshot
        do { net = try Netlink.snapshot() } catch {
            logger.error("interfaces not resolved: \(error)")
            return false
        }
        var found: [String: PodAttachment] = [:]
        var problems: [String: PodInterfaceProblem] = [:]
        var lines: [EndpointReport] = []
        let now = ContinuousClock.now
        for pod in localPods {
            var last: PodInterfaceProblem?
            for ip in pod.ips {
                switch PodInterfaceResolver.resolve(ip, in: net) {
                case .success(let a):
                    found[pod.qualifiedName] = a
                case .failure(let p):
                    last = p
                    if case .neighbourUnknown(_, let bridge, _) = p, let bytes = IPAddressBytes.parse(ip) {
                        let key = "\(ip)%\(bridge)"
                        if lastProbe[key].map({ now - $0 > .seconds(1) }) ?? true {
                            lastProbe[key] = now
                            Netlink.probeNeighbour(bytes, ifindex: bridge)
                        }
                    }
                }
                if found[pod.qualifiedName] != nil { break }
            }
            if let a = found[pod.qualifiedName] {
                let shape: String
                if case .bridged(_, _, let bridge, _, _) = a { shape = "bridged (\(bridge))" } else { shape = "routed" }
                lines.append(EndpointReport(pod: pod.qualifiedName, interface: a.name, shape: shape))
            } else if let last {
                problems[pod.qualifiedName] = last
                lines.append(EndpointReport(pod: pod.qualifiedName, shape: "unresolved", problem: last.description))
            }
        }
        for pod in inventory.pods where pod.runs(on: configuration.proxy.nodeName) && pod.hostNetwork {
            lines.append(EndpointReport(pod: pod.qualifiedName, shape: "hostNetwork", problem: "hostNetwork pod: skipped (no veth)"))
        }
        // Uplinks: remote clients meet the local pods' Ingress rules there, and (upstream source
        // pod) remote destinations' replies are steered back there.
        let (uplinksFound, missing) = UplinkResolver.resolve(in: net, pods: Array(found.values), names: configuration.uplinks)
        if missing != missingUplinks {
            for name in missing { logger.error("--uplink \(name): no such interface in this netns (remote clients and replies from remote destinations are not seen there)") }
            missingUplinks = missing
        }
        for u in uplinksFound { lines.append(EndpointReport(pod: "(uplink)", interface: u.name, shape: "uplink")) }
        for (name, p) in problems where unresolved[name] != p { logger.warning("pod \(name): \(p)") }
        let moved = found != attachments || uplinksFound != uplinks
        if uplinksFound != uplinks { logger.info("uplinks: \(uplinksFound.isEmpty ? "none" : uplinksFound.map(\.name).joined(separator: ", "))") }
        attachments = found
        uplinks = uplinksFound
        unresolved = problems
        lock.withLock { report = lines }
        return moved
    }

    /// Local pods and their interfaces (or why none), for `loupe status`.
    public func endpointReport() -> [EndpointReport] {
        lock.withLock { report }
    }

    /// `apply` on the loaded datapath (none once shutdown has begun).
    private func applyToDatapath() {
        guard let dp = lock.withLock({ datapath }) else { return }
        apply(dp)
    }

    private func apply(_ dp: Datapath) {
        var local = inventory
        local.pods = localPods
        let plan = RedirectPlan(inventory: local)
        let problems = plan.problems.map(\.description)
        if problems != lastProblems {
            for p in problems { logger.error("\(p) (ignored; the rest applies)") }
            lastProblems = problems
        }
        var endpoints: [UInt32: EndpointEntry] = [:]
        var entries: [RedirectEntry] = []
        var ifindexes: [Int32] = []
        var bridges: Set<Int32> = []
        let proxyPort = UInt16(configuration.proxy.port)
        let dnsPort = UInt16(configuration.proxy.dnsPort)
        for podRules in plan.pods {
            let pod = podRules.pod
            guard let attachment = attachments[pod.qualifiedName] else { continue }
            let ifindex = UInt32(attachment.ifindex)
            ifindexes.append(attachment.ifindex)
            var bridge: (Int32, [UInt8])?
            if case .bridged(_, _, _, let index, let mac) = attachment {
                bridge = (index, mac)
                bridges.insert(index)
            }
            endpoints[ifindex] = EndpointEntry(id: EndpointIdentity(pod: pod).id, bridge: bridge, steerReplies: configuration.steersReplies)
            let addresses = pod.ips.compactMap(IPAddressBytes.parse)
            // Visibility: redirected, fail open. TCP to the proxy listener; UDP DNS to the DNS socket.
            for rule in podRules.rules {
                var targets: [(UInt8, UInt16)] = []
                if rule.carriesTCP { targets.append((UInt8(IPPROTO_TCP), proxyPort)) }
                if rule.carriesUDP && rule.l7 == .dns { targets.append((UInt8(IPPROTO_UDP), dnsPort)) }
                for (l4, target) in targets {
                    switch rule.direction {
                    case .egress:
                        entries.append(RedirectEntry(match: .egress(ifindex: ifindex), port: rule.port, l4Protocol: l4, proxyPort: target))
                    case .ingress:
                        for a in addresses { entries.append(RedirectEntry(match: .ingress(address: a), port: rule.port, l4Protocol: l4, proxyPort: target)) }
                    }
                }
            }
            // Ports with L7 rules: redirected even without the annotation, fail closed.
            let l7 = policy.l7Ports(of: pod)
            func enforced(_ p: PolicyEngine.L7Port) -> (UInt8, UInt16) {
                p.tcp ? (UInt8(IPPROTO_TCP), proxyPort) : (UInt8(IPPROTO_UDP), dnsPort)
            }
            for p in l7.egress {
                let (l4, target) = enforced(p)
                entries.append(RedirectEntry(match: .egress(ifindex: ifindex), port: p.port, l4Protocol: l4, proxyPort: target, enforce: true))
            }
            for p in l7.ingress {
                let (l4, target) = enforced(p)
                for a in addresses { entries.append(RedirectEntry(match: .ingress(address: a), port: p.port, l4Protocol: l4, proxyPort: target, enforce: true)) }
            }
        }
        for u in uplinks where endpoints[UInt32(u.ifindex)] == nil {
            endpoints[UInt32(u.ifindex)] = EndpointEntry(id: 0, steerReplies: configuration.steersReplies, uplink: true)
            ifindexes.append(u.ifindex)
        }
        // One entry per key; enforcement wins over visibility.
        var merged: [RedirectEntry] = []
        for e in entries {
            if let i = merged.firstIndex(where: { $0.match == e.match && $0.port == e.port && $0.l4Protocol == e.l4Protocol }) {
                merged[i].enforce = merged[i].enforce || e.enforce
            } else {
                merged.append(e)
            }
        }
        lock.withLock {
            do {
                try dp.setEndpoints(endpoints)
                try dp.setRedirects(merged)
                // A bridge's program also judges the bridge as an endpoint (a bridge named with
                // --uplink). It is on the bridge before any of its ports hands a packet over, and
                // leaves after them: a handed-over packet nobody assigns would meet no socket.
                let ports = ifindexes.filter { !bridges.contains($0) }
                for ifindex in dp.attached where !ports.contains(ifindex) { dp.detach(ifindex: ifindex) }
                for ifindex in bridges where !dp.attachedBridges.contains(ifindex) { try dp.attach(ifindex: ifindex, bridge: true) }
                for ifindex in ports where !dp.attached.contains(ifindex) { try dp.attach(ifindex: ifindex) }
                for ifindex in dp.attachedBridges where !bridges.contains(ifindex) { dp.detach(ifindex: ifindex) }
            } catch {
                logger.error("datapath update failed: \(error)")
            }
        }
        environment.update(inventory: inventory, policy: policy)
        logger.info("inventory applied: \(plan.pods.count) pods (\(attachments.count) attached, \(unresolved.count) unresolved), \(merged.count) redirect rules (\(merged.filter(\.enforce).count) enforced), \(ifindexes.count) interfaces (\(uplinks.count) uplinks), \(policy.policies.count) policies")
        // The maps' updates and, the first time, the programs' load are done with their
        // buffers: the idle agent keeps none of them.
        Allocator.releaseFreeMemory()
    }

    static func modificationStamp(_ path: String) -> (Int, Int)? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return (st.st_mtim.tv_sec, st.st_mtim.tv_nsec ^ Int(st.st_ino))
    }
}
