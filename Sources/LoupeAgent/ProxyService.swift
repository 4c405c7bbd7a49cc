import Logging
import LoupeBPF
import LoupeProxy
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Service: the transparent proxy listeners, and the kernel splice they hand opaque
/// connections to. On graceful shutdown the listeners close first (new connections then fail
/// open through the datapath), in-flight connections get a grace period to finish.
public final class ProxyService: Service, Sendable {
    private let group: EventLoopGroup
    private let environment: ProxyEnvironment
    private let configuration: AgentConfiguration
    private let logger: Logger

    public init(group: EventLoopGroup, environment: ProxyEnvironment, configuration: AgentConfiguration, logger: Logger) {
        self.group = group
        self.environment = environment
        self.configuration = configuration
        self.logger = logger
    }

    public func run() async throws {
        let splice = loadSplice()
        defer {
            environment.attachSplice(nil)
            splice?.close(unpin: configuration.unpinOnShutdown)
        }
        let listener = TransparentListener(group: group, environment: environment, logger: logger)
        try await listener.bind()
        try? await gracefulShutdown()
        await listener.close()
        logger.info("proxy listeners closed")
    }

    /// A kernel without sockmap (or a missing object) leaves the proxy relaying in userspace:
    /// said once here, counted per connection (`splice_fallback_unavailable`).
    private func loadSplice() -> SpliceMaps? {
        guard configuration.proxy.splice else { return nil }
        do {
            let maps = try SpliceMaps(objectPath: configuration.spliceObjectPath, pinRoot: configuration.pinRoot)
            environment.attachSplice(maps)
            logger.info("kernel splice loaded from \(configuration.spliceObjectPath)")
            return maps
        } catch {
            logger.warning("kernel splice unavailable, opaque connections stay in the userspace relay: \(error)")
            return nil
        }
    }
}

/// Service: the transparent DNS proxy (UDP). Its socket exists while the service runs; on
/// shutdown the thread stops and every socket closes.
public final class DNSProxyService: Service, Sendable {
    private let environment: ProxyEnvironment
    private let logger: Logger

    public init(environment: ProxyEnvironment, logger: Logger) {
        self.environment = environment
        self.logger = logger
    }

    public func run() async throws {
        let proxy = DNSProxy(environment: environment, logger: logger)
        try proxy.start()
        try? await gracefulShutdown()
        proxy.stop()
        logger.info("DNS proxy stopped")
    }
}
