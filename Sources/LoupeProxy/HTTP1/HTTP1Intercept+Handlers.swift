import LoupeFlow
import LoupePolicy
import LoupeProtocols
import NIOCore
import NIOHTTP1

extension HTTP1Intercept {
    /// What both sides of an intercepted HTTP/1 connection share: the glue (backpressure) and
    /// the exchanges in flight (`StateMachine`: responses paired with requests).
    final class Session {
        let connection: ProxyConnection
        let glue = Glue()
        var exchanges = StateMachine()
        weak var client: DownstreamHandler?

        init(connection: ProxyConnection) { self.connection = connection }
    }

    /// A handler of either side: its glue and connection are the session's.
    protocol SessionHandler: Glued { var session: Session { get } }

    static func pair(connection: ProxyConnection, maxHeaderBytes: Int) -> (DownstreamHandler, UpstreamHandler) {
        let session = Session(connection: connection)
        let down = DownstreamHandler(session: session, maxHeaderBytes: maxHeaderBytes)
        session.client = down
        return (down, UpstreamHandler(session: session, maxHeaderBytes: maxHeaderBytes))
    }

    /// The bytes of one read, forwarded as they came: the parser walks them for policy and
    /// flows, and whatever is passed on unchanged goes out as one slice of the read. What is not
    /// passed on (a denied request, a head whose framing is rewritten) cuts the run.
    struct Run {
        /// The buffer as it was where the run starts (its readable bytes begin there).
        private var origin: ByteBuffer

        init(_ buffer: ByteBuffer) { origin = buffer }

        /// The bytes from the run's start up to the buffer's reader index, and a new run after.
        mutating func take(_ buffer: ByteBuffer) -> ByteBuffer? {
            defer { origin = buffer }
            let n = buffer.readerIndex - origin.readerIndex
            return n > 0 ? origin.getSlice(at: origin.readerIndex, length: n) : nil
        }

        /// The next `n` bytes are not passed on.
        mutating func skip(_ buffer: inout ByteBuffer, _ n: Int, forward: (ByteBuffer) -> Void) {
            if let bytes = take(buffer) { forward(bytes) }
            buffer.moveReaderIndex(forwardBy: n)
            origin = buffer
        }
    }

    /// What was read but not parsed yet (a head cut by the read), ahead of the next read.
    static func joined(_ held: inout ByteBuffer?, _ buffer: ByteBuffer) -> ByteBuffer {
        guard var before = held else { return buffer }
        held = nil
        var more = buffer
        before.writeBuffer(&more)
        return before
    }

    /// Downstream (client) side: each request's head is parsed for policy and its flow, and the
    /// bytes go upstream as they came, head and body, never buffered whole; reads pause while the
    /// upstream socket is not writable. Malformed input gets a 400.
    final class DownstreamHandler: SessionHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        let session: Session
        let side = ConnectionStateMachine.Side.client
        private var parser: HTTP1RequestParser
        private var unparsed: ByteBuffer?
        /// After an Upgrade request or CONNECT the parser stops: what follows is the tunnel's.
        private var stopped = false
        private var rejected = false
        /// The current request was denied: its body goes nowhere.
        private var discardingBody = false

        init(session: Session, maxHeaderBytes: Int) {
            self.session = session
            parser = HTTP1RequestParser(maxHeaderBytes: maxHeaderBytes)
        }

        /// Writes bytes toward the destination.
        private func forward(_ bytes: ByteBuffer) {
            if glue.write(NIOAny(bytes), to: .server) { connection.wrote(to: .server) }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !rejected else { return }
            var buffer = HTTP1Intercept.joined(&unparsed, unwrapInboundIn(data))
            do {
                try parse(&buffer)
            } catch let failure as HTTP1RequestParser.Failure {
                return reject(context: context, failure)
            } catch {
                return connection.close()
            }
            if buffer.readableBytes > 0 { unparsed = buffer }
        }

        private func parse(_ buffer: inout ByteBuffer) throws {
            var run = Run(buffer)
            defer { if let rest = run.take(buffer) { forward(rest) } }
            while !stopped {
                let (step, consumed) = try buffer.withUnsafeReadableBytes { try parser.step($0) }
                switch step {
                case .needMore:
                    return
                case .stopped:
                    stopped = true
                case .skip, .body:
                    if discardingBody { run.skip(&buffer, consumed, forward: forward) } else { buffer.moveReaderIndex(forwardBy: consumed) }
                case .end:
                    if discardingBody { run.skip(&buffer, consumed, forward: forward) } else { buffer.moveReaderIndex(forwardBy: consumed) }
                    discardingBody = false
                case .head(let head):
                    if requestHead(head) && !head.framingRewritten {
                        buffer.moveReaderIndex(forwardBy: consumed)
                    } else {
                        run.skip(&buffer, consumed, forward: forward)
                        if !discardingBody { forward(ByteBuffer(bytes: head.serialized)) }
                    }
                }
            }
        }

        /// Policy, the exchange and its REQUEST flow; true when the head goes on.
        private func requestHead(_ head: HTTP1RequestParser.Head) -> Bool {
            let c = connection.context
            let host = head.fields.first("host")
            let decision = connection.currentDecision()
            // Facts are built only when a policy applies: the unenforced path stays lean.
            let denied = decision.isEnforced && !decision.allows(HTTPRequestFacts(
                method: head.method, path: head.target, host: host ?? c.authorityFallback,
                headers: head.fields.map { (name: $0.name, value: $0.value) }))
            let action = session.exchanges.requestHead(
                method: head.method, uri: head.target, host: host,
                fallbackAuthority: c.authorityFallback, version: head.minor == 1 ? "HTTP/1.1" : "HTTP/1.0",
                upgrade: head.leavesHTTP, nowNanos: monotonicNanos(),
                denied: denied, keepAlive: head.isKeepAlive, scheme: c.scheme)
            switch action {
            case .forward(let exchange):
                recordRequest(exchange, head.fields, verdict: .forwarded)
                return true
            case .respondLocally(let exchange):
                recordRequest(exchange, head.fields, verdict: .dropped)
                discardingBody = true
                respondDenied(exchange)
            case .holdLocalResponse(let exchange):
                recordRequest(exchange, head.fields, verdict: .dropped)
                discardingBody = true
            }
            return false
        }

        private func recordRequest(_ e: Exchange, _ fields: [HTTP1RequestParser.Field], verdict: Verdict) {
            let url = e.url
            connection.environment.record(connection.context.flow(
                verdict: verdict, type: .l7,
                l7: Layer7(type: .request, latencyNs: 0, http: HTTP(
                    method: e.method, url: url, protocol: e.version,
                    headers: fields.map { HTTP.Header(key: $0.name, value: $0.value) })),
                reply: false, dropReason: verdict == .dropped ? .policyDenied : nil)) // summary: said from the HTTP record
        }

        /// The policy's answer to a denied request: 403 `Access denied`, as Cilium's proxy
        /// gives; the connection stays usable unless the client asked to close or to leave HTTP.
        func respondDenied(_ e: Exchange) {
            guard let context = glue.context(.client) else { return }
            connection.environment.count(.httpRequestsPolicyDenied)
            let url = e.url
            let latency = monotonicNanos() &- e.startNanos
            connection.environment.record(connection.context.flow(
                verdict: .dropped, type: .l7,
                l7: Layer7(type: .response, latencyNs: latency,
                           http: HTTP(code: 403, method: e.method, url: url, protocol: e.version, headers: [])),
                reply: true, dropReason: .policyDenied)) // summary: said from the HTTP record
            let close = !e.keepAlive || e.wantsTunnel
            let done = context.writeAndFlush(wrapOutboundOut(HTTP1Intercept.response(
                .forbidden, body: Self.accessDenied, close: close, allocator: context.channel.allocator)))
            connection.wrote(to: .client)
            if close {
                let conn = connection
                done.assumeIsolated().whenComplete { _ in conn.close() }
            }
        }

        static let accessDenied = ByteBuffer(string: "Access denied\r\n")

        func channelReadComplete(context: ChannelHandlerContext) {
            glue.flush(.server)
        }

        /// Writes response bytes toward the client (from the upstream side).
        func write(_ bytes: ByteBuffer) {
            guard !rejected, glue.write(wrapOutboundOut(bytes), to: .client) else { return }
            connection.wrote(to: .client)
        }

        /// Removed when the connection becomes a tunnel: what the client sent after its request
        /// goes on to the relay installed after this handler.
        func handlerRemoved(context: ChannelHandlerContext) {
            if stopped, let rest = unparsed, rest.readableBytes > 0 { context.fireChannelRead(NIOAny(rest)) }
            unparsed = nil
            glue.detach(side)
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            connection.close()
        }

        /// 502 with the reason the destination's response could not be relayed.
        func badGateway(_ reason: String) {
            guard !rejected, let context = glue.context(.client) else { return connection.close() }
            refuse(context, .badGateway, exchange: session.exchanges.next,
                   summary: "HTTP/1.1 502 malformed response from the destination: \(reason)",
                   text: "Bad Gateway: malformed response from the destination: \(reason)")
        }

        /// 400 (501, 505) with the reason: the client's framing can no longer be trusted, so the
        /// connection cannot be reused.
        private func reject(context: ChannelHandlerContext, _ failure: HTTP1RequestParser.Failure) {
            connection.environment.count(.httpRequestsRejected)
            let status = HTTPResponseStatus(statusCode: failure.status)
            let what = failure.status == 400 ? "malformed request rejected" : "request rejected"
            refuse(context, status, exchange: nil, summary: "HTTP/1.1 \(failure.status) \(what): \(failure.reason)",
                   text: "\(status.reasonPhrase): \(failure.reason)")
        }

        /// The proxy's own last answer on this connection: an ERROR flow (for the exchange it
        /// ends, if any), the status with `text`, then close; nothing more is read or relayed.
        private func refuse(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, exchange e: Exchange?,
                            summary: String, text: String) {
            rejected = true
            unparsed = nil
            connection.environment.record(connection.context.flow(
                verdict: .error, type: .l7,
                l7: Layer7(type: .response, latencyNs: e.map { monotonicNanos() &- $0.startNanos } ?? 0,
                           http: HTTP(code: Int(status.code), method: e?.method ?? "", url: e?.url ?? "",
                                      protocol: e?.version ?? "HTTP/1.1", headers: [])),
                reply: true, summary: summary))
            HTTP1Intercept.answerAndClose(context, status: status, text: text) { self.connection.close() }
        }
    }

    /// Upstream (server) side: each response's head is parsed for its RESPONSE flow (paired with
    /// its request) and its body framed to find its end; the bytes go back to the client as they
    /// came.
    final class UpstreamHandler: SessionHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        let session: Session
        let side = ConnectionStateMachine.Side.server
        private var parser: HTTP1ResponseParser
        private var unparsed: ByteBuffer?
        private var tunnelAfterEnd = false
        /// What opened the tunnel (`Upgrade: websocket`, `CONNECT`), for the connection's flow.
        private var tunnel = ""
        /// The response being read answers a request that left HTTP/1 and does not open the
        /// tunnel (the server declined): the connection closes after it.
        private var closeAfterEnd = false
        private var closing = false

        init(session: Session, maxHeaderBytes: Int) {
            self.session = session
            parser = HTTP1ResponseParser(maxHeaderBytes: maxHeaderBytes)
        }

        private var partner: DownstreamHandler? { session.client }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = HTTP1Intercept.joined(&unparsed, unwrapInboundIn(data))
            do {
                try parse(&buffer)
            } catch {
                // A response the proxy cannot frame: 502 if none of it went to the client yet,
                // else the connection closes mid-response.
                connection.environment.count(.upstreamErrors)
                let reason = (error as? HTTP1ResponseParser.Failure)?.reason ?? "\(error)"
                if parser.atResponseStart, let partner { partner.badGateway(reason) } else { connection.close() }
                return
            }
            if buffer.readableBytes > 0 { unparsed = buffer }
            if closing {
                closing = false
                glue.flush(.client)
                let conn = connection
                connection.lastWrite(to: .client).assumeIsolated().whenComplete { _ in conn.close() }
            }
            if tunnelAfterEnd, let partner {
                glue.flush(.client)
                tunnelAfterEnd = false
                connection.tunnelOpened(by: tunnel, downstreamHTTP: partner, upstreamHTTP: self)
            }
        }

        private func parse(_ buffer: inout ByteBuffer) throws {
            var run = Run(buffer)
            let forward = { (bytes: ByteBuffer) in self.partner?.write(bytes) }
            defer { if let rest = run.take(buffer) { forward(rest) } }
            while true {
                let answering: HTTP1ResponseParser.Request = switch session.exchanges.next?.method {
                case "HEAD": .head
                case "CONNECT": .connect
                default: .other
                }
                let (step, consumed) = try buffer.withUnsafeReadableBytes { try parser.step($0, answering: answering) }
                switch step {
                case .needMore:
                    return
                case .stopped:
                    // The tunnel's first bytes from the server: to the client as they are.
                    buffer.moveReaderIndex(to: buffer.writerIndex)
                    return
                case .skip, .body:
                    buffer.moveReaderIndex(forwardBy: consumed)
                case .head(let head):
                    buffer.moveReaderIndex(forwardBy: consumed)
                    responseHead(head)
                case .end:
                    buffer.moveReaderIndex(forwardBy: consumed)
                    if closeAfterEnd { closing = true }
                    let held = session.exchanges.responseEnd()
                    guard !held.isEmpty else { continue }
                    if let bytes = run.take(buffer) { forward(bytes) }
                    for e in held { partner?.respondDenied(e) }
                }
            }
        }

        private func responseHead(_ head: HTTP1ResponseParser.Head) {
            let c = connection.context
            switch session.exchanges.responseHead(code: head.code, nowNanos: monotonicNanos()) {
            case .forward(let e, let latency, _):
                record(e, head: head, latency: latency, context: c)
                // The request parser stops after an Upgrade/CONNECT request; when the server
                // declines, the connection cannot carry another request.
                closeAfterEnd = e.wantsTunnel
            case .forwardThenTunnel(let e, let latency, _):
                record(e, head: head, latency: latency, context: c)
                tunnelAfterEnd = true
                tunnel = head.code == 101 ? "Upgrade: \(head.fields.first("upgrade") ?? "?")" : e.method
            case .informational:
                break
            case .unsolicited:
                connection.environment.count(.httpUnsolicitedResponses)
            }
        }

        private func record(_ e: Exchange, head: HTTP1ResponseParser.Head, latency: UInt64, context c: ConnectionContext) {
            connection.environment.record(c.flow(
                verdict: .forwarded, type: .l7,
                l7: Layer7(type: .response, latencyNs: latency, http: HTTP(
                    code: head.code, method: e.method, url: e.url, protocol: e.version,
                    headers: head.fields.map { HTTP.Header(key: $0.name, value: $0.value) })),
                reply: true)) // summary: said from the HTTP record
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            glue.flush(.client)
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            connection.environment.count(.upstreamErrors)
            connection.close()
        }
    }
}

extension HTTP1Intercept {
    /// A response of the proxy's own: status, a text/plain body, `connection: close` if asked.
    static func response(_ status: HTTPResponseStatus, body: ByteBuffer, close: Bool, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: 128 + body.readableBytes)
        out.writeString("HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\ncontent-type: text/plain\r\ncontent-length: \(body.readableBytes)\r\n")
        if close { out.writeString("connection: close\r\n") }
        out.writeString("\r\n")
        out.writeImmutableBuffer(body)
        return out
    }

    /// The proxy's own final answer on a connection it then closes (400 for a malformed
    /// request, 502 for a refused HTTPS destination): `text` and CRLF as text/plain, written as
    /// bytes to the client.
    static func answerAndClose(_ context: ChannelHandlerContext, status: HTTPResponseStatus, text: String,
                               then close: @escaping () -> Void) {
        let body = ByteBuffer(string: text + "\r\n")
        context.writeAndFlush(NIOAny(response(status, body: body, close: true, allocator: context.channel.allocator)))
            .assumeIsolated().whenComplete { _ in close() }
    }
}

extension HTTP1Intercept.SessionHandler {
    var glue: Glue { session.glue }
    var connection: ProxyConnection { session.connection }
}
