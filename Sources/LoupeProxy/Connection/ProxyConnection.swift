import LoupeFlow
import LoupePolicy
import LoupeProtocols
import NIOCore
import NIOPosix

/// One proxied connection: downstream (the pod's socket, accepted) and upstream (our socket to
/// the original destination). `ConnectionStateMachine` decides; this carries its actions out
/// (pipelines, sockets, flows, counters). Steps, top-down:
///   0. policy: a peer not allowed on this port is reset here (DROPPED flow);
///   1. connect upstream (marked, so it is never redirected again), reads held until then;
///   2. detect the protocol on the client's first bytes (`FirstBytesHandler`; a server that
///      speaks first → opaque);
///   3. HTTP/1 → `HTTP1Intercept` handlers on both sides (per-request policy verdicts);
///      HTTP/2 → `HTTP2Intercept`; HTTPS on an HTTPS port → `TLSIntercept` then either;
///      anything else → `RelayHandler` pair, unless HTTP rules apply (then refused);
///   4. opaque (raw TCP, TLS after its hello, tunnels): handed to the kernel's sockmap splice
///      once the proxy holds nothing more (`ProxyConnection+Splice`), else relayed here;
///   5. on close, the opaque connection's L3_L4 flow.
/// Handlers report events (bytes relayed, writes queued, FIN, protocol decided) and never
/// touch the connection's state. Everything runs on the downstream channel's event loop (the
/// upstream uses the same loop): callbacks are registered isolated to it. Handlers hold the
/// connection strongly: NIO may still call them (leftover bytes, EOF errors from a decoder being
/// removed) after both close futures fired; the cycle through the pipelines is broken when the
/// pipelines are torn down on close.
final class ProxyConnection {
    typealias Side = ConnectionStateMachine.Side

    /// Reads on both sockets start at 512 bytes and grow with what arrives (up to 64 KiB, as
    /// NIO's default). Each channel keeps its last read buffer for reuse: at NIO's default 2 KiB
    /// start, an idle connection held two of them.
    static let reads = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65_536)

    /// The options of both sockets (and the upstream's mark), set synchronously in the channel
    /// initializers, before the channel is registered: as bootstrap options each one is applied
    /// through a chain of futures — about 170 allocations per proxied connection.
    static func configure(_ channel: Channel, mark: Int32? = nil) throws {
        guard let options = channel.syncOptions else { throw ChannelError.operationUnsupported }
        try options.setOption(ChannelOptions.recvAllocator, value: reads)
        // TCP_NODELAY comes from NIO's bootstraps: the client's sets it, the server's sets it on
        // the listener and accepted sockets inherit it. (`socketOption(.tcp_nodelay)` here set
        // SOL_SOCKET option 1 — SO_DEBUG — on every socket instead.)
        try options.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
        if let mark { try options.setOption(ChannelOptions.Types.SocketOption(level: 1, name: 36), value: Int(mark)) } // SO_MARK
    }

    let downstream: Channel
    private(set) var upstream: Channel?
    let environment: ProxyEnvironment
    var context: ConnectionContext
    var machine = ConnectionStateMachine()
    private var decision: DecisionCache<PolicyEngine.ConnectionDecision>
    /// Bytes were queued toward each side by this connection's handlers: a peer's close waits
    /// for them (`lastWrite`), so no tail is lost.
    private var wroteToClient = false
    private var wroteToServer = false
    /// The source address the upstream connection binds (`--upstream-source pod`), nil: the node's.
    private(set) var upstreamSourceAddress: SocketAddress?
    /// HTTPS whose pod offered h2: the shared upstream connections it may use or add to.
    var sharedUpstreamKey: HTTP2Intercept.Upstream.Key?
    /// A shared upstream connection reserved for this connection while its pod handshakes.
    var reservedUpstream: HTTP2Intercept.Upstream?
    /// This connection's handshake with the destination, which others sharing its key wait for.
    var upstreamHandshakeInFlight: HTTP2Intercept.Pool.Handshake?

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
        decision = DecisionCache(Self.decide(c, snap), generation: snap.generation)
    }

    var loop: NIOIsolatedEventLoop { downstream.eventLoop.assumeIsolated() }

    /// The policy decision for this connection, recomputed when the policy set or inventory
    /// changed (so a reload applies to requests on connections that are already open).
    func currentDecision() -> PolicyEngine.ConnectionDecision {
        decision.get(generation: environment.generation) {
            let snap = environment.snapshot
            return (Self.decide(context, snap), snap.generation)
        }
    }

    static func decide(_ c: ConnectionContext, _ snap: ProxyEnvironment.Snapshot) -> PolicyEngine.ConnectionDecision {
        snap.policy.decide(client: snap.pod(withIP: c.clientIP), server: snap.pod(withIP: c.serverIP),
                           port: UInt16(clamping: c.serverPort))
    }

    /// What the state machine needs to know once the protocol is known; `tls`: a ClientHello
    /// naming a server (only then is the node CA's availability looked at, and counted).
    func facts(tls: Bool = false) -> ConnectionStateMachine.Facts {
        let d = currentDecision()
        let cfg = environment.configuration
        let visibility = context.rule?.l7
        return ConnectionStateMachine.Facts(
            carriesDNS: visibility == .dns || d.hasDNSRules, requiresHTTP: d.requiresHTTP,
            interceptHTTP2: cfg.interceptHTTP2, visibility: visibility, splice: cfg.splice,
            interceptionUnavailable: tls && visibility == .https ? tlsInterceptionUnavailable() : nil)
    }

    // MARK: - Step 0 and 1: accept, connect

    /// Called from the child channel initializer.
    func start() {
        environment.count(.connectionsAccepted)
        let d = currentDecision()
        guard let target = downstream.localAddress else { return downstream.close(promise: nil) }
        let cfg = environment.configuration
        // The client pod's own address as the source (the datapath steers the replies back), to
        // pods only: on the way to a Service VIP (kube-proxy's DNAT after the proxy) or the world
        // (the node's masquerade) NAT would hide the replies from the datapath.
        upstreamSourceAddress = cfg.upstreamSource == .pod && context.destination.podName != nil
            ? environment.upstreamSource.source(client: downstream.remoteAddress, target: target) : nil
        // An HTTPS port whose destination has a shared HTTP/2 connection from here (or one being
        // made): a pod offering h2 will use it, so its own socket waits for its ClientHello.
        let connectWhenNeeded = context.rule?.l7 == .https && cfg.upstreamSharing > 1
            && environment.http2Upstreams.pool(on: downstream.eventLoop).shares(source: upstreamSourceAddress, destination: target)
        let action = machine.accepted(deniesConnection: d.deniesConnection, connectWhenNeeded: connectWhenNeeded)
        if action == .deny {
            environment.count(.connectionsPolicyDenied)
            record(.dropped, "TCP connection denied by \(d.deniedDirection) policy", dropReason: .policyDenied)
            return reset(downstream)
        }
        try? downstream.pipeline.syncOperations.addHandlers([FirstBytesHandler(connection: self, side: .client),
                                                              HalfCloseWatcher(connection: self, side: .client)])
        downstream.closeFuture.assumeIsolated().whenComplete { _ in self.closed(.client) }
        if action == .detectFirst {
            downstream.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        } else {
            connectUpstream(to: target)
        }
    }

    /// Step 1: the socket to the original destination (marked; bound to the pod's address when
    /// `upstreamSourceAddress` says so).
    private func connectUpstream(to target: SocketAddress) {
        let cfg = environment.configuration
        // The initializer runs on this loop (the bootstrap's group is it).
        let bound = NIOLoopBound(self, eventLoop: downstream.eventLoop)
        let source = upstreamSourceAddress
        let mark = cfg.upstreamMark
        ClientBootstrap(group: downstream.eventLoop)
            .connectTimeout(.milliseconds(cfg.connectTimeoutMilliseconds))
            .channelInitializer { ch in
                // Runs before the channel is registered and connects; when the source is the
                // pod's, the socket is bound here (its transparent options set before the bind).
                do {
                    try Self.configure(ch, mark: mark)
                    try ch.pipeline.syncOperations.addHandlers([FirstBytesHandler(connection: bound.value, side: .server),
                                                                HalfCloseWatcher(connection: bound.value, side: .server)])
                    guard let source else { return ch.eventLoop.makeSucceededVoidFuture() }
                    for (option, value) in UpstreamSourceAddress.options(for: source) { try ch.syncOptions?.setOption(option, value: value) }
                    return ch.bind(to: source)
                } catch {
                    return ch.eventLoop.makeFailedFuture(error)
                }
            }
            .connect(to: target)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let ch): self.upstreamConnected(ch)
                case .failure(let error): self.upstreamFailed(error)
                }
            }
    }

    /// What waits for a socket connected later (`.detectFirst`).
    private var whenUpstreamConnected: (() -> Void)?

    /// Runs `step` once the connection has its own socket to the destination: now, or after
    /// connecting it (read first, `.detectFirst`).
    func withUpstream(_ step: @escaping () -> Void) {
        if upstream != nil { return step() }
        guard machine.upstreamDeferred, whenUpstreamConnected == nil, let target = downstream.localAddress else { return close() }
        whenUpstreamConnected = step
        connectUpstream(to: target)
    }

    private func upstreamConnected(_ channel: Channel) {
        let action = machine.upstreamConnected()
        guard action != .closeUpstream else { return channel.close(promise: nil) }
        upstream = channel
        // Unless an HTTP/2 `Upstream` took the channel over (it then reports its close).
        channel.closeFuture.assumeIsolated().whenComplete { _ in if self.upstream === channel { self.closed(.server) } }
        if action == .resume {
            let step = whenUpstreamConnected
            whenUpstreamConnected = nil
            step?()
        } else {
            downstream.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        }
    }

    private func upstreamFailed(_ error: Error) {
        environment.count(.upstreamConnectErrors)
        if machine.upstreamConnectFailed() {
            record(.error, "TCP upstream connect to \(context.authorityFallback) failed: \(error)")
        }
        // Reset rather than close, so the client sees a refusal as it would without the proxy.
        reset(downstream)
    }

    /// The destination's socket will not be used (a shared one will): closed, and its close
    /// is not the connection's end.
    func closeUnusedUpstream() {
        handOverUpstream()?.close(promise: nil)
    }

    /// The destination's socket now belongs to an HTTP/2 `Upstream` (which reports its close).
    @discardableResult
    func handOverUpstream() -> Channel? {
        defer { upstream = nil }
        return upstream
    }

    /// Closes with RST (SO_LINGER 0): the client sees a refusal, not an empty reply.
    func reset(_ channel: Channel) {
        if let options = channel as? SocketOptionProvider {
            options.setSoLinger(linger(l_onoff: 1, l_linger: 0)).assumeIsolated().whenComplete { _ in channel.close(promise: nil) }
        } else {
            channel.close(promise: nil)
        }
    }

    // MARK: - Step 2: detection

    /// The client's first bytes decided the protocol.
    func detected(_ detected: ConnectionStateMachine.Detected) {
        // The node CA is only looked at for a hello that could be intercepted (it names a server).
        let named = if case .tls(.hello(let h)) = detected { h.serverName != nil } else { false }
        perform(machine.detected(detected, facts: facts(tls: named)))
    }

    /// The destination spoke before the client. An HTTP/2 server's SETTINGS may come before the
    /// client's preface: keep waiting for the client (it speaks without waiting), but not
    /// forever. Anything else is not HTTP: relay it.
    func serverSpokeFirst(http2Preface: Bool) {
        guard machine.state == .detecting else { return }
        if !http2Preface { return detected(.opaque) }
        loop.scheduleTask(in: .seconds(Self.http2PrefaceWaitSeconds)) {
            if self.machine.state == .detecting { self.detected(.opaque) }
        }
    }

    static let http2PrefaceWaitSeconds: Int64 = 5

    private func perform(_ detection: ConnectionStateMachine.Detection) {
        for note in detection.notes { record(note) }
        switch detection.action {
        case .none:
            break
        case .refuse(let summary):
            environment.count(.connectionsPolicyDenied)
            record(.dropped, summary, dropReason: .policyDenied)
            upstream?.close(promise: nil)
            reset(downstream)
        case .interceptTLS(let serverName, let alpn):
            interceptTLS(serverName: serverName, alpn: alpn)
        case .install(let what):
            withUpstream { self.install(what) }
        }
    }

    /// Step 3 after detection: what carries the connection, in place of the first-bytes gates.
    private func install(_ what: ConnectionStateMachine.Install) {
        guard let upstream else { return close() }
        let ds = downstream.pipeline.syncOperations, us = upstream.pipeline.syncOperations
        do {
            let clientHold = try ds.handler(type: FirstBytesHandler.self)
            let serverHold = try us.handler(type: FirstBytesHandler.self)
            try install(what, ds, after: clientHold, us, after: serverHold)
            // Removing the one-shot handlers hands their held bytes to what was just installed.
            ds.removeHandler(clientHold, promise: nil)
            us.removeHandler(serverHold, promise: nil)
        } catch {
            return close()
        }
        if case .opaque(_, splice: true) = what { spliceWhenDrained() }
    }

    private func record(_ note: ConnectionStateMachine.Note) {
        switch note {
        case .hello(.hello(let h)):
            environment.count(.tlsClientHellos)
            if let sni = h.serverName, !context.serverNames.contains(sni) { context.serverNames.insert(sni, at: 0) }
            var summary = "TLS ClientHello " + (h.serverName.map { "SNI=\($0)" } ?? "without SNI")
            if !h.alpn.isEmpty { summary += " ALPN=" + h.alpn.joined(separator: ",") }
            record(.forwarded, summary)
        case .hello(.notTLS(let why)), .hello(.malformed(let why)):
            environment.count(.tlsClientHellosUnreadable)
            record(.forwarded, "TLS ClientHello unreadable (\(why)): relayed opaque")
        case .hello(.needMore):
            break
        case .notTLSOnTLSPort(let firstBytes):
            environment.count(.tlsPortNotTLS)
            record(.forwarded, "not TLS on a TLS visibility port (first bytes: \(firstBytes)): relayed opaque")
        case .tlsVisibilityOnly(let summary):
            record(.forwarded, summary)
        }
    }

    // MARK: - Step 3: what carries the connection

    /// Installs the handlers for `what` after the given ones on each side.
    func install(_ what: ConnectionStateMachine.Install,
                 _ ds: ChannelPipeline.SynchronousOperations, after downstreamAnchor: ChannelHandler,
                 _ us: ChannelPipeline.SynchronousOperations, after upstreamAnchor: ChannelHandler) throws {
        switch what {
        case .http1:
            environment.count(.connectionsHTTP1)
            try installHTTP1(ds, after: downstreamAnchor, us, after: upstreamAnchor)
        case .http2:
            try installHTTP2(ds, after: downstreamAnchor, over: try makeHTTP2Upstream(after: upstreamAnchor), reserved: false)
        case .opaque(let kind, _):
            let (a, b) = RelayHandler.pair(connection: self)
            try ds.addHandler(a, position: .after(downstreamAnchor))
            try us.addHandler(b, position: .after(upstreamAnchor))
            switch kind {
            case .dns:
                // DNS over TCP: frames inspected on their way through the relay.
                environment.count(.connectionsDNSTCP)
                let session = DNSStreamHandler.Session()
                try ds.addHandler(DNSStreamHandler(connection: self, session: session, side: .client), position: .after(downstreamAnchor))
                try us.addHandler(DNSStreamHandler(connection: self, session: session, side: .server), position: .after(upstreamAnchor))
            case .tunnel:
                environment.count(.connectionsTunneled)
            case .raw, .tls:
                environment.count(.connectionsOpaque)
            }
        }
    }

    /// This connection's socket to the destination becomes an HTTP/2 `Upstream` (after
    /// `anchor`): shared under `sharedUpstreamKey` when there is one (HTTPS, the pod offered h2,
    /// sharing on), else its own.
    func makeHTTP2Upstream(after anchor: ChannelHandler) throws -> HTTP2Intercept.Upstream {
        guard let channel = upstream else { throw ChannelError.ioOnClosedChannel }
        let cfg = environment.configuration
        let pool = sharedUpstreamKey == nil ? nil : environment.http2Upstreams.pool(on: downstream.eventLoop)
        let link = try HTTP2Intercept.Upstream(channel: channel, after: anchor, key: sharedUpstreamKey, pool: pool,
                                               limits: cfg.http2, maxSessions: cfg.upstreamSharing)
        handOverUpstream()
        return link
    }

    /// HTTP/2: the client's side, its streams relayed over `link` (its own or a shared one).
    func installHTTP2(_ ds: ChannelPipeline.SynchronousOperations, after anchor: ChannelHandler,
                      over link: HTTP2Intercept.Upstream, reserved: Bool) throws {
        environment.count(.connectionsHTTP2)
        try HTTP2Intercept.install(connection: self, downstream: ds, after: anchor, upstream: link, reserved: reserved)
    }

    /// HTTP/1: the intercepting handlers on both sides, after the given handlers. They parse
    /// heads for policy and flows and relay the bytes as they came.
    private func installHTTP1(_ ds: ChannelPipeline.SynchronousOperations, after downstreamAnchor: ChannelHandler,
                              _ us: ChannelPipeline.SynchronousOperations, after upstreamAnchor: ChannelHandler) throws {
        let (down, up) = HTTP1Intercept.pair(connection: self, maxHeaderBytes: environment.configuration.maxHeaderBytes)
        try ds.addHandler(down, position: .after(downstreamAnchor))
        try us.addHandler(up, position: .after(upstreamAnchor))
    }

    /// The HTTP exchange asked for a tunnel (101 Switching Protocols, CONNECT 2xx): from now on
    /// both directions are relayed as opaque bytes. The HTTP handlers are removed after the
    /// relay is in place so their leftover bytes flow into it.
    func tunnelOpened(by opening: String, downstreamHTTP: ChannelHandler, upstreamHTTP: ChannelHandler) {
        guard let upstream, let what = machine.tunnelOpened(by: opening, splice: environment.configuration.splice) else { return }
        let ds = downstream.pipeline.syncOperations
        let us = upstream.pipeline.syncOperations
        do {
            try install(what, ds, after: downstreamHTTP, us, after: upstreamHTTP)
            ds.removeHandler(context: try ds.context(handler: downstreamHTTP), promise: nil)
            us.removeHandler(context: try us.context(handler: upstreamHTTP), promise: nil)
        } catch {
            return close()
        }
        if !spliceWhenDrained() {
            downstream.read()
            upstream.read()
        }
    }

    // MARK: - Events from the handlers

    func relayed(_ n: UInt64, from side: Side) {
        machine.relayed(n, from: side)
        if machine.splice != nil { environment.count(.spliceBytesRelayedAfterSplice, n) }
    }

    /// Bytes were queued toward `side`: a close of its peer waits for them.
    func wrote(to side: Side) {
        if side == .client { wroteToClient = true } else { wroteToServer = true }
    }

    /// Completes once every byte queued toward `side` so far is written (or can no longer be):
    /// an empty write, flushed from the pipeline's tail behind them. NIO completes a socket's
    /// writes in order, and the byte pipelines' handlers (HTTP/1, relay, TLS) pass writes on in
    /// order. Only for sides written as bytes: an HTTP/2 pipeline takes frames, not bytes.
    func lastWrite(to side: Side) -> EventLoopFuture<Void> {
        guard side == .client ? wroteToClient : wroteToServer, let channel = channel(side), channel.isActive else {
            return downstream.eventLoop.makeSucceededVoidFuture()
        }
        let promise = channel.eventLoop.makePromise(of: Void.self)
        channel.pipeline.syncOperations.writeAndFlush(NIOAny(ByteBuffer()), promise: promise)
        return promise.futureResult
    }

    func channel(_ side: Side) -> Channel? { side == .client ? downstream : upstream }

    /// A relay's read batch ended: for the splice's drain, the side's last read is done.
    func readBatchDone(_ side: Side) {
        if machine.isDraining { machine.drainReadDone(side) }
    }

    var holdsReads: Bool { machine.holdsReads }
    func drainReadPending(_ side: Side) -> Bool { machine.drainReadPending(side) }

    // MARK: - Step 5: FIN and close

    /// One side sent FIN: pass it on (after everything queued toward the peer has been written),
    /// as a direct TCP connection would, so half-close protocols and HTTP/1.0-style clients
    /// that shut their write side after the request still get their answer. NIO turns the
    /// second half-close of a socket into a full close.
    func inputClosed(from side: Side) {
        switch machine.inputClosed(from: side, facts: facts()) {
        case .shutPeerWhenForwarded:
            afterForwarded(from: side) { $0.close(mode: .output, promise: nil) }
        case .closeAll:
            close()
        case .shutPeer(let detect):
            if let detect { perform(detect) }
            if side == .client && machine.state == .http2 {
                // Its streams' destination may be shared: the client's connection ends once they are answered.
                return (try? downstream.pipeline.syncOperations.handler(type: HTTP2Intercept.FrameRelay.self))?.session?.clientFinished() ?? ()
            }
            guard let target = channel(side.peer) else { return }
            lastWrite(to: side.peer).assumeIsolated().whenComplete { _ in
                target.close(mode: .output, promise: nil)
                // A peer that never closes its side must not hold the sockets forever.
                let deadline = target.eventLoop.assumeIsolated().scheduleTask(in: .seconds(Self.halfCloseGraceSeconds)) {
                    target.close(promise: nil)
                }
                target.closeFuture.whenComplete { _ in deadline.cancel() }
            }
        }
    }

    static let halfCloseGraceSeconds: Int64 = 60

    func close() {
        downstream.close(promise: nil)
        upstream?.close(promise: nil)
    }

    private func closed(_ side: Side) {
        reservedUpstream?.release() // its pod never got to HTTP/2
        reservedUpstream = nil
        settleSharedHandshake(negotiated: nil) // those waiting for its handshake make their own
        switch machine.closed(side) {
        case .none:
            return // the pod is being told why (502), on its own connection
        case .closePeerWhenForwarded:
            afterForwarded(from: side) { $0.close(promise: nil) }
        case .closePeer:
            if let peer = channel(side.peer) {
                lastWrite(to: side.peer).assumeIsolated().whenComplete { _ in peer.close(promise: nil) }
            }
        }
        if let kind = machine.finish() {
            record(.forwarded, "\(ConnectionStateMachine.describe(kind)) closed: \(machine.bytesFromClient) bytes from client, "
                + "\(machine.bytesFromServer) bytes from server")
        }
    }

    // MARK: - Flows

    /// An L3/L4 flow of this connection, client to server.
    func record(_ verdict: Verdict, _ summary: String, dropReason: DropReason? = nil) {
        environment.record(context.flow(verdict: verdict, type: .l3l4, l7: nil, reply: false, summary: summary, dropReason: dropReason))
    }
}
