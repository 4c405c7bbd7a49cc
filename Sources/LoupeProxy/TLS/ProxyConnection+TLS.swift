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
    /// What the destination sends after it is held until HTTP is installed. A pod offering h2
    /// may not need one (`HTTP2Intercept.Upstream`, `Pool.choose`): its destination already has
    /// a shared HTTP/2 connection from here (same source, name) — the socket connected for it
    /// is then closed unused and the pod offered h2 — or one is being made, whose outcome it
    /// waits for (its own socket kept for the case it cannot share).
    func interceptTLS(serverName: String, alpn: [String]) {
        context.scheme = "https"
        environment.count(.connectionsHTTPSIntercepted)
        let sharing = environment.configuration.upstreamSharing
        guard alpn.contains("h2"), sharing > 1, let destination = downstream.localAddress else {
            return handshakeUpstream(serverName: serverName, alpn: alpn)
        }
        let key = HTTP2Intercept.Upstream.Key(source: upstreamSourceAddress, destination: destination, serverName: serverName)
        sharedUpstreamKey = key
        let choice = environment.http2Upstreams.pool(on: downstream.eventLoop).choose(key, maxSessions: sharing) { link in
            // The handshake waited for settled; this connection may have ended meanwhile.
            guard case .tlsHandshake = self.machine.state else { return }
            if let link, link.acceptsSession {
                link.reserve()
                self.share(link)
            } else {
                self.handshakeUpstream(serverName: serverName, alpn: alpn)
            }
        }
        switch choice {
        case .share(let link): share(link)
        case .wait: break
        case .handshake(let h):
            upstreamHandshakeInFlight = h
            handshakeUpstream(serverName: serverName, alpn: alpn)
        }
    }

    /// HTTP/2 over a shared connection (reserved for this one): no handshake of its own.
    private func share(_ link: HTTP2Intercept.Upstream) {
        environment.count(.httpsUpstreamShared)
        reservedUpstream = link
        closeUnusedUpstream()
        upstreamHandshakeDone(.success("h2"))
    }

    private func handshakeUpstream(serverName: String, alpn: [String]) {
        withUpstream { self.startUpstreamHandshake(serverName: serverName, alpn: alpn) }
    }

    private func startUpstreamHandshake(serverName: String, alpn: [String]) {
        guard let upstream else { return close() }
        do {
            let ssl = try NIOSSLClientHandler(context: try environment.tls.upstreamContext(alpn: alpn), serverHostname: serverName)
            let us = upstream.pipeline.syncOperations
            let gate = try us.handler(type: FirstBytesHandler.self)
            try us.addHandlers([TLSIntercept.FlushPerReadBatch(), ssl, TLSIntercept.HandshakeWatcher(connection: self, side: .server),
                                FirstBytesHandler(connection: self, side: .server)], position: .after(gate))
            us.removeHandler(gate, promise: nil)
        } catch {
            record(.error, "HTTPS interception of \(serverName) failed to start: \(error)")
            close()
        }
    }

    /// This connection's handshake with the destination, which others may be waiting for, is
    /// done: with h2 its connection becomes a shared `Upstream` (reserved for this one, offered
    /// to the waiting ones); otherwise they make their own.
    func settleSharedHandshake(negotiated proto: String?) {
        guard let h = upstreamHandshakeInFlight, let key = sharedUpstreamKey else { return }
        upstreamHandshakeInFlight = nil
        var link: HTTP2Intercept.Upstream?
        if proto == "h2", let ops = upstream?.pipeline.syncOperations, let hold = try? ops.handler(type: FirstBytesHandler.self),
           let shared = try? makeHTTP2Upstream(after: hold) {
            ops.removeHandler(hold, promise: nil) // what it held goes into HTTP/2
            shared.reserve()
            reservedUpstream = shared
            link = shared
        }
        environment.http2Upstreams.pool(on: downstream.eventLoop).settled(h, key: key, link: link)
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
        if case .success(let proto) = result { settleSharedHandshake(negotiated: proto) } else { settleSharedHandshake(negotiated: nil) }
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
            try ds.addHandlers([TLSIntercept.FlushPerReadBatch(), NIOSSLServerHandler(context: ctx),
                                TLSIntercept.HandshakeWatcher(connection: self, side: .client)],
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
            case .install(.http2) where reservedUpstream != nil:
                let link = reservedUpstream!
                reservedUpstream = nil
                try installHTTP2(ds, after: anchor, over: link, reserved: true)
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
