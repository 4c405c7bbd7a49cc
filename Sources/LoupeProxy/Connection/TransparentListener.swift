import Logging
import NIOCore
import NIOPosix

/// The proxy's transparent TCP listeners (0.0.0.0:port and [::]:port, IP_TRANSPARENT), which
/// the tc program assigns redirected connections to. Each accepted connection becomes a
/// `ProxyConnection` whose original destination is the socket's local address.
public final class TransparentListener {
    private let group: EventLoopGroup
    private let environment: ProxyEnvironment
    private let logger: Logger
    private var channels: [Channel] = []

    public init(group: EventLoopGroup, environment: ProxyEnvironment, logger: Logger) {
        self.group = group
        self.environment = environment
        self.logger = logger
    }

    /// Binds both listeners; IPv6 is skipped (and logged) when the node has no IPv6.
    public func bind() async throws {
        let port = environment.configuration.port
        let v4 = try await bootstrap(v6: false).bind(host: "0.0.0.0", port: port).get()
        channels.append(v4)
        do {
            channels.append(try await bootstrap(v6: true).bind(host: "::", port: port).get())
        } catch {
            logger.warning("IPv6 transparent listener not bound: \(error)")
        }
        logger.info("transparent listener on 0.0.0.0:\(port) and [::]:\(port)")
    }

    public func close() async {
        for c in channels { try? await c.close() }
        channels.removeAll()
    }

    public var closeFutures: [EventLoopFuture<Void>] { channels.map(\.closeFuture) }

    private func bootstrap(v6: Bool) -> ServerBootstrap {
        let env = environment
        var b = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 4096)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
        if v6 {
            b = b.serverChannelOption(ChannelOptions.Types.SocketOption(level: 41, name: 26), value: 1) // IPV6_V6ONLY
                .serverChannelOption(ChannelOptions.Types.SocketOption(level: 41, name: 75), value: 1) // IPV6_TRANSPARENT
        } else {
            b = b.serverChannelOption(ChannelOptions.Types.SocketOption(level: 0, name: 19), value: 1) // IP_TRANSPARENT
        }
        return b.childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                // Before the channel is registered: no read starts until the upstream is connected.
                try ProxyConnection.configure(channel)
                try channel.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
                try channel.pipeline.syncOperations.addHandler(StartWhenActive(environment: env))
            }
        }
    }
}

/// Starts the accepted connection's `ProxyConnection` once its channel is active. The child
/// initializer runs before the channel is registered — with several event loops, a few hops
/// before — and a destination that speaks first could otherwise be relayed to, and the
/// connection be spliced or closed, while the pod's channel is not active yet (the splice then
/// saw an inactive socket and left the connection with its reads stopped).
final class StartWhenActive: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private let environment: ProxyEnvironment

    init(environment: ProxyEnvironment) { self.environment = environment }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        ProxyConnection(downstream: context.channel, environment: environment).start()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
