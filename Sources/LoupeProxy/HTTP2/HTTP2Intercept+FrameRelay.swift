import NIOCore
import NIOHTTP2

extension HTTP2Intercept {
    /// Right after the client's `NIOHTTP2Handler`: hands its frames and stream events to the
    /// session and writes the frames the session relays to it. Writes are flushed once per read
    /// batch of either side; reads pause while the destination's socket is full (`Glue`). The
    /// destination's side is the session's `Upstream` (its `UpstreamRelay`).
    final class FrameRelay: Glued, FrameWriting {
        typealias InboundIn = HTTP2Frame
        typealias OutboundIn = HTTP2Frame
        typealias OutboundOut = HTTP2Frame

        private(set) var session: Session?
        let glue: Glue
        var side: ConnectionStateMachine.Side { .client }
        var outputContext: ChannelHandlerContext? { glue.context(.client) }
        var unflushed = false
        var connectionCredit = 0

        init(session: Session) {
            self.session = session
            self.glue = session.glue
        }

        func handlerRemoved(context: ChannelHandlerContext) {
            glue.detach(side)
            session = nil // breaks the session ↔ relay cycle
        }

        /// Inside a read batch (until its channelReadComplete), which flushes what it caused.
        private(set) var reading = false

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            reading = true
            let frame = unwrapInboundIn(data)
            guard let session, frame.streamID != .rootStream else { return }
            session.fromClient(frame)
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            reading = false
            creditConnection()
            session?.upstream?.flush()
            flush()
            context.fireChannelReadComplete()
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let e = event as? StreamClosedEvent {
                session?.clientStreamClosed(e.streamID, reason: e.reason)
                // What this wrote goes out with the read batch that closed the stream, if any.
                if !reading && !(session?.upstream?.reading ?? false) {
                    session?.upstream?.flush()
                    flush()
                }
            }
            context.fireUserInboundEventTriggered(event)
        }

        func channelInactive(context: ChannelHandlerContext) {
            session?.clientGone()
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            if session?.stackError(error, client: true) == true { context.close(promise: nil) }
        }
    }
}
