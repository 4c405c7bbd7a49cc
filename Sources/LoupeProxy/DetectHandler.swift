import LoupeProtocols
import NIOCore

/// Step 2 on the downstream side: buffers the client's first bytes until `ProtocolDetector`
/// decides, then hands them (on removal) to the pipeline the connection installed.
final class DetectHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let connection: ProxyConnection
    private var buffered: ByteBuffer?
    private var decided = false

    init(connection: ProxyConnection) { self.connection = connection }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if decided {
            context.fireChannelRead(data)
            return
        }
        if buffered == nil { buffered = bytes } else { buffered!.writeBuffer(&bytes) }
        let view = buffered!.readableBytesView
        let decision = ProtocolDetector.detect(view)
        if decision == .tls {
            // TLS: wait for the whole ClientHello (SNI, ALPN), parsing only when a record is complete.
            guard view.count >= helloNeeds else { return }
            let hello = TLSClientHello.parse(view)
            if hello == .needMore {
                helloNeeds = TLSClientHello.bytesNeeded(view)
                return
            }
            decided = true
            connection.detected(.tls, hello: hello)
        } else if decision != .needMore {
            decided = true
            connection.detected(decision)
        }
    }

    /// Buffer length at which the ClientHello parse can next make progress.
    private var helloNeeds = 0

    func handlerRemoved(context: ChannelHandlerContext) {
        if let b = buffered, b.readableBytes > 0 {
            buffered = nil
            context.fireChannelRead(wrapInboundOut(b))
            context.fireChannelReadComplete()
        }
    }
}

/// Upstream side before detection: holds what the server sends first (and stops reading after
/// it) so a server-first protocol is recognised as opaque; hands the bytes on when removed.
final class UpstreamGate: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = NIOAny

    private let connection: ProxyConnection
    private var buffered: ByteBuffer?
    private var pendingRead = false

    init(connection: ProxyConnection) { self.connection = connection }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if buffered == nil { buffered = bytes } else { buffered!.writeBuffer(&bytes) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        guard let b = buffered else { return }
        if ProtocolDetector.isHTTP2ServerPreface(b.readableBytesView) {
            connection.upstreamSentHTTP2Preface()
        } else {
            connection.upstreamSpokeFirst()
        }
    }

    func read(context: ChannelHandlerContext) {
        if buffered != nil { pendingRead = true } else { context.read() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if let b = buffered {
            buffered = nil
            context.fireChannelRead(wrapInboundOut(b))
            context.fireChannelReadComplete()
        }
        if pendingRead { context.read() }
    }
}

/// Last handler of both pipelines: reports a peer's FIN (input closed) to the connection.
/// Both channels allow remote half-closure, so EOF arrives here as an event, not as a close.
final class HalfCloseWatcher: ChannelInboundHandler {
    typealias InboundIn = NIOAny

    private let connection: ProxyConnection
    private let client: Bool

    init(connection: ProxyConnection, client: Bool) {
        self.connection = connection
        self.client = client
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.inputClosed) = event as? ChannelEvent {
            connection.inputClosed(fromClient: client)
        }
        context.fireUserInboundEventTriggered(event)
    }
}
