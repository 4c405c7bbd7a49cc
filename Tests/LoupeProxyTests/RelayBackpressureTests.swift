import LoupeFlow
import LoupePolicy
@testable import LoupeProxy
import NIOCore
import NIOEmbedded
import Testing

/// Counts `read()` calls that get past the relay toward the socket.
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    var reads = 0
    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }
}

@Suite struct RelayBackpressureTests {
    func makePair() throws -> (down: EmbeddedChannel, up: EmbeddedChannel, downReads: ReadCounter, upReads: ReadCounter) {
        let env = ProxyEnvironment(inventory: Inventory(), flows: FlowStore(capacity: 8), configuration: ProxyConfiguration())
        let loop = EmbeddedEventLoop()
        let down = EmbeddedChannel(loop: loop), up = EmbeddedChannel(loop: loop)
        let conn = ProxyConnection(downstream: down, environment: env)
        let (a, b) = RelayHandler.pair(connection: conn)
        let downReads = ReadCounter(), upReads = ReadCounter()
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
