import LoupeFlow
import LoupePolicy
import LoupeProtocols
import NIOCore

/// DNS over TCP (RFC 7766): two-byte length, message, several per connection, both ways.
/// Sits before the `RelayHandler` on each side and hands it whole frames; the bytes go on
/// unchanged. Client side: each query is recorded, checked against DNS rules (a denied one
/// is answered REFUSED here and not forwarded), and malformed queries are answered FORMERR.
/// Server side: each answer is paired with its query by id for the RESPONSE flow.
final class DNSStreamHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// What both sides share: the queries waiting for their answers, by id.
    final class Session {
        var pending: [UInt16: (query: DNSMessage, startNanos: UInt64)] = [:]
    }

    static let maxFrame = 65_535
    private let connection: ProxyConnection
    private let session: Session
    private let fromClient: Bool
    private var buffer: ByteBuffer?

    init(connection: ProxyConnection, session: Session, side: ConnectionStateMachine.Side) {
        self.connection = connection
        self.session = session
        self.fromClient = side == .client
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if buffer == nil { buffer = incoming } else { buffer!.writeBuffer(&incoming) }
        while let frame = nextFrame() { handle(frame, context: context) }
        // A frame is at most 64 KiB + 2: what is held is bounded.
    }

    private func nextFrame() -> ByteBuffer? {
        guard var b = buffer, let length = b.getInteger(at: b.readerIndex, as: UInt16.self),
              b.readableBytes >= 2 + Int(length) else { return nil }
        let frame = b.readSlice(length: 2 + Int(length))!
        buffer = b.readableBytes > 0 ? b : nil
        return frame
    }

    private func handle(_ frame: ByteBuffer, context: ChannelHandlerContext) {
        let message = Array(frame.readableBytesView.dropFirst(2))
        let c = connection.context
        let env = connection.environment
        if fromClient {
            switch DNSMessage.parse(message) {
            case .success(let q) where !q.isResponse && !q.questions.isEmpty:
                let decision = connection.currentDecision()
                if decision.isEnforced, !decision.allows(dnsQuery: q.questions[0].name) {
                    env.count(.dnsQueriesPolicyDenied)
                    env.record(DNSFlows.request(q, context: c, verdict: .dropped, dropReason: .policyDenied, udp: false))
                    let refused = DNSMessage.reply(to: q, rcode: .refused)
                    env.record(DNSFlows.response(refused, query: q, latencyNanos: 0, context: c, verdict: .dropped, dropReason: .policyDenied, udp: false))
                    answerLocally(refused, context: context)
                    return
                }
                env.record(DNSFlows.request(q, context: c, udp: false))
                session.pending[q.id] = (q, monotonicNanos())
                context.fireChannelRead(wrapInboundOut(frame))
            case .success:
                reject(message, reason: "not a query with a question", context: context)
            case .failure(let e):
                reject(message, reason: e.description, context: context)
            }
        } else {
            if case .success(let r) = DNSMessage.parse(message), let (q, started) = session.pending.removeValue(forKey: r.id) {
                env.record(DNSFlows.response(r, query: q, latencyNanos: monotonicNanos() &- started, context: c, udp: false))
            } else {
                env.count(.dnsUnmatchedAnswers)
            }
            context.fireChannelRead(wrapInboundOut(frame)) // answers always go on unchanged
        }
    }

    private func reject(_ message: [UInt8], reason: String, context: ChannelHandlerContext) {
        connection.environment.count(.dnsMalformedQueries)
        connection.environment.record(connection.context.flow(
            verdict: .error, type: .l7, l7: Layer7(type: .request, latencyNs: 0, dns: DNS(query: "", qtypes: [])),
            reply: false, summary: "DNS malformed query answered FORMERR: \(reason)"))
        answerLocally(DNSMessage.formatError(replyingTo: message), context: context)
    }

    /// Writes `m` back to the client as a TCP DNS frame.
    private func answerLocally(_ m: DNSMessage, context: ChannelHandlerContext) {
        let bytes = m.serialize()
        var out = context.channel.allocator.buffer(capacity: bytes.count + 2)
        out.writeInteger(UInt16(bytes.count))
        out.writeBytes(bytes)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        connection.wrote(to: .client)
    }
}
