import NIOCore

/// Opaque byte relay between the two sockets of a connection, with backpressure: a side reads
/// only while its partner is writable (NIO's GlueHandler pattern).
final class RelayHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let connection: ProxyConnection
    private let isDownstream: Bool
    private var partner: RelayHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false

    private init(connection: ProxyConnection, isDownstream: Bool) {
        self.connection = connection
        self.isDownstream = isDownstream
    }

    static func pair(connection: ProxyConnection) -> (downstream: RelayHandler, upstream: RelayHandler) {
        let a = RelayHandler(connection: connection, isDownstream: true)
        let b = RelayHandler(connection: connection, isDownstream: false)
        a.partner = b
        b.partner = a
        return (a, b)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    private var partnerWritable: Bool { partner?.context?.channel.isWritable ?? false }

    private func partnerWrite(_ data: NIOAny) {
        guard let ctx = partner?.context else { return }
        let f = ctx.write(data)
        if isDownstream { connection.lastWriteToServer = f } else { connection.lastWriteToClient = f }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let n = UInt64(unwrapInboundIn(data).readableBytes)
        if isDownstream { connection.bytesFromClient += n } else { connection.bytesFromServer += n }
        if connection.splice != nil { connection.environment.count("splice_bytes_relayed_after_splice", n) }
        partnerWrite(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.context?.flush()
        if connection.spliceRequested { connection.spliceDrainReadDone(downstream: isDownstream) }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.resumeRead() }
        context.fireChannelWritabilityChanged()
    }

    private func resumeRead() {
        if pendingRead, let context {
            pendingRead = false
            context.read()
        }
    }

    func read(context: ChannelHandlerContext) {
        // Reads stop while the connection goes to the kernel (and for good once it is there),
        // but for the one last read that empties the socket first.
        if connection.spliceRequested {
            if connection.spliceDrainReads.contains(isDownstream) { context.read() }
            return
        }
        if partnerWritable { context.read() } else { pendingRead = true }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        connection.close()
    }
}
