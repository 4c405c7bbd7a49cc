import NIOCore

/// Opaque byte relay between the two sockets of a connection (raw TCP, TLS after its hello,
/// tunnels, DNS over TCP behind its frame inspector), glued for backpressure. Bytes are
/// reported to the connection (its closing flow counts them); reads stop while the connection
/// goes to the kernel, but for the one last read that empties a socket first.
final class RelayHandler: Glued {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let glue: Glue
    let side: ConnectionStateMachine.Side
    private let connection: ProxyConnection

    private init(connection: ProxyConnection, glue: Glue, side: ConnectionStateMachine.Side) {
        self.connection = connection
        self.glue = glue
        self.side = side
    }

    static func pair(connection: ProxyConnection) -> (client: RelayHandler, server: RelayHandler) {
        let glue = Glue()
        return (RelayHandler(connection: connection, glue: glue, side: .client),
                RelayHandler(connection: connection, glue: glue, side: .server))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        connection.relayed(UInt64(unwrapInboundIn(data).readableBytes), from: side)
        if glue.write(data, to: side.peer) { connection.wrote(to: side.peer) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        glue.flush(side.peer)
        connection.readBatchDone(side)
    }

    func read(context: ChannelHandlerContext) {
        if connection.holdsReads {
            if connection.drainReadPending(side) { context.read() }
            return
        }
        glue.read(side, context: context)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        connection.close()
    }
}
