import Foundation
import LoupeFlow
import LoupeProtocols
import NIOCore
import NIOHTTP1
import NIOSSL
import NIOTLS
import Synchronization

/// `<…/TCP/HTTPS>`: TLS terminated toward the pod with a leaf the node CA minted for its SNI,
/// and originated toward the original destination with the same SNI, the server verified
/// against the system trust store plus a configured bundle. Steps:
///   1. upstream handshake first, offering the client's ALPN protocols (h2, http/1.1);
///   2. downstream handshake with the minted leaf, offering what the destination chose;
///   3. HTTP/1.1 or HTTP/2 inside, exactly as in cleartext (policy per request, `https://` flows).
/// A destination that fails verification is never reached in the clear and never silently
/// downgraded: the pod's handshake still completes (so it can be told), its request gets
/// `502` naming the reason, and an ERROR flow says the same.
enum TLSIntercept {
    /// TLS material shared by all connections: the node CA, and TLS contexts (costly to build)
    /// cached per ALPN offer (upstream) and per server name (downstream).
    final class Contexts: Sendable {
        let configuration: ProxyConfiguration
        private struct Loaded {
            var ca: Result<NodeCA, Error>?
            var upstream: [[String]: NIOSSLContext] = [:]
        }
        private let loaded = Mutex(Loaded())
        private let downstream = BoundedCache<NIOSSLContext>(limit: NodeCA.leafCacheSize)

        init(configuration: ProxyConfiguration) { self.configuration = configuration }

        /// The node CA, loaded on first use (`loupe ca init` may run after the agent started).
        func nodeCA() throws -> NodeCA {
            try loaded.withLock { l in
                if case .success(let ca) = l.ca { return ca }
                guard let dir = configuration.caDirectory else {
                    throw NodeCA.CAError(description: "no node CA configured (loupe agent --ca-dir)")
                }
                let result = Result { try NodeCA.load(directory: dir) }
                if case .success = result { l.ca = result }
                return try result.get()
            }
        }

        func upstreamContext(alpn: [String]) throws -> NIOSSLContext {
            try loaded.withLock { l in
                if let c = l.upstream[alpn] { return c }
                var tls = TLSConfiguration.makeClientConfiguration()
                tls.certificateVerification = .fullVerification
                tls.trustRoots = .default
                if let bundle = configuration.upstreamCABundle {
                    tls.additionalTrustRoots = [.file(bundle)]
                }
                tls.applicationProtocols = alpn
                let c = try NIOSSLContext(configuration: tls)
                l.upstream[alpn] = c
                return c
            }
        }

        /// A server context with the leaf for SERVERNAME, offering PROTOCOL (what the destination chose).
        func downstreamContext(serverName: String, alpn: String?) throws -> NIOSSLContext {
            let key = "\(serverName)|\(alpn ?? "")"
            if let c = downstream.get(key) { return c }
            let ca = try nodeCA()
            let leaf = try ca.leaf(for: serverName)
            let chain = try [leaf.certificate, ca.certificate].map {
                try NIOSSLCertificate(bytes: Array($0.serializeAsPEM().pemString.utf8), format: .pem)
            }
            let privateKey = try NIOSSLPrivateKey(bytes: Array(leaf.key.pemRepresentation.utf8), format: .pem)
            var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) },
                                                               privateKey: .privateKey(privateKey))
            tls.applicationProtocols = alpn.map { [$0] } ?? ["http/1.1"]
            let c = try NIOSSLContext(configuration: tls)
            downstream.put(key, c)
            return c
        }
    }

    /// In front of a TLS handler (toward the socket): the flushes asked for while one read batch
    /// is handled go out together at its end — one `write(2)` where a handshake's last flight,
    /// the session tickets and the first HTTP/2 frames (SETTINGS, the connection's
    /// WINDOW_UPDATE) would otherwise each take one, with the receiver woken for each. Flushes
    /// outside a read batch pass at once; a close first flushes what waits.
    final class FlushPerReadBatch: ChannelDuplexHandler, RemovableChannelHandler {
        typealias InboundIn = NIOAny
        typealias OutboundIn = NIOAny

        private var reading = false
        private var flushWaits = false

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            reading = true
            context.fireChannelRead(data)
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            context.fireChannelReadComplete()
            reading = false
            flushNow(context: context)
        }

        func flush(context: ChannelHandlerContext) {
            if reading { flushWaits = true } else { context.flush() }
        }

        func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
            flushNow(context: context)
            context.close(mode: mode, promise: promise)
        }

        func channelInactive(context: ChannelHandlerContext) {
            reading = false
            flushWaits = false
            context.fireChannelInactive()
        }

        func handlerRemoved(context: ChannelHandlerContext) { flushNow(context: context) }

        private func flushNow(context: ChannelHandlerContext) {
            guard flushWaits else { return }
            flushWaits = false
            context.flush()
        }
    }

    /// Waits for one side's handshake; reports the negotiated protocol or the failure, then
    /// leaves the pipeline (a destination's connection may outlive its connection, shared).
    final class HandshakeWatcher: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = NIOAny
        private let connection: ProxyConnection
        private let side: ConnectionStateMachine.Side
        private var done = false

        init(connection: ProxyConnection, side: ConnectionStateMachine.Side) {
            self.connection = connection
            self.side = side
        }

        private func report(_ result: Result<String?, Error>) -> Bool {
            guard !done else { return false }
            done = true
            connection.handshakeDone(side, result)
            return true
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            guard case .handshakeCompleted(let proto) = event as? TLSUserEvent, report(.success(proto)) else {
                return context.fireUserInboundEventTriggered(event)
            }
            context.fireUserInboundEventTriggered(event)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            if !report(.failure(error)) { context.fireErrorCaught(error) }
        }

        func channelInactive(context: ChannelHandlerContext) {
            _ = report(.failure(ChannelError.eof))
            context.fireChannelInactive()
        }
    }

    /// Answers the pod's first request with 502 and the reason its destination was refused,
    /// then closes (the destination was never reached in the clear).
    final class BadGateway: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = ByteBuffer
        let reason: String
        private var answered = false

        init(reason: String) { self.reason = reason }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .end = unwrapInboundIn(data), !answered else { return }
            answered = true
            HTTP1Intercept.answerAndClose(context, status: .badGateway, text: "Bad Gateway: \(reason)") {
                context.close(promise: nil)
            }
        }
    }

    /// The reason a handshake failed, in words for flows and the 502 body.
    static func describe(_ error: Error) -> String {
        if let e = error as? NIOSSLError {
            switch e {
            case .handshakeFailed(let inner): return "TLS handshake failed: \(inner)"
            default: return "TLS error: \(e)"
            }
        }
        if let e = error as? NIOSSLExtraError { return "TLS error: \(e)" }
        return "\(error)"
    }
}
