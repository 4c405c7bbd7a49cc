@testable import LoupeProxy
import NIOCore
import NIOEmbedded
import NIOHTTP2
import Testing

/// Which client connections share an upstream HTTP/2 connection, and when one is made: the
/// pool's choices on an embedded channel (the destination's connection), no sockets.
@Suite struct HTTP2UpstreamPoolTests {
    typealias Pool = HTTP2Intercept.Pool
    typealias Upstream = HTTP2Intercept.Upstream

    let key = Upstream.Key(source: nil, destination: try! SocketAddress(ipAddress: "198.19.0.12", port: 8443),
                           serverName: "secure.example.test")

    /// A shared connection on an active embedded channel, registered in `pool`.
    func link(_ pool: Pool, maxSessions: Int) throws -> (Upstream, EmbeddedChannel) {
        let channel = EmbeddedChannel()
        try channel.connect(to: key.destination).wait()
        let anchor = HalfCloseHolder()
        try channel.pipeline.syncOperations.addHandler(anchor)
        let link = try Upstream(channel: channel, after: anchor, key: key, pool: pool, limits: HTTP2Limits(), maxSessions: maxSessions)
        return (link, channel)
    }

    @Test func aBurstOfClientConnectionsWaitsForOneHandshakeAndSharesItsConnection() throws {
        let pool = Pool()
        var settledWith: [Upstream?] = []
        guard case .handshake(let h) = pool.choose(key, maxSessions: 4, whenSettled: { _ in Issue.record("the maker is not a waiter") }) else {
            Issue.record("the first connection makes the handshake")
            return
        }
        for _ in 0..<3 {
            guard case .wait = pool.choose(key, maxSessions: 4, whenSettled: { settledWith.append($0) }) else {
                Issue.record("the next ones wait for it")
                return
            }
        }
        // Four sessions at most per connection: the fifth makes a handshake of its own.
        guard case .handshake(let second) = pool.choose(key, maxSessions: 4, whenSettled: { _ in }) else {
            Issue.record("a full handshake's waiters are not added to")
            return
        }
        let (shared, channel) = try link(pool, maxSessions: 4)
        shared.reserve() // the maker's
        pool.settled(h, key: key, link: shared)
        #expect(settledWith.count == 3 && settledWith.allSatisfy { $0 === shared })
        for _ in 0..<3 { shared.reserve() }
        #expect(!shared.acceptsSession, "four reserved: full")
        pool.settled(second, key: key, link: nil)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test func aFailedHandshakeSendsTheWaitersToMakeTheirOwn() {
        let pool = Pool()
        var settledWith: [Upstream?] = []
        guard case .handshake(let h) = pool.choose(key, maxSessions: 16, whenSettled: { _ in }) else { Issue.record("maker"); return }
        _ = pool.choose(key, maxSessions: 16) { settledWith.append($0) }
        pool.settled(h, key: key, link: nil)
        #expect(settledWith.count == 1 && settledWith[0] == nil)
        guard case .handshake = pool.choose(key, maxSessions: 16, whenSettled: { _ in }) else { Issue.record("none left in flight"); return }
    }

    @Test func anEstablishedConnectionIsSharedUntilTheDestinationSaysGoAway() throws {
        let pool = Pool()
        let (shared, channel) = try link(pool, maxSessions: 16)
        guard case .share(let got) = pool.choose(key, maxSessions: 16, whenSettled: { _ in }) else { Issue.record("shared"); return }
        #expect(got === shared)
        got.release()
        shared.frameArrived(HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil)))
        #expect(!shared.acceptsSession)
        guard case .handshake = pool.choose(key, maxSessions: 16, whenSettled: { _ in }) else { Issue.record("a new one is made"); return }
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test func theDestinationsConcurrentStreamLimitBoundsSharing() throws {
        let pool = Pool()
        let (shared, channel) = try link(pool, maxSessions: 16)
        shared.frameArrived(HTTP2Frame(streamID: .rootStream, payload: .settings(.settings([
            HTTP2Setting(parameter: .maxConcurrentStreams, value: 0)]))))
        #expect(!shared.acceptsSession, "no stream allowed: nothing to share")
        _ = try channel.finish(acceptAlreadyClosed: true)
    }
}

/// Stands where the connection's read gate is when an `Upstream` takes a channel over.
final class HalfCloseHolder: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
}
