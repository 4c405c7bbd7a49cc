import Foundation
import Logging
import LoupeBPF
import LoupeFlow
import LoupePolicy
import LoupeProxy
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle
import Synchronization

/// Service: Prometheus metrics on `GET /metrics` (default 127.0.0.1:9965, Hubble's port, in
/// the agent's netns). Hubble's flow metrics come from every flow the store records (a
/// subscriber that never drops: each flow is a few counter increments); `hubble_lost_events_total`
/// and Loupe's own `loupe_*` counters are read when scraped.
public final class MetricsService: Service, Sendable {
    private let group: EventLoopGroup
    private let host: String
    private let port: Int
    private let environment: ProxyEnvironment
    private let context: MetricsContext
    private let readings: AgentReadings
    private let logger: Logger
    let registry = PrometheusCollectorRegistry()

    public init(group: EventLoopGroup, host: String, port: Int, context: MetricsContext, environment: ProxyEnvironment,
                readings: AgentReadings, logger: Logger) {
        self.group = group
        self.host = host
        self.port = port
        self.context = context
        self.environment = environment
        self.readings = readings
        self.logger = logger
    }

    public func run() async throws {
        let (subscription, _) = environment.flows.subscribe(last: 0) { [self] record in apply(record.flow) }
        defer { environment.flows.unsubscribe(subscription) }
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                    try ch.pipeline.syncOperations.addHandler(MetricsHTTPHandler(render: { self.render() }))
                }
            }
            .bind(host: host, port: port).get()
        logger.info("metrics on http://\(host):\(port)/metrics")
        try? await gracefulShutdown()
        try? await channel.close()
    }

    /// Every labeled series made so far, so those of deleted pods can be dropped.
    private enum Series { case counter(Counter), histogram(ValueHistogram) }
    private struct SeriesKey: Hashable { var name: String; var labels: [MetricLabel] }
    private struct State {
        var all: [SeriesKey: Series] = [:]
        var generation: UInt64 = 0
        /// The series a flow of a given shape touches, so that the flows after
        /// the first of each shape skip building and hashing label sets (which cost about half
        /// of the flow pipeline's CPU). Cleared when series are pruned, or when it is full.
        var memo: [FlowShape: [Series]] = [:]
        /// The shape looked up last: consecutive flows mostly share one (a request's flow and
        /// its answer's alternate between two), and comparing is cheaper than hashing.
        var last: (shape: FlowShape, series: [Series])?
        var beforeLast: (shape: FlowShape, series: [Series])?
    }
    private let series = Mutex(State())
    static let memoLimit = 16_384

    /// Everything FlowMetrics reads of a flow: endpoints by (ID, identity), which fix their
    /// context labels; the rest are the metric labels' own values.
    private struct FlowShape: Hashable {
        var source: UInt64, destination: UInt64
        var flags: UInt32
        var code: Int32
        var method: String, proto: String
        var dropReason: String?
        /// DNS: qtypes, and the answer's rcode and address count.
        var qtypes: [String] = []
        var rcode: UInt32 = 0, ips = 0

        init(_ f: Flow) {
            // The L7 part read once (each `f.l7?.…` chain copied it).
            var l7Kind: UInt32 = 0, isHTTP = false, isDNS = false
            code = -1
            method = ""
            proto = ""
            if let l7 = f.l7 {
                l7Kind = switch l7.type { case .request: 1; case .response: 2; case .sample: 3 }
                if let http = l7.http {
                    isHTTP = true
                    code = Int32(clamping: http.code ?? -1)
                    method = http.method
                    proto = http.protocol
                } else if let dns = l7.dns {
                    isDNS = true
                    qtypes = dns.qtypes
                    rcode = dns.rcode
                    ips = dns.ips.count
                }
            }
            source = UInt64(f.source.id ?? 0) << 32 | UInt64(f.source.identity)
            destination = UInt64(f.destination.id ?? 0) << 32 | UInt64(f.destination.identity)
            let verdict: UInt32 = switch f.verdict { case .forwarded: 0; case .dropped: 1; case .error: 2; case .audit: 3 }
            flags = verdict | l7Kind << 2 | (f.type == .l7 ? 1 << 4 : 0) | (f.trafficDirection == .egress ? 1 << 5 : 0)
                | (f.l4.tcp != nil ? 1 << 6 : 0) | (f.l4.udp != nil ? 1 << 7 : 0) | (isHTTP ? 1 << 8 : 0)
                | (isDNS ? 1 << 9 : 0) | (f.isReply ? 1 << 10 : 0)
            dropReason = f.dropReasonDesc?.rawValue
        }
    }

    func apply(_ flow: Flow) {
        let shape = FlowShape(flow)
        let known = series.withLock { state -> [Series]? in
            if let l = state.last, l.shape == shape { return l.series }
            if let b = state.beforeLast, b.shape == shape {
                swap(&state.last, &state.beforeLast)
                return b.series
            }
            guard let found = state.memo[shape] else { return nil }
            state.beforeLast = state.last
            state.last = (shape, found)
            return found
        }
        if let known {
            // Same updates as the first flow of this shape; only a histogram's value differs.
            for s in known {
                switch s {
                case .counter(let c): c.increment()
                case .histogram(let h): h.record(FlowMetrics.durationSeconds(flow))
                }
            }
            return
        }
        var touched: [Series] = []
        for u in FlowMetrics.updates(for: flow, context: context) {
            let key = SeriesKey(name: u.name, labels: u.labels)
            let s = series.withLock { state -> Series in
                if let s = state.all[key] { return s }
                let labels = u.labels.map { ($0.name, $0.value) }
                let s: Series = switch u.change {
                case .increment: .counter(registry.makeCounter(descriptor: Self.descriptor(u.name), labels: labels))
                case .observe: .histogram(registry.makeValueHistogram(descriptor: Self.descriptor(u.name), labels: labels,
                                                                       buckets: FlowMetrics.durationBuckets))
                }
                state.all[key] = s
                return s
            }
            switch (s, u.change) {
            case (.counter(let c), .increment): c.increment()
            case (.histogram(let h), .observe(let seconds)): h.record(seconds)
            default: break
            }
            touched.append(s)
        }
        series.withLock { state in
            if state.memo.count >= Self.memoLimit { state.memo.removeAll() }
            state.memo[shape] = touched
        }
    }

    /// Drops the series whose source or destination context names a pod or workload that is no
    /// longer in the inventory (the world, with empty labels, always stays).
    func pruneSeries(live inventory: Inventory) {
        var pods = Set<String>(), workloads = Set<String>(), namespaces = Set<String>()
        for pod in inventory.pods {
            let id = EndpointIdentity(pod: pod)
            pods.insert(pod.namespace + "/" + pod.name)
            workloads.insert(pod.namespace + "/" + (id.workload ?? pod.name))
            namespaces.insert(pod.namespace)
        }
        func alive(_ labels: [MetricLabel], _ side: String) -> Bool {
            let get = { (n: String) in labels.first { $0.name == "\(side)_\(n)" }?.value }
            let ns = get("namespace") ?? ""
            if let pod = get("pod"), !pod.isEmpty, !pods.contains(ns + "/" + pod) { return false }
            if let w = get("workload"), !w.isEmpty, !workloads.contains(ns + "/" + w) { return false }
            if !ns.isEmpty, get("namespace") != nil, !namespaces.contains(ns) { return false }
            return true
        }
        let gone = series.withLock { state -> [Series] in
            let dead = state.all.filter { !alive($0.key.labels, "source") || !alive($0.key.labels, "destination") }
            for k in dead.keys { state.all.removeValue(forKey: k) }
            state.memo.removeAll()
            state.last = nil
            state.beforeLast = nil
            return Array(dead.values)
        }
        for s in gone {
            switch s {
            case .counter(let c): registry.unregisterCounter(c)
            case .histogram(let h): registry.unregisterValueHistogram(h)
            }
        }
    }

    /// The registry's metrics, then what is read at scrape time.
    func render() -> String {
        let snapshot = environment.snapshot
        let pruneDue = series.withLock { state -> Bool in
            defer { state.generation = snapshot.generation }
            return state.generation != snapshot.generation
        }
        if pruneDue { pruneSeries(live: snapshot.inventory) }
        var text = registry.emitToString()
        func family(_ name: String, _ help: String, _ samples: [(String, UInt64)]) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) counter\n"
            for (labels, v) in samples.sorted(by: { $0.0 < $1.0 }) { text += "\(name)\(labels) \(v)\n" }
        }
        let lost = environment.flows.lostEvents
        family("hubble_lost_events_total", "Number of flows lost, by the consumer that could not keep up",
               (lost.isEmpty ? ["observer": 0] : lost).map { ("{source=\"\($0.key)\"}", $0.value) })
        family("loupe_datapath_packets_total", "Packets seen by the tc program, by outcome",
               readings.datapathCounters().map { ("{outcome=\"\($0.key.name)\"}", $0.value) })
        family("loupe_proxy_events_total", "Proxy events (connections by protocol, upstream errors, limits, splices), by name",
               environment.counterValues.map { ("{event=\"\($0.key)\"}", $0.value) })
        family("loupe_flows_recorded_total", "Flows recorded by the agent", [("", environment.flows.totalFlows)])
        let kubernetes = readings.kubernetes()
        if !kubernetes.isEmpty {
            text += "# HELP loupe_kubernetes_synced Whether the resource's list/watch is in sync with the API server (0: the last good state is in force)\n# TYPE loupe_kubernetes_synced gauge\n"
            for (resource, s) in kubernetes.sorted(by: { $0.key < $1.key }) { text += "loupe_kubernetes_synced{resource=\"\(resource)\"} \(s.synced ? 1 : 0)\n" }
            family("loupe_kubernetes_watch_errors_total", "Failed lists and watches of the resource (connection, HTTP or watch errors)",
                   kubernetes.map { ("{resource=\"\($0.key)\"}", $0.value.watchErrors) })
            family("loupe_kubernetes_relists_total", "Full lists of the resource (the first, and after 410 Gone)",
                   kubernetes.map { ("{resource=\"\($0.key)\"}", $0.value.relists) })
        }
        if let splice = environment.spliceMaps?.status()["paired_sockets"] {
            text += "# HELP loupe_splice_paired_sockets Sockets the kernel splice carries now\n# TYPE loupe_splice_paired_sockets gauge\n"
            text += "loupe_splice_paired_sockets \(splice)\n"
        }
        return text
    }

    /// Name, unit and help of Hubble's metric families (Sendable facts; swift-prometheus's
    /// descriptor is built from them when a family is registered).
    static let families: [String: (name: String, unit: String, help: String)] = {
        let all: [(String, String, String)] = [
            ("hubble_flows_processed", "total", "Total number of flows processed"),
            ("hubble_http_requests", "total", "Count of HTTP requests (counted on their responses)"),
            ("hubble_http_request_duration", "seconds", "Histogram of HTTP request duration in seconds"),
            ("hubble_dns_queries", "total", "Number of DNS queries observed"),
            ("hubble_dns_responses", "total", "Number of DNS responses observed"),
            ("hubble_drop", "total", "Number of drops"),
            ("hubble_policy_verdicts", "total", "Number of policy verdicts"),
        ]
        var out: [String: (name: String, unit: String, help: String)] = [:]
        for (name, unit, help) in all { out[name + "_" + unit] = (name, unit, help) }
        return out
    }()

    static func descriptor(_ name: String) -> MetricNameDescriptor {
        guard let f = families[name] else { return MetricNameDescriptor(metricName: name, unitName: "", helpText: "") }
        return MetricNameDescriptor(metricName: f.name, unitName: f.unit, helpText: f.help)
    }
}

/// `GET /metrics` → the Prometheus text; anything else → 404.
final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let render: () -> String
    private var path = ""

    init(render: @escaping () -> String) { self.render = render }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): path = head.method == .GET ? head.uri : ""
        case .body: break
        case .end:
            let ok = path == "/metrics" || path.hasPrefix("/metrics?")
            let body = ok ? render() : "not found: GET /metrics\n"
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain")
            headers.add(name: "Content-Length", value: String(body.utf8.count))
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: ok ? .ok : .notFound, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
