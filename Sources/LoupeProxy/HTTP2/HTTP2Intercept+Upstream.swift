import NIOCore
import NIOHTTP2
import Synchronization

extension HTTP2Intercept {
    /// One HTTP/2 connection to a destination, carrying the streams of one or more client
    /// connections (`Session`s). Intercepted HTTPS connections to the same destination, from the
    /// same source address, for the same server name, share one (as Envoy pools its upstream
    /// connections): a new client connection then costs one TLS handshake, not two, and one
    /// HTTP/2 stack toward the destination serves many. Policy and flows stay per client
    /// connection and per request: only the transport is shared. Cleartext HTTP/2 (h2c) keeps
    /// the upstream connection it connected for itself (`key` nil), closed with its session.
    ///
    /// Stream ids toward the destination are allocated here and mapped back to their session;
    /// the connection's flow-control window is shared, each stream's is end to end as before
    /// (`Session.credit`). A GOAWAY or close from the destination reaches every session; a client
    /// that goes resets only its own streams here. The destination's frames are never held back
    /// for one slow client (its streams' windows bound what waits for it); the clients' reads
    /// pause while this socket is full (`Glue`). Confined to one event loop.
    final class Upstream {
        /// What makes two client connections' upstream connections interchangeable.
        struct Key: Hashable {
            /// The source address bound (`--upstream-source pod`), nil: the node's.
            var source: SocketAddress?
            var destination: SocketAddress
            /// SNI, and the name the destination's certificate was verified for.
            var serverName: String
        }

        /// A shared connection with no session left is kept this long for the next one.
        static let idleSeconds: Int64 = 30

        let channel: Channel
        /// nil: this connection serves the one session it was connected for.
        let key: Key?
        private let pool: Pool?
        /// Client connections a shared connection carries at most (`ProxyConfiguration.upstreamSharing`).
        private let maxSessions: Int
        private(set) var relay: UpstreamRelay?
        private var sessions: [ObjectIdentifier: Session] = [:]
        /// Sessions promised to this connection whose pod handshake is still under way.
        private var reserved = 0
        private var owners: [HTTP2StreamID: Session] = [:]
        /// Sessions written to during this read batch: their clients are flushed at its end.
        private var touched: [Session] = []
        private var nextStreamID = HTTP2StreamID(1)
        /// The destination said GOAWAY (or the connection ended): no new streams or sessions.
        private(set) var goingAway = false
        private(set) var lastStreamID: HTTP2StreamID = .maxID
        private(set) var gone = false
        /// SETTINGS_MAX_CONCURRENT_STREAMS from the destination (until it says, RFC 9113's
        /// recommended minimum).
        private var remoteMaxStreams = 100
        private var idleClose: Scheduled<Void>?

        /// Puts the HTTP/2 client stack on `channel` (after `anchor`) and takes the channel over
        /// from the connection that connected it.
        init(channel: Channel, after anchor: ChannelHandler, key: Key?, pool: Pool?, limits: HTTP2Limits, maxSessions: Int) throws {
            self.channel = channel
            self.key = key
            self.pool = pool
            self.maxSessions = max(1, maxSessions)
            let ops = channel.pipeline.syncOperations
            // The connection that connected it watched it for its own sake; the link does now.
            if let watcher = try? ops.handler(type: HalfCloseWatcher.self) { ops.removeHandler(watcher, promise: nil) }
            let http2 = NIOHTTP2Handler(mode: .client, connectionConfiguration: limits.connection(validatingHeaders: false),
                                        streamConfiguration: limits.stream)
            let relay = UpstreamRelay(upstream: self)
            self.relay = relay
            try ops.addHandler(http2, position: .after(anchor))
            try ops.addHandler(relay, position: .after(http2))
            relay.openConnectionWindow()
            if let key { pool?.add(self, key: key) }
        }

        // MARK: Sessions

        /// Can carry one more client connection.
        var acceptsSession: Bool {
            key != nil && !goingAway && channel.isActive && sessions.count + reserved < maxSessions
                && owners.count < remoteMaxStreams
        }

        /// A client connection will use this once its pod handshake is done (`attach`), or
        /// goes before (`release`).
        func reserve() {
            reserved += 1
            idleClose?.cancel()
            idleClose = nil
        }

        func release() {
            reserved -= 1
            closeIfUnused()
        }

        func attach(_ session: Session, reserved wasReserved: Bool) {
            if wasReserved { reserved -= 1 }
            sessions[ObjectIdentifier(session)] = session
            session.upstream = self
            if let context = relay?.context { session.glue.attach(.server, context) }
            if gone {
                session.upstreamClosed()
            } else if goingAway {
                session.upstreamGoAway(lastStreamID: lastStreamID)
            }
        }

        /// The session's client connection is gone (its streams here were reset).
        func detach(_ session: Session) {
            guard sessions.removeValue(forKey: ObjectIdentifier(session)) != nil else { return }
            session.glue.detach(.server)
            closeIfUnused()
        }

        private func closeIfUnused() {
            guard sessions.isEmpty && reserved == 0 && !gone else { return }
            guard key != nil && !goingAway else { return channel.close(promise: nil) }
            idleClose?.cancel()
            let channel = channel
            idleClose = channel.eventLoop.assumeIsolated().scheduleTask(in: .seconds(Self.idleSeconds)) { channel.close(promise: nil) }
        }

        /// A new stream toward the destination for `session` (odd ids, ascending).
        func openStream(for session: Session) -> HTTP2StreamID {
            let id = nextStreamID
            nextStreamID = HTTP2StreamID(Int32(id) + 2)
            owners[id] = session
            // Ids run out after 2^30 streams: the next session gets a fresh connection.
            if Int32(nextStreamID) > Int32.max - 2 { stopSharing() }
            return id
        }

        func write(_ frame: HTTP2Frame, promise: EventLoopPromise<Void>? = nil) {
            guard let relay else {
                promise?.fail(ChannelError.ioOnClosedChannel)
                return
            }
            relay.write(frame, promise: promise)
        }

        func flush() { relay?.flush() }

        var reading: Bool { relay?.reading ?? false }

        // MARK: Events from the destination (the relay)

        func frameArrived(_ frame: HTTP2Frame) {
            if frame.streamID == .rootStream {
                switch frame.payload {
                case .goAway(let last, _, _): goAway(lastStreamID: last)
                case .settings(.settings(let settings)):
                    for s in settings where s.parameter == .maxConcurrentStreams { remoteMaxStreams = s.value }
                default: break
                }
                return
            }
            if case .data(let d) = frame.payload { relay?.connectionCredit += Session.flowControlledLength(d) }
            guard let session = owners[frame.streamID] else { return }
            touch(session)
            session.fromServer(frame)
        }

        func streamClosed(_ id: HTTP2StreamID, reason: HTTP2ErrorCode?) {
            guard let session = owners.removeValue(forKey: id) else { return }
            touch(session)
            session.upstreamStreamClosed(id, reason: reason)
        }

        /// The end of a read batch (or an event outside one): what it caused goes out.
        func readBatchDone() {
            for session in touched { session.client?.flush() }
            touched.removeAll(keepingCapacity: true)
        }

        private func touch(_ session: Session) {
            if !touched.contains(where: { $0 === session }) { touched.append(session) }
        }

        private func stopSharing() {
            guard !goingAway else { return }
            goingAway = true
            if let key { pool?.remove(self, key: key) }
        }

        private func goAway(lastStreamID last: HTTP2StreamID) {
            stopSharing()
            lastStreamID = min(lastStreamID, last)
            for session in Array(sessions.values) { session.upstreamGoAway(lastStreamID: last) }
            closeIfUnused()
        }

        /// The destination's connection closed: every session's streams here end.
        func closed() {
            guard !gone else { return }
            stopSharing()
            gone = true
            idleClose?.cancel()
            let all = Array(sessions.values)
            sessions.removeAll()
            owners.removeAll()
            for session in all {
                session.glue.detach(.server)
                session.upstreamClosed()
            }
        }

        /// An error from the HTTP/2 stack toward the destination: a stream's goes to its session,
        /// the connection's to every session (each records it); the connection then closes.
        func stackError(_ error: Error, context: ChannelHandlerContext) {
            if let e = error as? NIOHTTP2Errors.StreamError {
                _ = owners[e.streamID]?.stackError(error, client: false)
                return
            }
            var close = sessions.isEmpty
            for session in Array(sessions.values) where session.stackError(error, client: false) { close = true }
            if close { context.close(promise: nil) }
        }

        func writabilityChanged() {
            for session in sessions.values { session.glue.writabilityChanged(.server) }
        }
    }

    /// Right after the destination's `NIOHTTP2Handler`: hands its frames and stream events to
    /// the `Upstream`, writes what the sessions relay to it. Reads are never held (see `Upstream`).
    final class UpstreamRelay: ChannelDuplexHandler, RemovableChannelHandler, FrameWriting {
        typealias InboundIn = HTTP2Frame
        typealias OutboundIn = HTTP2Frame
        typealias OutboundOut = HTTP2Frame

        private var upstream: Upstream?
        private(set) var context: ChannelHandlerContext?
        var unflushed = false
        var connectionCredit = 0
        private(set) var reading = false

        init(upstream: Upstream) { self.upstream = upstream }

        var outputContext: ChannelHandlerContext? { context }

        func handlerAdded(context: ChannelHandlerContext) { self.context = context }

        func handlerRemoved(context: ChannelHandlerContext) {
            self.context = nil
            upstream = nil // breaks the upstream ↔ relay cycle
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            reading = true
            upstream?.frameArrived(unwrapInboundIn(data))
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            reading = false
            creditConnection()
            upstream?.readBatchDone()
            flush()
            context.fireChannelReadComplete()
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let e = event as? StreamClosedEvent {
                upstream?.streamClosed(e.streamID, reason: e.reason)
                if !reading {
                    upstream?.readBatchDone()
                    flush()
                }
            } else if case .some(.inputClosed) = event as? ChannelEvent {
                context.close(promise: nil) // the destination is done with this connection
            }
            context.fireUserInboundEventTriggered(event)
        }

        func channelInactive(context: ChannelHandlerContext) {
            upstream?.closed()
            context.fireChannelInactive()
        }

        func channelWritabilityChanged(context: ChannelHandlerContext) {
            upstream?.writabilityChanged()
            context.fireChannelWritabilityChanged()
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            upstream?.stackError(error, context: context)
        }
    }

    /// The shared upstream connections of one event loop (a connection and its upstream use the
    /// same loop), by `Upstream.Key`, and the handshakes under way that will make one.
    final class Pool {
        /// A destination handshake one client connection makes for its key; others wait for it
        /// rather than start their own (a burst of new connections would otherwise each start
        /// one before the first is done). Called with the shared connection, or nil.
        final class Handshake {
            fileprivate var waiters: [(Upstream?) -> Void] = []
        }

        enum Choice {
            /// A shared connection, reserved for the caller.
            case share(Upstream)
            /// Waiting for another connection's handshake (the closure is called when it settles).
            case wait
            /// The caller makes the handshake (and settles it, `settled`).
            case handshake(Handshake)
        }

        private var links: [Upstream.Key: [Upstream]] = [:]
        private var handshakes: [Upstream.Key: [Handshake]] = [:]
        /// Links and handshakes per (source, destination), whatever the server name.
        private var destinations: [Destination: Int] = [:]

        private struct Destination: Hashable {
            var source: SocketAddress?
            var destination: SocketAddress
            init(_ key: Upstream.Key) { (source, destination) = (key.source, key.destination) }
            init(source: SocketAddress?, destination: SocketAddress) { (self.source, self.destination) = (source, destination) }
        }

        /// A connection from `source` to `destination` may be shared from here (one exists or is
        /// being made, for some server name): a new client connection to it can wait for its
        /// ClientHello before connecting a socket of its own.
        func shares(source: SocketAddress?, destination: SocketAddress) -> Bool {
            destinations[Destination(source: source, destination: destination), default: 0] > 0
        }

        private func count(_ key: Upstream.Key, _ delta: Int) {
            let d = Destination(key)
            let n = destinations[d, default: 0] + delta
            destinations[d] = n > 0 ? n : nil
        }

        func choose(_ key: Upstream.Key, maxSessions: Int, whenSettled: @escaping (Upstream?) -> Void) -> Choice {
            if let link = links[key]?.first(where: \.acceptsSession) {
                link.reserve()
                return .share(link)
            }
            if let h = handshakes[key]?.first(where: { $0.waiters.count + 1 < maxSessions }) {
                h.waiters.append(whenSettled)
                return .wait
            }
            let h = Handshake()
            handshakes[key, default: []].append(h)
            count(key, 1)
            return .handshake(h)
        }

        func settled(_ h: Handshake, key: Upstream.Key, link: Upstream?) {
            guard handshakes[key]?.contains(where: { $0 === h }) == true else { return }
            handshakes[key]?.removeAll { $0 === h }
            count(key, -1)
            if handshakes[key]?.isEmpty == true { handshakes[key] = nil }
            let waiters = h.waiters
            h.waiters = []
            for w in waiters { w(link) }
        }

        func add(_ link: Upstream, key: Upstream.Key) {
            links[key, default: []].append(link)
            count(key, 1)
            link.channel.closeFuture.assumeIsolated().whenComplete { _ in self.remove(link, key: key) }
        }

        func remove(_ link: Upstream, key: Upstream.Key) {
            guard links[key]?.contains(where: { $0 === link }) == true else { return }
            links[key]?.removeAll { $0 === link }
            count(key, -1)
            if links[key]?.isEmpty == true { links[key] = nil }
        }
    }

    /// Every event loop's `Pool`, for one proxy.
    final class Pools: Sendable {
        private let byLoop = Mutex<[ObjectIdentifier: NIOLoopBound<Pool>]>([:])

        init() {}

        /// The pool of `loop` (the caller runs on it).
        func pool(on loop: any EventLoop) -> Pool {
            byLoop.withLock { pools in
                let id = ObjectIdentifier(loop)
                if let pool = pools[id] { return pool }
                let pool = NIOLoopBound(Pool(), eventLoop: loop)
                pools[id] = pool
                return pool
            }.value
        }
    }
}

/// The writing half both frame relays share: frames queued toward their socket, one flush per
/// batch, and the connection-level receive window kept open.
protocol FrameWriting: AnyObject {
    var outputContext: ChannelHandlerContext? { get }
    var unflushed: Bool { get set }
    /// DATA bytes received on this connection and not yet credited back (connection level).
    var connectionCredit: Int { get set }
}

extension HTTP2Intercept {
    /// The connection-level receive window each side keeps open (the default is 64 KiB): per-stream
    /// windows bound what a stream may have in flight, this only avoids stalls.
    static let connectionWindow = 1 << 20
}

extension FrameWriting {
    func write(_ frame: HTTP2Frame, promise: EventLoopPromise<Void>? = nil) {
        guard let context = outputContext else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        context.write(NIOAny(frame), promise: promise)
        unflushed = true
    }

    func flush() {
        guard unflushed, let context = outputContext else { return }
        unflushed = false
        context.flush()
    }

    /// Raises the connection's receive window from the default 64 KiB (after the preface, which
    /// the HTTP/2 handler in front sends when added).
    func openConnectionWindow() {
        write(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: HTTP2Intercept.connectionWindow - 65_535)))
        flush()
    }

    /// At the end of a read batch: the DATA bytes received are credited back in batches.
    func creditConnection() {
        guard connectionCredit >= HTTP2Intercept.connectionWindow / 4 else { return }
        write(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: connectionCredit)))
        connectionCredit = 0
    }
}
