import LoupeFlow
import LoupePolicy
@testable import LoupeProxy
import NIOCore
import NIOEmbedded
import Testing

@Suite struct RelayBackpressureTests {
    func makePair() throws -> (down: EmbeddedChannel, up: EmbeddedChannel, downReads: SocketSideCounter, upReads: SocketSideCounter) {
        let env = ProxyEnvironment(inventory: Inventory(), flows: FlowStore(capacity: 8), configuration: ProxyConfiguration())
        let loop = EmbeddedEventLoop()
        let down = EmbeddedChannel(loop: loop), up = EmbeddedChannel(loop: loop)
        let conn = ProxyConnection(downstream: down, environment: env)
        let (a, b) = RelayHandler.pair(connection: conn)
        let downReads = SocketSideCounter(), upReads = SocketSideCounter()
        try down.pipeline.syncOperations.addHandlers([downReads, a])
        try up.pipeline.syncOperations.addHandlers([upReads, b])
        return (down, up, downReads, upReads)
    }

    @Test func bytesGoToThePartnerUnchanged() throws {
        let (down, up, _, _) = try makePair()
        try down.writeInbound(ByteBuffer(string: "ping"))
        #expect(try up.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "ping"))
        try up.writeInbound(ByteBuffer(string: "pong"))
        #expect(try down.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "pong"))
    }

    @Test func aSideStopsReadingWhileItsPartnerIsNotWritable() throws {
        let (down, up, downReads, _) = try makePair()
        down.read()
        #expect(downReads.reads == 1)
        up.isWritable = false
        down.read()
        down.read()
        #expect(downReads.reads == 1, "read() must be held while the upstream cannot take more")
        up.isWritable = true
        up.pipeline.fireChannelWritabilityChanged()
        #expect(downReads.reads == 2, "one held read() is released when the upstream drains")
    }

    @Test func theOtherDirectionToo() throws {
        let (down, up, _, upReads) = try makePair()
        down.isWritable = false
        up.read()
        #expect(upReads.reads == 0)
        down.isWritable = true
        down.pipeline.fireChannelWritabilityChanged()
        #expect(upReads.reads == 1)
    }
}

/// The glue's rule for a partner that is not there yet: the read is held, and re-checked when
/// the partner is attached (handlers are added one side after the other).
@Suite struct GlueTests {
    final class Probe: Glued {
        typealias InboundIn = NIOAny
        typealias OutboundIn = NIOAny
        let glue: Glue
        let side: ConnectionStateMachine.Side
        init(_ glue: Glue, _ side: ConnectionStateMachine.Side) {
            self.glue = glue
            self.side = side
        }
    }

    /// The client side glued and reading; the server side's channel, not yet glued.
    func clientReadingAlone() throws -> (glue: Glue, up: EmbeddedChannel, downReads: SocketSideCounter) {
        let loop = EmbeddedEventLoop()
        let down = EmbeddedChannel(loop: loop), up = EmbeddedChannel(loop: loop)
        let glue = Glue()
        let downReads = SocketSideCounter()
        try down.pipeline.syncOperations.addHandlers([downReads, Probe(glue, .client)])
        down.read()
        return (glue, up, downReads)
    }

    @Test func aReadWaitsForItsPartnerAndGoesOnWhenItIsAdded() throws {
        let (glue, up, downReads) = try clientReadingAlone()
        #expect(downReads.reads == 0, "no partner yet: the read is held")
        try up.pipeline.syncOperations.addHandler(Probe(glue, .server))
        #expect(downReads.reads == 1, "the partner was added, writable: the held read goes on")
    }

    @Test func aPartnerAddedWhileFullKeepsTheReadHeld() throws {
        let (glue, up, downReads) = try clientReadingAlone()
        up.isWritable = false
        try up.pipeline.syncOperations.addHandler(Probe(glue, .server))
        #expect(downReads.reads == 0)
        up.isWritable = true
        up.pipeline.fireChannelWritabilityChanged()
        #expect(downReads.reads == 1)
    }
}
