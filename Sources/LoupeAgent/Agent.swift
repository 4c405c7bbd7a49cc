import Foundation
import Logging
import LoupeFlow
import LoupePolicy
import LoupeProxy
import NIOPosix
import ServiceLifecycle

/// The node agent: the Kubernetes source (with `--kubernetes`), datapath, proxy and the Hubble
/// API as services of one `ServiceGroup` (array order is start order; SIGTERM/SIGINT shut them
/// down in reverse: API, proxy, datapath, Kubernetes).
public struct Agent {
    public var configuration: AgentConfiguration
    public var logger: Logger

    public init(configuration: AgentConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    public func run() async throws {
        let lock = try AgentLock(pinRoot: configuration.pinRoot)
        defer { withExtendedLifetime(lock) {} }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.proxy.threads))
        let flows = FlowStore(capacity: configuration.flowCapacity)
        var initial = Inventory()
        var readings = AgentReadings()
        var kubernetes: KubernetesSource?
        let cluster: ClusterView?
        if let k8s = configuration.kubernetes {
            let view = ClusterView()
            let source = try KubernetesSource(configuration: k8s, view: view, logger: logger)
            cluster = view
            kubernetes = source
            readings.kubernetes = { source.status() }
            readings.rejectedPolicies = { source.rejectedPolicies() }
            readings.source = "kubernetes \(k8s.config.server)"
        } else {
            cluster = nil
            initial = (try? String(contentsOfFile: configuration.inventoryPath, encoding: .utf8))
                .flatMap { try? InventoryLoader.parse($0, file: configuration.inventoryPath) } ?? Inventory()
            readings.source = "inventory \(configuration.inventoryPath)"
        }
        let environment = ProxyEnvironment(inventory: initial, flows: flows, configuration: configuration.proxy)
        let datapath = DatapathService(configuration: configuration, environment: environment, cluster: cluster, logger: logger)
        readings.datapathCounters = { datapath.counters() }
        readings.endpoints = { datapath.endpointReport() }
        let proxy = ProxyService(group: group, environment: environment, configuration: configuration, logger: logger)
        let dns = DNSProxyService(environment: environment, logger: logger)
        let api = HubbleServer(configuration: configuration.hubble, group: group, environment: environment,
                               readings: readings, logger: logger)
        var parts: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let kubernetes { parts.append(.init(service: kubernetes, serviceName: "kubernetes")) }
        parts.append(.init(service: datapath, serviceName: "datapath"))
        if !configuration.datapathOnly {
            parts += [.init(service: proxy, serviceName: "proxy"), .init(service: dns, serviceName: "dns")]
        }
        if let (host, port) = configuration.metricsAddress {
            parts.append(.init(service: MetricsService(group: group, host: host, port: port, context: configuration.metricsContext,
                                                       environment: environment, readings: readings,
                                                       logger: logger),
                               serviceName: "metrics"))
        }
        if let export = configuration.flowExport {
            parts.append(.init(service: FlowExporter(configuration: export, store: flows, logger: logger), serviceName: "export"))
        }
        parts.append(.init(service: api, serviceName: "api"))
        if var synthetic = configuration.syntheticFlows {
            synthetic.startWithSubscribers += (configuration.metricsAddress == nil ? 0 : 1) + (configuration.flowExport == nil ? 0 : 1)
            parts.append(.init(service: SyntheticFlowSource(configuration: synthetic, environment: environment, logger: logger),
                               serviceName: "synthetic-flows"))
        }
        let services = ServiceGroup(
            configuration: .init(services: parts,
                                 gracefulShutdownSignals: [.sigterm, .sigint],
                                 logger: logger))
        do {
            try await services.run()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try await group.shutdownGracefully()
    }
}
