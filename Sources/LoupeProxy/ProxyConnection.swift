import LoupeFlow
import LoupePolicy
import LoupeProtocols
import NIOCore
import NIOHTTP1
import NIOPosix

/// One proxied connection: downstream (the pod's socket, accepted) and upstream (our socket to
/// the original destination). Steps, top-down:
///   0. policy: a peer not allowed on this port is reset here (DROPPED flow);
///   1. connect upstream (marked, so it is never redirected again), reads held until then;
///   2. detect the protocol on the client's first bytes (a server that speaks first → opaque);
///   3. HTTP/1 → `HTTP1Intercept` handlers on both sides (per-request policy verdicts);
///      anything else → `RelayHandler` pair, unless HTTP rules apply (then refused);
///   4. opaque (raw TCP, TLS after its hello, tunnels): handed to the kernel's sockmap splice
///      once the proxy holds nothing more (`ProxyConnection+Splice`), else relayed here;
///   5. on close, the opaque connection's L3_L4 flow.
/// All state lives on the downstream channel's event loop; the upstream uses the same loop.
/// Handlers hold the connection strongly: NIO may still call them (leftover bytes, EOF
/// errors from a decoder being removed) after both close futures fired. The cycle through
/// the channels' pipelines is broken when the pipelines are torn down on close.
protocol FramingConfigurable { var automaticallySetFramingHeaders: Bool { get set } }
extension HTTPRequestEncoder.Configuration: FramingConfigurable {}
extension HTTPResponseEncoder.Configuration: FramingConfigurable {}

final class ProxyConnection {
    enum Mode { case connecting, detecting, tlsHandshake, http1, http2, opaque, closed }

    /// Reads on both sockets start at 512 bytes and grow with what arrives (up to 64 KiB, as
    /// NIO's default). Each channel keeps its last read buffer for reuse: at NIO's default 2 KiB
    /// start, an idle connection held two of them.
    static let reads = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65_536)

    let downstream: Channel
    var upstream: Channel?
    let environment: ProxyEnvironment
    var context: ConnectionContext
    var mode: Mode = .connecting
    var http = HTTP1Intercept.StateMachine()
    /// DNS over TCP: queries waiting for their answers, by id.
    var dnsPending: [UInt16: (DNSMessage, UInt64)] = [:]
    var bytesFromClient: UInt64 = 0
    var bytesFromServer: UInt64 = 0
    /// HTTPS interception refused the destination (verification failed): the pod's side stays
    /// open for the 502.
    var upstreamRefused = false
    /// What turned this HTTP/1 connection into an opaque tunnel (`Upgrade: h2c`, `CONNECT`).
    var tunnel: String?
    /// HTTP/2: the intercepted connection's session (streams, GOAWAY, drain).
    var http2: HTTP2Intercept.Session?
    var detectHandler: DetectHandler?
    var gate: UpstreamGate?
    /// HTTPS interception: holds what the destination sends after its handshake (an HTTP/2
    /// server's SETTINGS) until the pod's handshake is done and HTTP is installed.
    var tlsHold: UpstreamGate?
    /// Sockmap splice: asked for (reads stop until it is decided), and its state once the kernel
    /// carries the bytes.
    var spliceRequested = false
    var splice: SpliceState?
    /// Sides (true: the pod's) whose last read before the splice is still to come.
    var spliceDrainReads: Set<Bool> = []
    /// A side sent FIN before the splice was decided: the connection stays in userspace.
    var sawInputClosed = false

    init(downstream: Channel, environment: ProxyEnvironment) {
        self.downstream = downstream
        self.environment = environment
        let snap = environment.snapshot
        let local = downstream.localAddress
        let remote = downstream.remoteAddress
        var c = ConnectionContext(clientIP: remote?.ipAddress ?? "?", clientPort: remote?.port ?? 0,
                                  serverIP: local?.ipAddress ?? "?", serverPort: local?.port ?? 0,
                                  snapshot: snap, nodeName: environment.configuration.nodeName)
        c.serverNames = environment.fqdn.names(client: c.clientIP, address: c.serverIP)
        context = c
        decision = Self.decide(context, snap)
        decisionGeneration = snap.generation
    }

    private var decision: PolicyEngine.ConnectionDecision
    private var decisionGeneration: UInt64

    /// The policy decision for this connection, recomputed when the policy set or inventory
    /// changed (so a reload applies to requests on connections that are already open).
    func currentDecision() -> PolicyEngine.ConnectionDecision {
        let generation = environment.generation
        if generation != decisionGeneration {
            let snap = environment.snapshot
            decision = Self.decide(context, snap)
            decisionGeneration = snap.generation
        }
        return decision
    }

    static func decide(_ c: ConnectionContext, _ snap: ProxyEnvironment.Snapshot) -> PolicyEngine.ConnectionDecision {
        snap.policy.decide(client: snap.pod(withIP: c.clientIP), server: snap.pod(withIP: c.serverIP),
                           port: UInt16(clamping: c.serverPort))
    }

    /// Step 1. Called from the child channel initializer.
    func start() {
        environment.count("connections_accepted")
        if decision.deniesConnection {
            // L3/L4 deny: the peer may not reach this port at all.
            environment.count("connections_policy_denied")
            environment.record(context.flow(verdict: .dropped, type: .l3l4, l7: nil, reply: false,
                                            summary: "TCP connection denied by \(decision.deniedDirection) policy",
                                            dropReason: "POLICY_DENIED"))
            mode = .closed
            reset(downstream)
            return
        }
        let detect = DetectHandler(connection: self)
        detectHandler = detect
        try? downstream.pipeline.syncOperations.addHandlers([detect, HalfCloseWatcher(connection: self, client: true)])
        downstream.closeFuture.whenComplete { _ in self.downstreamClosed() }

        guard let target = downstream.localAddress else { downstream.close(promise: nil); return }
        let gate = UpstreamGate(connection: self)
        self.gate = gate
        let cfg = environment.configuration
        ClientBootstrap(group: downstream.eventLoop)
            .channelOption(ChannelOptions.recvAllocator, value: Self.reads)
            .channelOption(ChannelOptions.Types.SocketOption(level: 1, name: 36), value: Int(cfg.upstreamMark)) // SO_MARK
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .connectTimeout(.milliseconds(cfg.connectTimeoutMilliseconds))
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandlers([gate, HalfCloseWatcher(connection: self, client: false)])
                }
            }
            .connect(to: target)
            .whenComplete { result in
                switch result {
                case .success(let ch): self.upstreamConnected(ch)
                case .failure(let error): self.upstreamFailed(error)
                }
            }
    }

    private func upstreamConnected(_ channel: Channel) {
        guard mode == .connecting else { channel.close(promise: nil); return }
        upstream = channel
        mode = .detecting
        channel.closeFuture.whenComplete { _ in self.upstreamClosed() }
        downstream.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
    }

    private func upstreamFailed(_ error: Error) {
        environment.count("upstream_connect_errors")
        if mode == .connecting {
            mode = .closed
            environment.record(context.flow(verdict: .error, type: .l3l4, l7: nil, reply: false,
                                            summary: "TCP upstream connect to \(context.authorityFallback) failed: \(error)"))
        }
        // Reset rather than close, so the client sees a refusal as it would without the proxy.
        reset(downstream)
    }

    /// Closes with RST (SO_LINGER 0): the client sees a refusal, not an empty reply.
    func reset(_ channel: Channel) {
        if let options = channel as? SocketOptionProvider {
            options.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in channel.close(promise: nil) }
        } else {
            channel.close(promise: nil)
        }
    }

    /// Step 2 result: the client's first bytes decided the protocol (for TLS: with what its
    /// ClientHello says).
    func detected(_ decision: ProtocolDetector.Decision, hello: TLSClientHello.Result? = nil) {
        guard mode == .detecting, let upstream, let detectHandler, let gate else { return }
        // A DNS port (by annotation or by DNS policy rules) carries DNS over TCP, whatever
        // its first bytes look like.
        var decision = carriesDNS ? .opaque : decision
        // HTTP/2 streams are checked one by one when intercepted; relayed opaque they could not be.
        let interceptsHTTP2 = decision == .http2 && environment.configuration.interceptHTTP2
        // So are HTTPS requests once their TLS is terminated (interceptTLS refuses if it cannot).
        let interceptsHTTPS = decision == .tls && context.rule?.l7 == .https
        if decision != .http1 && !interceptsHTTP2 && !interceptsHTTPS && currentDecision().requiresHTTP {
            return refuseNonHTTP("TCP connection denied: not HTTP on a port with HTTP policy rules")
        }
        if decision == .tls, let hello {
            tlsHelloSeen(hello)
            if interceptsHTTPS {
                if case .hello(let h) = hello {
                    if interceptTLS(h, detectHandler: detectHandler, gate: gate) {
                        self.detectHandler = nil
                        self.gate = nil
                        return
                    }
                } else if currentDecision().requiresHTTP {
                    // An unreadable hello cannot be intercepted; relayed, it would bypass the rules.
                    return refuseNonHTTP("TLS connection denied: its ClientHello cannot be intercepted and HTTP policy rules apply")
                }
            }
        } else if context.rule?.l7 == .tls {
            // A TLS visibility port that carries something else: relayed as it is, and said so.
            environment.count("tls_port_not_tls")
            environment.record(context.flow(verdict: .forwarded, type: .l3l4, l7: nil, reply: false,
                                            summary: "not TLS on a TLS visibility port (first bytes: \(decision)): relayed opaque"))
            decision = .opaque
        }
        let ds = downstream.pipeline.syncOperations
        let us = upstream.pipeline.syncOperations
        do {
            switch decision {
            case .http1:
                try installHTTP1(ds, after: detectHandler, us, after: gate)
            case .http2 where !carriesDNS && environment.configuration.interceptHTTP2:
                mode = .http2
                environment.count("connections_http2")
                http2 = try HTTP2Intercept.install(connection: self, downstream: ds, after: detectHandler,
                                                   upstream: upstream, us: us, after: gate)
            default:
                mode = .opaque
                let (a, b) = RelayHandler.pair(connection: self)
                try ds.addHandler(a, position: .after(detectHandler))
                try us.addHandler(b, position: .after(gate))
                if carriesDNS {
                    // DNS over TCP: frames inspected on their way through the relay.
                    environment.count("connections_dns_tcp")
                    try ds.addHandler(DNSStreamHandler(connection: self, fromClient: true), position: .after(detectHandler))
                    try us.addHandler(DNSStreamHandler(connection: self, fromClient: false), position: .after(gate))
                } else {
                    environment.count("connections_opaque")
                }
            }
        } catch {
            downstream.close(promise: nil)
            return
        }
        // Removing the one-shot handlers hands their buffered bytes to what was just installed.
        ds.removeHandler(detectHandler, promise: nil)
        us.removeHandler(gate, promise: nil)
        self.detectHandler = nil
        self.gate = nil
        if mode == .opaque { spliceWhenDrained() }
    }

    /// A port with HTTP rules carries HTTP only (anything else would bypass the rules): reset,
    /// with a DROPPED flow that says why.
    func refuseNonHTTP(_ summary: String) {
        environment.count("connections_policy_denied")
        environment.record(context.flow(verdict: .dropped, type: .l3l4, l7: nil, reply: false, summary: summary,
                                        dropReason: "POLICY_DENIED"))
        mode = .closed
        upstream?.close(promise: nil)
        reset(downstream)
    }

    /// The ClientHello of a TLS connection (which is then relayed unchanged): a flow with the
    /// server name and ALPN; later flows of the connection carry the name in destination_names.
    private func tlsHelloSeen(_ result: TLSClientHello.Result) {
        switch result {
        case .hello(let h):
            environment.count("tls_client_hellos")
            tlsServerName = h.serverName ?? ""
            if let sni = h.serverName, !context.serverNames.contains(sni) { context.serverNames.insert(sni, at: 0) }
            var summary = "TLS ClientHello " + (h.serverName.map { "SNI=\($0)" } ?? "without SNI")
            if !h.alpn.isEmpty { summary += " ALPN=" + h.alpn.joined(separator: ",") }
            environment.record(context.flow(verdict: .forwarded, type: .l3l4, l7: nil, reply: false, summary: summary))
        case .notTLS(let why), .malformed(let why):
            environment.count("tls_client_hellos_unreadable")
            environment.record(context.flow(verdict: .forwarded, type: .l3l4, l7: nil, reply: false,
                                            summary: "TLS ClientHello unreadable (\(why)): relayed opaque"))
        case .needMore:
            break
        }
    }

    /// The SNI of a relayed TLS connection ("" without SNI), for its closing flow.
    var tlsServerName: String?

    /// Step 3, HTTP/1: our request decoder (`HTTP1RequestDecoder`: methods by the grammar) and
    /// NIOHTTP1's encoders and response decoder, and the intercepting handlers (per-request
    /// policy and flows), after the given handlers.
    func installHTTP1(_ ds: ChannelPipeline.SynchronousOperations, after downstreamAnchor: ChannelHandler,
                      _ us: ChannelPipeline.SynchronousOperations, after upstreamAnchor: ChannelHandler) throws {
        mode = .http1
        environment.count("connections_http1")
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = environment.configuration.maxHeaderBytes
        limits.maxHeaderFieldSize = environment.configuration.maxHeaderBytes
        let down = HTTP1Intercept.DownstreamHandler(connection: self)
        let up = HTTP1Intercept.UpstreamHandler(connection: self)
        down.partner = up
        up.partner = down
        try ds.addHandlers([
            ByteToMessageHandler(HTTP1RequestDecoder(maxHeaderBytes: environment.configuration.maxHeaderBytes)),
            HTTPResponseEncoder(configuration: Self.keepFraming(HTTPResponseEncoder.Configuration())),
            down,
        ], position: .after(downstreamAnchor))
        try us.addHandlers([
            HTTPRequestEncoder(configuration: Self.keepFraming(HTTPRequestEncoder.Configuration())),
            ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes,
                                                     informationalResponseStrategy: .forward,
                                                     limitConfiguration: limits)),
            up,
        ], position: .after(upstreamAnchor))
    }

    /// A transparent proxy keeps each message's framing as the peer wrote it: NIO's encoders
    /// would otherwise add `transfer-encoding: chunked` to a body-less POST (and the server then
    /// reads the terminating chunk as a next request).
    static func keepFraming<C>(_ c: C) -> C where C: FramingConfigurable {
        var c = c
        c.automaticallySetFramingHeaders = false
        return c
    }

    /// The connection is DNS over TCP: its port's visibility rule says DNS, or DNS rules apply.
    var carriesDNS: Bool {
        if context.rule?.l7 == .dns { return true }
        return currentDecision().hasDNSRules
    }

    /// A server that speaks before the client is not HTTP: relay it.
    func upstreamSpokeFirst() {
        if mode == .detecting { detected(.opaque) }
    }

    /// An HTTP/2 server's SETTINGS came before the client's preface: keep waiting for the client
    /// (it speaks without waiting for the server), but not forever.
    func upstreamSentHTTP2Preface() {
        guard mode == .detecting else { return }
        downstream.eventLoop.scheduleTask(in: .seconds(Self.http2PrefaceWaitSeconds)) {
            if self.mode == .detecting { self.detected(.opaque) }
        }
    }

    static let http2PrefaceWaitSeconds: Int64 = 5

    /// The HTTP exchange asked for a tunnel (101 Switching Protocols, CONNECT 2xx): from now on
    /// both directions are relayed as opaque bytes. Codecs are removed after the relay is in
    /// place so their leftover bytes flow into it.
    func switchToTunnel(downstreamHTTP: ChannelHandler, upstreamHTTP: ChannelHandler, after opening: String) {
        guard mode == .http1, let upstream else { return }
        mode = .opaque
        tunnel = opening
        environment.count("connections_tunneled")
        let ds = downstream.pipeline.syncOperations
        let us = upstream.pipeline.syncOperations
        let (a, b) = RelayHandler.pair(connection: self)
        do {
            try ds.addHandler(a)
            try us.addHandler(b)
            let downstreamHandlers = [try ds.context(handlerType: ByteToMessageHandler<HTTP1RequestDecoder>.self),
                                      try ds.context(handlerType: HTTPResponseEncoder.self),
                                      try ds.context(handler: downstreamHTTP)]
            let upstreamHandlers = [try us.context(handlerType: ByteToMessageHandler<HTTPResponseDecoder>.self),
                                    try us.context(handlerType: HTTPRequestEncoder.self),
                                    try us.context(handler: upstreamHTTP)]
            for c in downstreamHandlers { ds.removeHandler(context: c, promise: nil) }
            for c in upstreamHandlers { us.removeHandler(context: c, promise: nil) }
        } catch {
            close()
            return
        }
        if !spliceWhenDrained() {
            downstream.read()
            upstream.read()
        }
    }

    /// One side sent FIN: pass it on (after everything queued toward the peer has been written),
    /// as a direct TCP connection would, so half-close protocols and HTTP/1.0-style clients
    /// that shut their write side after the request still get their answer. NIO turns the
    /// second half-close of a socket into a full close.
    func inputClosed(fromClient: Bool) {
        if splice != nil { return splicedInputClosed(fromClient: fromClient) }
        sawInputClosed = true
        // A client that ends before its bytes decided the protocol: relay what it sent.
        if fromClient && mode == .detecting { detected(.opaque) }
        let target = fromClient ? upstream : downstream
        guard let target else {
            if fromClient { close() } // no upstream yet: nothing to wait for
            return
        }
        let pending = (fromClient ? lastWriteToServer : lastWriteToClient) ?? target.eventLoop.makeSucceededVoidFuture()
        pending.whenComplete { _ in
            target.close(mode: .output, promise: nil)
            // A peer that never closes its side must not hold the sockets forever.
            let deadline = target.eventLoop.scheduleTask(in: .seconds(Self.halfCloseGraceSeconds)) { target.close(promise: nil) }
            target.closeFuture.whenComplete { _ in deadline.cancel() }
        }
    }

    static let halfCloseGraceSeconds: Int64 = 60

    func close() {
        downstream.close(promise: nil)
        upstream?.close(promise: nil)
    }

    /// The last write queued toward each side: a peer's close waits for it, so no tail is lost.
    var lastWriteToClient: EventLoopFuture<Void>?
    var lastWriteToServer: EventLoopFuture<Void>?

    private func downstreamClosed() {
        if splice != nil {
            splicedSideClosed(fromClient: true)
            return finish()
        }
        if let upstream {
            (lastWriteToServer ?? upstream.eventLoop.makeSucceededVoidFuture()).whenComplete { _ in upstream.close(promise: nil) }
        }
        finish()
    }

    private func upstreamClosed() {
        if upstreamRefused { return } // the pod is being told why (502), on its own connection
        if splice != nil {
            splicedSideClosed(fromClient: false)
            return finish()
        }
        if let http2 {
            http2.upstreamClosed() // the client's streams drain first
            finish()
            return
        }
        let ds = downstream
        (lastWriteToClient ?? ds.eventLoop.makeSucceededVoidFuture()).whenComplete { _ in ds.close(promise: nil) }
        finish()
    }

    /// What an opaque connection is, for its closing flow.
    var opaqueDescription: String {
        var what = "TCP opaque connection"
        if let sni = tlsServerName { what = sni.isEmpty ? "TLS connection without SNI" : "TLS connection to \(sni)" }
        if let tunnel {
            what = "TCP tunnel after \(tunnel)"
            // The HTTP/1 → HTTP/2 upgrade is not intercepted: say so rather than look complete.
            if tunnel.lowercased() == "upgrade: h2c" { what += " (HTTP/2 streams inside not inspected)" }
        }
        return what
    }

    private var finished = false
    private func finish() {
        guard !finished else { return }
        finished = true
        // A spliced connection's flow is recorded once both sockets closed (spliceEnded).
        if mode == .opaque && !carriesDNS && splice == nil {
            environment.record(context.flow(
                verdict: .forwarded, type: .l3l4, l7: nil, reply: false,
                summary: "\(opaqueDescription) closed: \(bytesFromClient) bytes from client, \(bytesFromServer) bytes from server"))
        }
        mode = .closed
        http2 = nil // the session's handlers keep it while streams drain; this breaks the cycle
    }
}
