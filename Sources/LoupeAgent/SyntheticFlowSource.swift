import Foundation
import Logging
import LoupeFlow
import LoupeProxy
import ServiceLifecycle
import Synchronization

/// What the flow-pipeline benchmark asks of the agent (`--synthetic-flows N`).
public struct SyntheticFlowConfiguration: Sendable {
    /// Flows to record.
    public var count: Int
    /// Flows per second; 0 = as fast as the pipeline takes them.
    public var rate: Int = 0
    /// Start once the store has this many subscribers: one follower (`loupe observe -f`) plus
    /// the agent's own (metrics, export), which the agent adds.
    public var startWithSubscribers: Int = 1
    /// 0: every flow between the inventory's first two pods. Otherwise flows between this many
    /// made-up workloads (50 to a namespace, `synthetic-N`) over `edges` distinct client → server
    /// pairs, for `loupe ui`'s scale measurement.
    public var workloads: Int = 0
    public var edges: Int = 0

    public init(count: Int) { self.count = count }
}

/// Service (benchmark switch): records `count` HTTP flows through the same path as the
/// proxy's (`ProxyEnvironment.record`: redaction, the ring, every subscriber — followers,
/// metrics, export), from its own thread, so the flow pipeline is measured without the
/// proxy's traffic cost. Each flow is a fresh copy (new UUID and time) of a typical HTTP
/// response flow between two pods of the inventory. Logs the rate it achieved and the lost
/// events at the end; followers that fall behind lose flows exactly as with real traffic.
public final class SyntheticFlowSource: Service, Sendable {
    private let configuration: SyntheticFlowConfiguration
    private let environment: ProxyEnvironment
    private let logger: Logger
    /// Set on shutdown: the recording thread stops at its next batch.
    private let stopping = Atomic<Bool>(false)

    public init(configuration: SyntheticFlowConfiguration, environment: ProxyEnvironment, logger: Logger) {
        self.configuration = configuration
        self.environment = environment
        self.logger = logger
    }

    static func threadCPUNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    public func run() async throws {
        let store = environment.flows
        while store.subscriberCount < configuration.startWithSubscribers {
            if Task.isCancelled || Task.isShuttingDownGracefully { return }
            try? await Task.sleep(for: .milliseconds(20))
        }
        let cfg = configuration, env = environment, log = logger
        let templates = cfg.workloads > 1 ? Self.templates(workloads: cfg.workloads, edges: max(cfg.edges, 1), environment)
            : [Self.template(environment)]
        // A thread of its own, as the proxy's event loops are: the API's drain competes with it.
        let thread = Thread { [self] in
            let start = DispatchTime.now().uptimeNanoseconds
            let cpuStart = Self.threadCPUNanoseconds()
            var recorded = 0
            for i in 0..<cfg.count {
                // In batches of 1,000: stop on shutdown; when paced, sleep (never spin) while
                // ahead of the rate, so the core stays free for the consumers this is measuring.
                if i % 1_000 == 0 {
                    if stopping.load(ordering: .relaxed) { break }
                    if cfg.rate > 0 {
                        let due = start + UInt64(i) * 1_000_000_000 / UInt64(cfg.rate)
                        let now = DispatchTime.now().uptimeNanoseconds
                        if due > now { usleep(UInt32((due - now) / 1_000)) }
                    }
                }
                var f = templates[i % templates.count]
                f.renew()
                env.record(f)
                recorded += 1
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            // The recording thread's own CPU per flow: what recording costs, whatever share of
            // the core the consumers took meanwhile.
            let cpu = Double(Self.threadCPUNanoseconds() - cpuStart) / 1e3 / Double(max(recorded, 1))
            log.info("synthetic flows: \(recorded) recorded in \(String(format: "%.3f", seconds)) s (\(Int(Double(recorded) / seconds)) flows/s, \(String(format: "%.2f", cpu)) µs CPU per flow); lost events so far: \(env.flows.lostEvents)")
        }
        thread.name = "loupe-synthetic-flows"
        thread.start()
        try? await gracefulShutdown()
        stopping.store(true, ordering: .relaxed)
    }

    /// A request and a response flow for each of `edges` pairs of `workloads` made-up workloads: edge k goes from workload
    /// k % n to a server picked by a fixed stride, so every workload both calls and serves.
    static func templates(workloads n: Int, edges: Int, _ environment: ProxyEnvironment) -> [Flow] {
        let base = template(environment)
        func endpoint(_ w: Int) -> (Endpoint, String) {
            let ns = "synthetic-\(w / 50)", name = "workload-\(w)"
            let e = Endpoint(id: UInt32(w + 1), identity: UInt32(100_000 + w), namespace: ns,
                             labels: ["k8s:app=\(name)", "k8s:io.kubernetes.pod.namespace=\(ns)"], podName: "\(name)-0",
                             workloads: [Endpoint.Workload(name: name, kind: "Deployment")])
            return (e, "198.18.\(w / 250).\(w % 250 + 1)")
        }
        return (0..<edges).flatMap { k -> [Flow] in
            let (client, clientIP) = endpoint(k % n)
            var s = (k % n + 1 + (k / n) * 7) % n
            if s == k % n { s = (s + 1) % n }
            let (server, serverIP) = endpoint(s)
            var response = base
            response.source = server
            response.destination = client
            response.ip = IPInfo(source: serverIP, destination: clientIP)
            response.verdict = k % 10 == 0 ? .dropped : .forwarded
            var request = response
            request.source = client
            request.destination = server
            request.ip = IPInfo(source: clientIP, destination: serverIP)
            request.isReply = false
            request.l4 = Layer4(tcp: .init(sourcePort: response.l4.ports?.destinationPort ?? 40000,
                                           destinationPort: response.l4.ports?.sourcePort ?? 80))
            request.l7?.type = .request
            request.l7?.latencyNs = nil
            request.l7?.http?.code = nil
            return [request, response]
        }
    }

    /// An HTTP response flow between the inventory's first two pods (the world if fewer).
    static func template(_ environment: ProxyEnvironment) -> Flow {
        let ips = environment.snapshot.inventory.pods.compactMap(\.ips.first)
        let client = ips.first ?? "198.18.0.2", server = ips.dropFirst().first ?? "198.19.0.2"
        let context = ConnectionContext(clientIP: client, clientPort: 40000, serverIP: server, serverPort: 80,
                                        snapshot: environment.snapshot, nodeName: environment.configuration.nodeName)
        let url = "http://\(server)/synthetic"
        return context.flow(
            verdict: .forwarded, type: .l7,
            l7: Layer7(type: .response, latencyNs: 250_000, http: HTTP(
                code: 200, method: "GET", url: url, protocol: "HTTP/1.1",
                headers: [HTTP.Header(key: "content-type", value: "text/plain"), HTTP.Header(key: "content-length", value: "19")])),
            reply: true, summary: "HTTP/1.1 200 0ms (GET \(url))")
    }
}
