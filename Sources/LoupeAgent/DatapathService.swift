import Foundation
import Logging
import LoupeBPF
import LoupePolicy
import LoupeProxy
import ServiceLifecycle

/// Service: the tc datapath. Loads `loupe_from_pod`, installs the routing rules, and keeps the
/// endpoint and redirect maps and the tc attachments equal to what the inventory says — re-read
/// whenever the file changes, so an edited annotation applies within a poll interval, no restart.
public final class DatapathService: Service, @unchecked Sendable {
    private let configuration: AgentConfiguration
    private let environment: ProxyEnvironment
    private let logger: Logger
    private let lock = NSLock()
    private var datapath: Datapath?
    private var lastProblems: [String] = []

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
        logger.info("datapath loaded from \(configuration.bpfObjectPath), maps pinned in \(configuration.pinRoot)")
        defer {
            lock.withLock {
                dp.close(unpin: configuration.unpinOnShutdown)
                datapath = nil
            }
            rules.remove()
            logger.info("datapath detached, routing rules removed")
        }
        try? await cancelWhenGracefulShutdown {
            var lastStamp: (Int, Int)? = nil
            while !Task.isCancelled {
                if let stamp = Self.modificationStamp(self.configuration.inventoryPath), stamp != lastStamp ?? (-1, -1) {
                    lastStamp = stamp
                    self.reload(dp)
                }
                try await Task.sleep(for: .milliseconds(self.configuration.inventoryPollMilliseconds))
            }
        }
    }

    /// Outcome counters of the tc program, for `loupe status`.
    public func counters() -> [DatapathCounter: UInt64] {
        lock.withLock { datapath?.readCounters() ?? [:] }
    }

    private func reload(_ dp: Datapath) {
        let inventory: Inventory
        do {
            let text = try String(contentsOfFile: configuration.inventoryPath, encoding: .utf8)
            inventory = try InventoryLoader.parse(text, file: configuration.inventoryPath)
        } catch {
            logger.error("inventory not applied, keeping the previous one: \(error)")
            return
        }
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
        for podRules in plan.pods {
            guard let ifname = podRules.pod.hostInterface else { continue }
            let ifindex = if_nametoindex(ifname)
            guard ifindex != 0 else {
                logger.warning("pod \(podRules.pod.qualifiedName): interface \(ifname) not found in this netns")
                continue
            }
            ifindexes.append(Int32(ifindex))
            endpoints[ifindex] = EndpointIdentity(pod: podRules.pod).id
            for rule in podRules.rules where rule.carriesTCP {
                switch rule.direction {
                case .egress:
                    entries.append(RedirectEntry(match: .egress(ifindex: ifindex), port: rule.port, proxyPort: proxyPort))
                case .ingress:
                    for ip in podRules.pod.ips {
                        guard let bytes = Self.addressBytes(ip) else { continue }
                        entries.append(RedirectEntry(match: .ingress(address: bytes), port: rule.port, proxyPort: proxyPort))
                    }
                }
            }
        }
        lock.withLock {
            do {
                try dp.setEndpoints(endpoints)
                try dp.setRedirects(entries)
                for ifindex in ifindexes where !dp.attached.contains(ifindex) { try dp.attach(ifindex: ifindex) }
                for ifindex in dp.attached where !ifindexes.contains(ifindex) { dp.detach(ifindex: ifindex) }
            } catch {
                logger.error("datapath update failed: \(error)")
            }
        }
        environment.update(inventory: inventory)
        logger.info("inventory applied: \(plan.pods.count) pods, \(entries.count) redirect rules, \(ifindexes.count) veths")
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
