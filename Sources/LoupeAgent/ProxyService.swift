import Logging
import LoupeProxy
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Service: the transparent proxy listeners. On graceful shutdown the listeners close first
/// (new connections then fail open through the datapath), in-flight connections get a grace
/// period to finish.
public final class ProxyService: Service, @unchecked Sendable {
    private let group: EventLoopGroup
    private let environment: ProxyEnvironment
    private let logger: Logger

    public init(group: EventLoopGroup, environment: ProxyEnvironment, logger: Logger) {
        self.group = group
        self.environment = environment
        self.logger = logger
    }

    public func run() async throws {
        let listener = TransparentListener(group: group, environment: environment, logger: logger)
        try await listener.bind()
        try? await gracefulShutdown()
        await listener.close()
        logger.info("proxy listeners closed")
    }
}

/// Service: the transparent DNS proxy (UDP). Its socket exists while the service runs; on
/// shutdown the thread stops and every socket closes.
public final class DNSProxyService: Service, @unchecked Sendable {
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
