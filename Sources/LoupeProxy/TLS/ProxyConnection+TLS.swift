import LoupeFlow
import LoupeProtocols
import NIOCore
import NIOHTTP1
import NIOSSL

/// Step 2b, `<…/TCP/HTTPS>`: HTTPS interception (see `TLSIntercept`). The ClientHello the
/// client's `FirstBytesHandler` holds is released into the TLS server handler only once the
/// destination's handshake has told which protocol to offer.
extension ProxyConnection {
    /// Why interception cannot run for an HTTPS port (no node CA), or nil.
    func tlsInterceptionUnavailable() -> String? {
        do {
            _ = try environment.tls.nodeCA()
            return nil
        } catch {
            environment.count(.httpsInterceptionUnavailable)
            return "HTTPS interception unavailable (\(error))"
        }
    }

    /// Step 1: the destination's handshake, with the pod's SNI and the protocols it offered.
    /// What the destination sends after it is held until HTTP is installed.
    func interceptTLS(serverName: String, alpn: [String]) {
        guard let upstream else { return close() }
        context.scheme = "https"
        environment.count(.connectionsHTTPSIntercepted)
        do {
            let ssl = try NIOSSLClientHandler(context: try environment.tls.upstreamContext(alpn: alpn), serverHostname: serverName)
            let us = upstream.pipeline.syncOperations
            let gate = try us.handler(type: FirstBytesHandler.self)
            try us.addHandlers([ssl, TLSIntercept.HandshakeWatcher(connection: self, side: .server),
                                FirstBytesHandler(connection: self, side: .server)], position: .after(gate))
            us.removeHandler(gate, promise: nil)
        } catch {
            record(.error, "HTTPS interception of \(serverName) failed to start: \(error)")
            close()
        }
    }

    /// A side's handshake finished (or failed).
    func handshakeDone(_ side: Side, _ result: Result<String?, Error>) {
        let result: ConnectionStateMachine.HandshakeResult = switch result {
        case .success(let proto): .success(proto)
        case .failure(let error): .failure(TLSIntercept.describe(error))
        }
        if side == .server { upstreamHandshakeDone(result) } else { podHandshakeDone(result) }
    }

    /// Step 2: the pod's handshake with the minted leaf, offering the destination's choice (or,
    /// for a refused destination, nothing: the pod is told why over HTTP/1.1).
    private func upstreamHandshakeDone(_ result: ConnectionStateMachine.HandshakeResult) {
        guard case .handshakeWithPod(let serverName, let proto, let refused) = machine.upstreamHandshakeDone(result) else { return }
        if let refused {
            environment.count(.httpsUpstreamRefused)
            record(.error, "HTTPS destination \(serverName) refused: \(refused)")
            upstream?.close(promise: nil)
        }
        let ds = downstream.pipeline.syncOperations
        do {
            let ctx = try environment.tls.downstreamContext(serverName: serverName, alpn: refused == nil ? proto : nil)
            let hello = try ds.handler(type: FirstBytesHandler.self)
            try ds.addHandlers([NIOSSLServerHandler(context: ctx), TLSIntercept.HandshakeWatcher(connection: self, side: .client)],
                               position: .after(hello))
            ds.removeHandler(hello, promise: nil) // the held ClientHello goes into the TLS server
        } catch {
            record(.error, "HTTPS interception of \(serverName): cannot serve the pod a certificate: \(error)")
            close()
        }
    }

    /// Step 3: HTTP inside, or the 502 for a refused destination.
    private func podHandshakeDone(_ result: ConnectionStateMachine.HandshakeResult) {
        let action = machine.podHandshakeDone(result)
        let ds = downstream.pipeline.syncOperations
        guard let anchor = try? ds.handler(type: TLSIntercept.HandshakeWatcher.self) else { return close() }
        do {
            switch action {
            case .none:
                return
            case .fail(let serverName, let reason):
                // Typically a pod that does not trust the node CA (alert unknown_ca).
                environment.count(.httpsPodHandshakeFailed)
                record(.error, "HTTPS handshake with the pod for \(serverName) failed: \(reason)")
                close()
            case .badGateway(let reason):
                try ds.addHandlers([ByteToMessageHandler(HTTP1RequestDecoder(maxHeaderBytes: environment.configuration.maxHeaderBytes)),
                                    TLSIntercept.BadGateway(reason: reason)], position: .after(anchor))
            case .install(let what):
                guard let upstream else { return close() }
                let us = upstream.pipeline.syncOperations
                let hold = try us.handler(type: FirstBytesHandler.self)
                try install(what, ds, after: anchor, us, after: hold)
                // What the destination sent meanwhile goes into what was just installed.
                us.removeHandler(hold, promise: nil)
            }
        } catch {
            close()
        }
    }
}
