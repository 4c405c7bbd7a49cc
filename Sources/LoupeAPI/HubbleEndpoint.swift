import GRPCCore
import GRPCNIOTransportHTTP2

/// How a client reaches a Hubble API (a Loupe agent, Hubble Relay or a Cilium agent): `loupe ui`,
/// and the agent probing its peers.
public struct HubbleEndpoint: Sendable {
    /// As the user wrote it (`unix:///run/loupe/hubble.sock`, `HOST:PORT`): for messages.
    public var name: String
    /// A new transport per connection attempt.
    public var makeTransport: @Sendable () throws -> HTTP2ClientTransport.Posix

    public init(name: String, makeTransport: @escaping @Sendable () throws -> HTTP2ClientTransport.Posix) {
        self.name = name
        self.makeTransport = makeTransport
    }

    /// Runs `body` with an Observer client over a new connection; fails at once when the server
    /// is not there (no waiting for it to appear).
    public func withObserver<T: Sendable>(_ body: (Observer_Observer.Client<HTTP2ClientTransport.Posix>) async throws -> T) async throws -> T {
        try await withGRPCClient(transport: makeTransport()) { client in
            try await body(Observer_Observer.Client(wrapping: client))
        }
    }

    /// Asks ServerStatus (5 s) on a new connection: fails at once when the server is not there
    /// or not a Hubble API.
    public func probe() async throws {
        try await withObserver { try await Self.checkServerStatus($0) }
    }

    /// A Hubble API answers ServerStatus; anything else fails here with a clear message.
    @discardableResult
    public static func checkServerStatus(_ observer: Observer_Observer.Client<HTTP2ClientTransport.Posix>, timeout: Duration = .seconds(5)) async throws -> Observer_ServerStatusResponse {
        var options = Self.options
        options.timeout = timeout
        return try await observer.serverStatus(Observer_ServerStatusRequest(), options: options)
    }

    public static var options: CallOptions {
        var o = CallOptions.defaults
        o.waitForReady = false
        return o
    }

    /// What a failed call says about the server: not there, or there but not a Hubble API.
    public static func problem(_ error: any Error, server: String) -> (notHubble: Bool, message: String) {
        if let e = error as? RPCError {
            switch e.code {
            case .unimplemented:
                return (true, "\(server) is not a Hubble API: observer.Observer is not served there (\(e.message))")
            case .unavailable:
                var m = e.message
                while m.hasSuffix(".") { m.removeLast() }
                // A server that answers, but not in gRPC (an HTTP/1 server, TLS expected, …).
                let lower = m.lowercased()
                if lower.contains("http/2") || lower.contains("preface") || lower.contains("protocol") || lower.contains("unexpected") {
                    return (true, "\(server) is not a Hubble API: \(m)")
                }
                return (false, "cannot reach the Hubble API at \(server): \(m)")
            default:
                return (e.code == .internalError, "\(server): \(e.code): \(e.message)")
            }
        }
        return (false, "\(server): \(error)")
    }
}

