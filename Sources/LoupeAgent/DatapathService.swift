import Foundation
import Logging
import LoupeBPF
import LoupePolicy
import LoupeProxy
import ServiceLifecycle

/// Service: the tc datapath and the control loop that programs it. Loads `loupe_from_pod`,
/// installs the routing rules, and keeps the endpoint and redirect maps, the tc attachments
/// and the proxy's view equal to what the inventory (visibility annotations) and the policy
/// directory (ports with L7 rules, enforced) say — re-read whenever either changes, so an
/// edit applies within a poll interval, no restart. A bad inventory or policy file is logged
/// and the last good one stays in force.
/// `@unchecked Sendable`: `run` (one task) owns the inventory and policy it applies; the loaded
/// `Datapath` (a non-Sendable libbpf handle also read by `loupe status`) is behind `lock`, an
/// NSLock because the handle is used inside it and handed out of it, which `Mutex` refuses.
public final class DatapathService: Service, @unchecked Sendable {
    private let configuration: AgentConfiguration
    private let environment: ProxyEnvironment
    private let logger: Logger
    private let lock = NSLock()
    private var datapath: Datapath?
    private var lastProblems: [String] = []
    private var inventory = Inventory()
    private var policy = PolicyEngine()

    public init(configuration: AgentConfiguration, environment: ProxyEnvironment, logger: Logger) {
        self.configuration = configuration
        self.environment = environment
        self.logger = logger
    }

    public func run() async throws {
        let rules = RoutingRules(logger: logger)
        let dp = try Datapath(objectPath: configuration.bpfObjectPath, pinRoot: configuration.pinRoot)
        lock.withLock { datapath = dp }
        try rules.install()
        try? FileManager.default.createDirectory(atPath: configuration.policyDirectory, withIntermediateDirectories: true)
        logger.info("datapath loaded from \(configuration.bpfObjectPath), maps pinned in \(configuration.pinRoot); policies from \(configuration.policyDirectory)")
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
            while !Task.isCancelled {
                var changed = false
                if let stamp = Self.modificationStamp(self.configuration.inventoryPath), stamp != inventoryStamp ?? (-1, -1) {
                    inventoryStamp = stamp
                    changed = self.loadInventory() || changed
                }
                let signature = policies.signature()
                if signature != policySignature {
                    policySignature = signature
                    changed = self.loadPolicies(policies) || changed
                }
                if changed { self.applyToDatapath() }
                try await Task.sleep(for: .milliseconds(self.configuration.inventoryPollMilliseconds))
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
        policy = PolicyEngine(policies: loaded.policies)
        logger.info("policies applied: \(loaded.policies.map(\.name).joined(separator: ", "))")
        return true
    }

    /// `apply` on the loaded datapath (none once shutdown has begun).
    private func applyToDatapath() {
        guard let dp = lock.withLock({ datapath }) else { return }
        apply(dp)
    }

    private func apply(_ dp: Datapath) {
        let plan = RedirectPlan(inventory: inventory)
        let problems = plan.problems.map(\.description)
        if problems != lastProblems {
            for p in problems { logger.error("\(p) (ignored; the rest applies)") }
            lastProblems = problems
        }
        var endpoints: [UInt32: UInt32] = [:]
        var entries: [RedirectEntry] = []
        var ifindexes: [Int32] = []
        let proxyPort = UInt16(configuration.proxy.port)
        let dnsPort = UInt16(configuration.proxy.dnsPort)
        for podRules in plan.pods {
            let pod = podRules.pod
            guard let ifname = pod.hostInterface else { continue }
            let ifindex = if_nametoindex(ifname)
            guard ifindex != 0 else {
                logger.warning("pod \(pod.qualifiedName): interface \(ifname) not found in this netns")
                continue
            }
            ifindexes.append(Int32(ifindex))
            endpoints[ifindex] = EndpointIdentity(pod: pod).id
            let addresses = pod.ips.compactMap(Self.addressBytes)
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
                for ifindex in ifindexes where !dp.attached.contains(ifindex) { try dp.attach(ifindex: ifindex) }
                for ifindex in dp.attached where !ifindexes.contains(ifindex) { dp.detach(ifindex: ifindex) }
            } catch {
                logger.error("datapath update failed: \(error)")
            }
        }
        environment.update(inventory: inventory, policy: policy)
        logger.info("inventory applied: \(plan.pods.count) pods, \(merged.count) redirect rules (\(merged.filter(\.enforce).count) enforced), \(ifindexes.count) veths, \(policy.policies.count) policies")
    }

    static func modificationStamp(_ path: String) -> (Int, Int)? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return (st.st_mtim.tv_sec, st.st_mtim.tv_nsec ^ Int(st.st_ino))
    }

    static func addressBytes(_ ip: String) -> [UInt8]? {
        if ip.contains(":") {
            var a = in6_addr()
            guard inet_pton(AF_INET6, ip, &a) == 1 else { return nil }
            return withUnsafeBytes(of: a) { Array($0) }
        }
        var a = in_addr()
        guard inet_pton(AF_INET, ip, &a) == 1 else { return nil }
        return withUnsafeBytes(of: a) { Array($0) }
    }
}
