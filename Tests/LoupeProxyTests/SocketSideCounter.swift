import NIOCore

/// Counts the `read()` and `flush()` calls that get past the handlers above it toward the
/// socket (on a real channel each flush is a `write(2)`).
final class SocketSideCounter: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    var reads = 0
    var flushes = 0

    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }

    func flush(context: ChannelHandlerContext) {
        flushes += 1
        context.flush()
    }
}
