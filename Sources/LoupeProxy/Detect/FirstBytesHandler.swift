import LoupeProtocols
import NIOCore

/// Step 2, on both sockets until the protocol is known: holds the first bytes each side sends
/// and hands them (on removal) to what the connection installs after it.
/// - client side: the bytes are run through `ProtocolDetector` (and for TLS the whole
///   ClientHello waited for) until the protocol is decided;
/// - server side: a server that speaks first is reported (it is not HTTP), and reads stop
///   until the handler goes, so what it sends is held, not lost or read past.
final class FirstBytesHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = NIOAny

    private let connection: ProxyConnection
    let side: ConnectionStateMachine.Side
    private var held: ByteBuffer?
    private var decided = false
    private var readHeld = false
    /// Buffer length at which the ClientHello parse can next make progress.
    private var helloNeeds = 0

    init(connection: ProxyConnection, side: ConnectionStateMachine.Side) {
        self.connection = connection
        self.side = side
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if decided { return context.fireChannelRead(data) }
        var bytes = unwrapInboundIn(data)
        if held == nil { held = bytes } else { held!.writeBuffer(&bytes) }
        if side == .client { detect(held!.readableBytesView) }
    }

    private func detect(_ view: ByteBufferView) {
        switch ProtocolDetector.detect(view) {
        case .needMore:
            return
        case .tls:
            // Wait for the whole ClientHello (SNI, ALPN), parsing only when a record is complete.
            guard view.count >= helloNeeds else { return }
            let hello = TLSClientHello.parse(view)
            if hello == .needMore {
                helloNeeds = TLSClientHello.bytesNeeded(view)
                return
            }
            decided = true
            connection.detected(.tls(hello))
        case .http1:
            decided = true
            connection.detected(.http1)
        case .http2:
            decided = true
            connection.detected(.http2)
        case .opaque:
            decided = true
            connection.detected(.opaque)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        guard side == .server, let held else { return context.fireChannelReadComplete() }
        connection.serverSpokeFirst(http2Preface: ProtocolDetector.isHTTP2ServerPreface(held.readableBytesView))
    }

    func read(context: ChannelHandlerContext) {
        if side == .server && held != nil { readHeld = true } else { context.read() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if let b = held, b.readableBytes > 0 {
            held = nil
            context.fireChannelRead(wrapInboundOut(b))
            context.fireChannelReadComplete()
        }
        if readHeld { context.read() }
    }
}

/// Last handler of both pipelines: reports a peer's FIN (input closed) to the connection.
/// Both channels allow remote half-closure, so EOF arrives here as an event, not as a close.
final class HalfCloseWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let connection: ProxyConnection
    private let side: ConnectionStateMachine.Side

    init(connection: ProxyConnection, side: ConnectionStateMachine.Side) {
        self.connection = connection
        self.side = side
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.inputClosed) = event as? ChannelEvent {
            connection.inputClosed(from: side)
        }
        context.fireUserInboundEventTriggered(event)
    }
}
