import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import LoupeAPI
import LoupeBPF
import LoupeNetlink
import LoupeProxy
import Logging
import NIOPosix
import ServiceLifecycle

/// Where and how the Hubble API listens (Cilium's `hubble-*` agent options).
public struct HubbleConfiguration: Sendable {
    /// Unix socket (`--hubble-socket`): no TLS, mode 0600.
    public var socketPath: String = "/var/run/loupe/hubble.sock"
    /// TCP listener (`--hubble-listen-address`, `:4244`); nil turns it off. An empty host is every address.
    public var listenAddress: (host: String, port: Int)? = ("", 4244)
    /// TLS on the TCP listener (both or neither).
    public var tlsCertFile: String?
    public var tlsKeyFile: String?
    /// With TLS: client certificates must chain to one of these (mTLS).
    public var tlsClientCAFiles: [String] = []
    /// Cluster name in TLS server names (`<node>.<cluster>.hubble-grpc.cilium.io`, as Relay expects).
    public var clusterName: String = "default"

    public init() {}

    var tls: Bool { tlsCertFile != nil }
}

public enum LoupeVersion {
    public static let current = "0.1.0"
}

/// Service: Hubble's gRPC API (observer.Observer, peer.Peer, grpc.health.v1.Health) and Loupe's
/// own loupe.v1.Agent, one set of services on the unix socket and the TCP listener. The one way
/// flows and status leave the agent (`loupe observe`, `loupe status`, hubble, Relay, Hubble UI).
public final class HubbleServer: Service, Sendable {
    private let configuration: HubbleConfiguration
    private let group: MultiThreadedEventLoopGroup
    private let environment: ProxyEnvironment
    private let readings: AgentReadings
    private let logger: Logger
    private let followers = Followers()

    public init(configuration: HubbleConfiguration, group: MultiThreadedEventLoopGroup, environment: ProxyEnvironment,
                readings: AgentReadings, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.environment = environment
        self.readings = readings
        self.logger = logger
    }

    public func run() async throws {
        let c = configuration
        let nodeName = environment.configuration.nodeName
        var node = HubbleNode(name: nodeName, version: LoupeVersion.current, address: "unix://\(c.socketPath)")
        if let (host, port) = c.listenAddress {
            // Every address: this node's InternalIP when the inventory lists it (what the other
            // nodes list too), else the first non-loopback address.
            let own = environment.snapshot.inventory.nodes.first { $0.name == nodeName }?.preferredAddress
            node.address = Self.hostPort(host.isEmpty ? own ?? Self.advertisedAddress() : host, port)
        }
        if c.tls {
            node.tlsServerName = "\(nodeName.replacingOccurrences(of: ".", with: "-")).\(c.clusterName).hubble-grpc.cilium.io"
        }
        let directory = PeerDirectory(environment: environment, selfNode: node, hubblePort: c.listenAddress?.port,
                                      probing: !c.tls, logger: logger)
        let services: [any RegistrableRPCService] = [
            ObserverRoutes(service: ObserverService(environment: environment, node: node, followers: followers, peers: directory)),
            PeerService(directory: directory, followers: followers),
            HealthService(followers: followers),
            AgentStatusService(environment: environment, node: node, readings: readings),
        ]
        // Followers are long streams: many may share one connection (NIO's default allows 100,
        // and a client opening more before it read the limit got the connection closed).
        // Requests up to 16 MiB are read, so that an oversized filter list gets an answer that
        // says so (ObserverService.maxRequestBytes); beyond, the transport resets the stream.
        let config = HTTP2ServerTransport.Posix.Config.defaults {
            $0.http2.maxConcurrentStreams = 4096
            $0.rpc.maxRequestPayloadSize = 16 << 20
        }

        try FileManager.default.createDirectory(atPath: (c.socketPath as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        let unix = GRPCServer(transport: .http2NIOPosix(address: .unixDomainSocket(path: c.socketPath),
                                                        transportSecurity: .plaintext, config: config, eventLoopGroup: group),
                              services: services)
        let tcp = try c.listenAddress.map { host, port in
            GRPCServer(transport: .http2NIOPosix(address: host.isEmpty ? .ipv4(host: "0.0.0.0", port: port) : Self.socketAddress(host, port),
                                                 transportSecurity: try transportSecurity(), config: config, eventLoopGroup: group),
                       services: services)
        }
        let servers = [unix] + (tcp.map { [$0] } ?? [])
        let followers = self.followers
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { tasks in
                for server in servers { tasks.addTask { try await server.serve() } }
                tasks.addTask { try await directory.run() }
                _ = try await unix.listeningAddress // bound
                chmod(c.socketPath, 0o600)
                var where_ = "unix://\(c.socketPath)"
                if let address = try await tcp?.listeningAddress {
                    where_ += " and \(address)\(c.tls ? (c.tlsClientCAFiles.isEmpty ? " (TLS)" : " (mTLS)") : "")"
                }
                logger.info("Hubble API on \(where_), peer address \(node.address)")
            }
        } onGracefulShutdown: {
            followers.endAll()
            for server in servers { server.beginGracefulShutdown() }
        }
        unlink(c.socketPath)
    }

    private func transportSecurity() throws -> HTTP2ServerTransport.Posix.TransportSecurity {
        let c = configuration
        guard let cert = c.tlsCertFile else { return .plaintext }
        guard let key = c.tlsKeyFile else { throw AgentError("--hubble-tls-cert-file needs --hubble-tls-key-file") }
        for f in [cert, key] + c.tlsClientCAFiles where !FileManager.default.isReadableFile(atPath: f) {
            throw AgentError("Hubble TLS: cannot read \(f)")
        }
        let chain: [TLSConfig.CertificateSource] = [.file(path: cert, format: .pem)]
        let privateKey: TLSConfig.PrivateKeySource = .file(path: key, format: .pem)
        if c.tlsClientCAFiles.isEmpty {
            return .tls(certificateChain: chain, privateKey: privateKey)
        }
        return .mTLS(certificateChain: chain, privateKey: privateKey) {
            $0.trustRoots = .certificates(c.tlsClientCAFiles.map { .file(path: $0, format: .pem) })
            $0.clientCertificateVerification = .noHostnameVerification
        }
    }

    static func socketAddress(_ host: String, _ port: Int) -> GRPCNIOTransportCore.SocketAddress {
        host.contains(":") ? .ipv6(host: host, port: port) : .ipv4(host: host, port: port)
    }

    static func hostPort(_ host: String, _ port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The first IPv4 address of this netns outside 127/8 (what Relay dials when the listener is
    /// on every address; a node address may sit on `lo`, as the lab's does), else loopback.
    static func advertisedAddress() -> String {
        InterfaceAddresses.read().first { $0.isIPv4 && $0.isUp && !$0.address.hasPrefix("127.") }?.address ?? "127.0.0.1"
    }
}
