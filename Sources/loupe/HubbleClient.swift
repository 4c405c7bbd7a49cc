import ArgumentParser
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import LoupeAPI

/// How `loupe observe` / `loupe status` reach the agent: its Hubble API, like `hubble --server`.
struct ServerOptions: ParsableArguments {
    @Option(help: "Hubble API: unix://PATH, HOST:PORT or [V6]:PORT (default $LOUPE_SERVER or unix:///var/run/loupe/hubble.sock).")
    var server: String = ProcessInfo.processInfo.environment["LOUPE_SERVER"] ?? "unix:///var/run/loupe/hubble.sock"
    @Flag(help: "Use TLS to the server (HOST:PORT).") var tls = false
    @Option(help: "With --tls: CA certificates (PEM) the server's certificate must chain to (default: the system's).")
    var tlsCaCertFiles: [String] = []
    @Option(help: "With --tls: client certificate (PEM), for mTLS.") var tlsClientCertFile: String?
    @Option(help: "With --tls: client private key (PEM).") var tlsClientKeyFile: String?
    @Option(help: "With --tls: the name the server's certificate must carry, e.g. NODE.default.hubble-grpc.cilium.io (default: the host).")
    var tlsServerName: String?
    @Option(help: "Seconds to wait for the server to answer a status request.") var timeout: Int = 10

    struct Unreachable: Error, CustomStringConvertible {
        var server: String
        var reason: String
        var description: String {
            "cannot reach the Loupe agent at \(server): \(reason). Is it running? (`loupe agent --lab`, or --server)"
        }
    }

    func target() throws -> any ResolvableTarget {
        if server.hasPrefix("unix://") { return .unixDomainSocket(path: String(server.dropFirst("unix://".count))) }
        if server.hasPrefix("/") { return .unixDomainSocket(path: server) }
        var rest = Substring(server)
        for scheme in ["http://", "https://", "dns:///"] where rest.hasPrefix(scheme) { rest = rest.dropFirst(scheme.count) }
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]), (1...65535).contains(port) else {
            throw ValidationError("--server \"\(server)\": expected unix://PATH or HOST:PORT")
        }
        var host = String(rest[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
            return .ipv6(address: host, port: port)
        }
        if host.isEmpty { host = "127.0.0.1" }
        return host.split(separator: ".").count == 4 && host.allSatisfy({ $0.isNumber || $0 == "." })
            ? .ipv4(address: host, port: port) : .dns(host: host, port: port)
    }

    func transportSecurity() throws -> HTTP2ClientTransport.Posix.TransportSecurity {
        guard tls else { return .plaintext }
        let roots: TLSConfig.TrustRootsSource = tlsCaCertFiles.isEmpty ? .systemDefault : .certificates(tlsCaCertFiles.map { .file(path: $0, format: .pem) })
        if let cert = tlsClientCertFile {
            guard let key = tlsClientKeyFile else { throw ValidationError("--tls-client-cert-file needs --tls-client-key-file") }
            return .mTLS(certificateChain: [.file(path: cert, format: .pem)], privateKey: .file(path: key, format: .pem)) {
                $0.trustRoots = roots
            }
        }
        return .tls { $0.trustRoots = roots }
    }

    /// Runs `body` with a client of the agent's Hubble API. Calls fail at once when the server
    /// is not there (no waiting for it to appear).
    func withClient<T: Sendable>(_ body: (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        try await withGRPCClient(transport: makeTransport()) { client in try await body(client) }
    }

    /// A transport to the server (one connection).
    func makeTransport() throws -> HTTP2ClientTransport.Posix {
        var config = HTTP2ClientTransport.Posix.Config.defaults
        config.http2.maxFrameSize = 1 << 20
        if let tlsServerName { config.http2.authority = tlsServerName } // SNI and the name verified
        var serviceConfig = ServiceConfig()
        serviceConfig.loadBalancingConfig = [.pickFirst(.init())]
        return try HTTP2ClientTransport.Posix(target: target(), transportSecurity: transportSecurity(), config: config,
                                              serviceConfig: serviceConfig)
    }

    var callOptions: CallOptions {
        var o = CallOptions.defaults
        o.waitForReady = false
        return o
    }

    var unaryOptions: CallOptions {
        var o = callOptions
        o.timeout = .seconds(timeout)
        return o
    }

    /// A gRPC failure as a sentence for the terminal.
    func explain(_ error: any Error) -> String {
        if let e = error as? RPCError {
            switch e.code {
            case .unavailable:
                var reason = e.message
                while reason.hasSuffix(".") { reason.removeLast() }
                return Unreachable(server: server, reason: reason).description
            case .invalidArgument: return "the agent refused the request: \(e.message)"
            default: return "\(e.code): \(e.message)"
            }
        }
        return "\(error)"
    }
}
