import NIOCore

/// The two sides of a connection pair for the handlers that pass messages between them (the
/// byte relay, HTTP/1, HTTP/2's frame relay): NIO's GlueHandler pattern, shared. A side reads
/// only while its partner's socket is writable; a read asked for meanwhile is held and released
/// when the partner drains. One rule for a missing partner: the read is held, and re-checked
/// when the partner is attached (the two handlers are added one after the other).
/// Confined to the connection's event loop (both channels use the same one).
final class Glue {
    typealias Side = ConnectionStateMachine.Side

    private var clientContext: ChannelHandlerContext?
    private var serverContext: ChannelHandlerContext?
    private var clientReadHeld = false
    private var serverReadHeld = false

    init() {}

    func context(_ side: Side) -> ChannelHandlerContext? { side == .client ? clientContext : serverContext }

    /// A side's handler was added: a read its partner was holding for it is re-checked.
    func attach(_ side: Side, _ context: ChannelHandlerContext) {
        if side == .client { clientContext = context } else { serverContext = context }
        if context.channel.isWritable { release(side.peer) }
    }

    func detach(_ side: Side) {
        if side == .client { clientContext = nil } else { serverContext = nil }
    }

    /// `read()` from `side`'s handler: passed on while the partner can take more.
    func read(_ side: Side, context: ChannelHandlerContext) {
        if self.context(side.peer)?.channel.isWritable ?? false {
            context.read()
        } else {
            setHeld(side, true)
        }
    }

    /// `side`'s socket became writable (or not): the partner's held read goes on.
    func writabilityChanged(_ side: Side) {
        if context(side)?.channel.isWritable ?? false { release(side.peer) }
    }

    /// Writes toward `side`'s socket, without a promise (a future per write cost a few percent
    /// of a request's CPU; `ProxyConnection.lastWrite` waits for them all at once). False: its
    /// handler is gone.
    func write(_ data: NIOAny, to side: Side) -> Bool {
        guard let context = context(side) else { return false }
        context.write(data, promise: nil)
        return true
    }

    func flush(_ side: Side) {
        context(side)?.flush()
    }

    private func release(_ side: Side) {
        guard side == .client ? clientReadHeld : serverReadHeld, let context = context(side) else { return }
        setHeld(side, false)
        context.read()
    }

    private func setHeld(_ side: Side, _ held: Bool) {
        if side == .client { clientReadHeld = held } else { serverReadHeld = held }
    }
}

/// A handler glued to its partner on the other socket: reads, writability and the pair's
/// bookkeeping go through the `Glue`. A handler that overrides one of these calls the glue too.
protocol Glued: ChannelDuplexHandler, RemovableChannelHandler {
    var glue: Glue { get }
    var side: ConnectionStateMachine.Side { get }
}

extension Glued {
    func handlerAdded(context: ChannelHandlerContext) { glue.attach(side, context) }
    func handlerRemoved(context: ChannelHandlerContext) { glue.detach(side) }
    func read(context: ChannelHandlerContext) { glue.read(side, context: context) }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        glue.writabilityChanged(side)
        context.fireChannelWritabilityChanged()
    }
}
