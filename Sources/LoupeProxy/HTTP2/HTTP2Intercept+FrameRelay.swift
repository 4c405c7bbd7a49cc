import NIOCore
import NIOHTTP2

extension HTTP2Intercept {
    /// Right after each side's `NIOHTTP2Handler`: hands that side's frames and stream events to
    /// the session and writes the frames the session relays to it. Writes are flushed once per
    /// read batch of the other side; reads pause while the other side's socket is full.
    final class FrameRelay: Glued {
        typealias InboundIn = HTTP2Frame
        typealias OutboundIn = HTTP2Frame
        typealias OutboundOut = HTTP2Frame

        /// The connection-level receive window we keep open (the default is 64 KiB): per-stream
        /// windows bound what a stream may have in flight, this only avoids stalls.
        static let connectionWindow = 1 << 20

        private(set) var session: Session?
        let client: Bool
        let glue: Glue
        var side: ConnectionStateMachine.Side { client ? .client : .server }
        private var context: ChannelHandlerContext? { glue.context(side) }
        private var unflushed = false
        /// DATA bytes received on this connection and not yet credited back (connection level).
        var connectionCredit = 0

        init(session: Session, client: Bool) {
            self.session = session
            self.client = client
            self.glue = session.glue
        }

        private var other: FrameRelay? { session?.relay(client: !client) }

        /// Raises the connection's receive window from the default 64 KiB (after the preface,
        /// which the HTTP/2 handler in front of this one sends when added).
        func openConnectionWindow() {
            write(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: Self.connectionWindow - 65_535)))
            flush()
        }

        func handlerRemoved(context: ChannelHandlerContext) {
            glue.detach(side)
            session = nil // breaks the session ↔ relay cycle
        }

        func write(_ frame: HTTP2Frame, promise: EventLoopPromise<Void>? = nil) {
            guard let context else {
                promise?.fail(ChannelError.ioOnClosedChannel)
                return
            }
            context.write(wrapOutboundOut(frame), promise: promise)
            unflushed = true
        }

        func flush() {
            guard unflushed, let context else { return }
            unflushed = false
            context.flush()
        }

        /// Inside a read batch (until its channelReadComplete), which flushes what it caused.
        private(set) var reading = false

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            reading = true
            let frame = unwrapInboundIn(data)
            guard let session else { return }
            if frame.streamID == .rootStream {
                if !client, case .goAway(let last, _, _) = frame.payload { session.upstreamGoAway(lastStreamID: last) }
                return
            }
            if client { session.fromClient(frame) } else { session.fromServer(frame) }
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            reading = false
            if connectionCredit >= Self.connectionWindow / 4 {
                write(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: connectionCredit)))
                connectionCredit = 0
            }
            other?.flush()
            flush()
            context.fireChannelReadComplete()
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let e = event as? StreamClosedEvent {
                session?.streamClosed(client: client, id: e.streamID, reason: e.reason)
                // What this wrote goes out with the read batch that closed the stream, if any.
                if !reading && !(other?.reading ?? false) {
                    other?.flush()
                    flush()
                }
            }
            context.fireUserInboundEventTriggered(event)
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            session?.stackError(error, client: client, context: context)
        }
    }
}
