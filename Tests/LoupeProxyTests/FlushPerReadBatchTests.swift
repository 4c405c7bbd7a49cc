@testable import LoupeProxy
import NIOCore
import NIOEmbedded
import Testing

/// Stands in for a TLS handler and what follows it: writes and flushes twice per read (a last
/// flight, then the first application frames), or on request outside a read.
final class TwoFlushesPerRead: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    var closeAfterWriting = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "flight")), promise: nil)
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "settings")), promise: nil)
        if closeAfterWriting { context.close(promise: nil) }
    }
}

@Suite struct FlushPerReadBatchTests {
    func make() throws -> (EmbeddedChannel, SocketSideCounter, TwoFlushesPerRead) {
        let channel = EmbeddedChannel()
        let counter = SocketSideCounter(), app = TwoFlushesPerRead()
        try channel.pipeline.syncOperations.addHandlers([counter, TLSIntercept.FlushPerReadBatch(), app])
        return (channel, counter, app)
    }

    @Test func flushesDuringAReadBatchGoOutOnceAtItsEnd() throws {
        let (channel, counter, _) = try make()
        channel.pipeline.syncOperations.fireChannelRead(NIOAny(ByteBuffer(string: "finished")))
        #expect(counter.flushes == 0)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        channel.pipeline.syncOperations.fireChannelReadComplete()
        #expect(counter.flushes == 1)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "flight"))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "settings"))
    }

    @Test func flushesOutsideAReadBatchPassAtOnce() throws {
        let (channel, counter, _) = try make()
        try channel.writeInbound(ByteBuffer(string: "finished")) // a whole batch
        #expect(counter.flushes == 1)
        channel.writeAndFlush(ByteBuffer(string: "response"), promise: nil)
        #expect(counter.flushes == 2)
        _ = try channel.readOutbound(as: ByteBuffer.self)
        _ = try channel.readOutbound(as: ByteBuffer.self)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "response"))
    }

    @Test func aCloseInsideABatchFlushesWhatWaitsFirst() throws {
        let (channel, counter, app) = try make()
        app.closeAfterWriting = true
        channel.pipeline.syncOperations.fireChannelRead(NIOAny(ByteBuffer(string: "finished")))
        #expect(counter.flushes == 1)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "flight"))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "settings"))
    }
}
