import LoupeFlow
import LoupeProtocols
import NIOCore
import NIOHTTP1
import NIOSSL

/// Step 2b, `<…/TCP/HTTPS>`: HTTPS interception (see `TLSIntercept`). The ClientHello the
/// detect handler holds is released into the TLS server handler only once the destination's
/// handshake has told which protocol to offer.
extension ProxyConnection {
    /// Starts interception; false when it cannot (no SNI, no node CA): the connection is then
    /// relayed with TLS visibility only, and a flow says why — unless HTTP policy rules apply
    /// to the port, which encrypted bytes would bypass: then it is refused (true, closed).
    func interceptTLS(_ hello: TLSClientHello, detectHandler: DetectHandler, gate: UpstreamGate) -> Bool {
        guard let upstream else { return false }
        if let why = interceptionUnavailable(hello) {
            if currentDecision().requiresHTTP {
                refuseNonHTTP("\(why): connection denied, HTTP policy rules apply to this port")
                return true
            }
            recordTLSNote("\(why): relayed with TLS visibility only", verdict: .forwarded)
            return false
        }
        let serverName = hello.serverName! // checked by interceptionUnavailable
        mode = .tlsHandshake
        context.scheme = "https"
        environment.count("connections_https_intercepted")
        // Offer the destination what the pod offered (that the proxy speaks).
        let h2 = environment.configuration.interceptHTTP2
        let alpn = hello.alpn.filter { ($0 == "h2" && h2) || $0 == "http/1.1" }
        do {
            let ssl = try NIOSSLClientHandler(context: try environment.tls.upstreamContext(alpn: alpn), serverHostname: serverName)
            let watcher = TLSIntercept.HandshakeWatcher { result in
                self.upstreamHandshakeDone(result, serverName: serverName, detectHandler: detectHandler)
            }
            let hold = UpstreamGate(connection: self)
            tlsHold = hold
            let us = upstream.pipeline.syncOperations
            try us.addHandlers([ssl, watcher, hold], position: .after(gate))
            us.removeHandler(gate, promise: nil)
        } catch {
            recordTLSNote("HTTPS interception of \(serverName) failed to start: \(error)", verdict: .error)
            close()
        }
        return true
    }

    /// Why this hello cannot be intercepted (no SNI to mint a leaf for, no node CA), or nil.
    private func interceptionUnavailable(_ hello: TLSClientHello) -> String? {
        guard hello.serverName != nil else { return "HTTPS interception needs SNI" }
        do {
            _ = try environment.tls.nodeCA()
            return nil
        } catch {
            environment.count("https_interception_unavailable")
            return "HTTPS interception unavailable (\(error))"
        }
    }

    /// Step 1 done: the destination's handshake, verified (or refused).
    private func upstreamHandshakeDone(_ result: Result<String?, Error>, serverName: String, detectHandler: DetectHandler) {
        guard mode == .tlsHandshake else { return }
        switch result {
        case .success(let proto):
            downstreamHandshake(serverName: serverName, offering: proto, refused: nil, detectHandler: detectHandler)
        case .failure(let error):
            let reason = TLSIntercept.describe(error)
            environment.count("https_upstream_refused")
            recordTLSNote("HTTPS destination \(serverName) refused: \(reason)", verdict: .error)
            upstreamRefused = true
            upstream?.close(promise: nil)
            downstreamHandshake(serverName: serverName, offering: nil, refused: reason, detectHandler: detectHandler)
        }
    }

    /// Step 2: the pod's handshake with the minted leaf, offering the destination's choice.
    private func downstreamHandshake(serverName: String, offering proto: String?, refused: String?, detectHandler: DetectHandler) {
        let ds = downstream.pipeline.syncOperations
        do {
            let ctx = try environment.tls.downstreamContext(serverName: serverName, alpn: refused == nil ? proto : nil)
            let ssl = NIOSSLServerHandler(context: ctx)
            let watcher = TLSIntercept.HandshakeWatcher { result in
                self.downstreamHandshakeDone(result, serverName: serverName, refused: refused)
            }
            try ds.addHandlers([ssl, watcher], position: .after(detectHandler))
            ds.removeHandler(detectHandler, promise: nil) // the held ClientHello goes into the TLS server
        } catch {
            recordTLSNote("HTTPS interception of \(serverName): cannot serve the pod a certificate: \(error)", verdict: .error)
            close()
        }
    }

    /// Step 3: HTTP inside, or the 502 for a refused destination.
    private func downstreamHandshakeDone(_ result: Result<String?, Error>, serverName: String, refused: String?) {
        guard mode == .tlsHandshake else { return }
        let ds = downstream.pipeline.syncOperations
        guard case .success(let proto) = result, let anchor = try? ds.context(handlerType: TLSIntercept.HandshakeWatcher.self).handler else {
            if case .failure(let error) = result {
                // Typically a pod that does not trust the node CA (alert unknown_ca).
                environment.count("https_pod_handshake_failed")
                recordTLSNote("HTTPS handshake with the pod for \(serverName) failed: \(TLSIntercept.describe(error))",
                              verdict: .error)
            }
            mode = .closed
            close()
            return
        }
        do {
            if let refused {
                mode = .closed
                try ds.addHandlers([ByteToMessageHandler(HTTP1RequestDecoder(maxHeaderBytes: environment.configuration.maxHeaderBytes)),
                                    HTTPResponseEncoder(),
                                    TLSIntercept.BadGateway(reason: refused)], position: .after(anchor))
                return
            }
            guard let upstream, let hold = tlsHold else { return close() }
            let us = upstream.pipeline.syncOperations
            if proto == "h2" {
                mode = .http2
                environment.count("connections_http2")
                http2 = try HTTP2Intercept.install(connection: self, downstream: ds, after: anchor,
                                                   upstream: upstream, us: us, after: hold)
            } else {
                try installHTTP1(ds, after: anchor, us, after: hold)
            }
            // What the destination sent meanwhile goes into what was just installed.
            us.removeHandler(hold, promise: nil)
            tlsHold = nil
        } catch {
            close()
        }
    }

    private func recordTLSNote(_ summary: String, verdict: Verdict) {
        environment.record(context.flow(verdict: verdict, type: .l3l4, l7: nil, reply: false, summary: summary))
    }
}
