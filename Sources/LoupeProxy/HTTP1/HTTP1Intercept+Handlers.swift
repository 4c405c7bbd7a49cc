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

    static func pair(connection: ProxyConnection) -> (DownstreamHandler, UpstreamHandler) {
        let session = Session(connection: connection)
        let down = DownstreamHandler(session: session)
        session.client = down
        return (down, UpstreamHandler(session: session))
    }

    /// Downstream (client) side: parsed requests go upstream part by part, never buffered whole;
    /// reads pause while the upstream socket is not writable. Malformed input gets a 400.
    final class DownstreamHandler: SessionHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundIn = HTTPServerResponsePart
        typealias OutboundOut = HTTPServerResponsePart

        let session: Session
        let side = ConnectionStateMachine.Side.client
        private var rejected = false
        /// The current request was denied: its body goes nowhere.
        private var discardingBody = false

        init(session: Session) { self.session = session }

        /// Writes a request part toward the destination.
        private func forward(_ part: HTTPClientRequestPart) {
            if let written = glue.write(NIOAny(part), to: .server) { connection.wrote(written, to: .server) }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !rejected else { return }
            switch unwrapInboundIn(data) {
            case .head(let head):
                let c = connection.context
                let host = head.headers.first(name: "host")
                let decision = connection.currentDecision()
                // Facts are built only when a policy applies: the unenforced path stays lean.
                let denied = decision.isEnforced && !decision.allows(HTTPRequestFacts(
                    method: head.method.rawValue, path: head.uri, host: host ?? c.authorityFallback,
                    headers: head.headers.map { (name: $0.name, value: $0.value) }))
                let action = session.exchanges.requestHead(
                    method: head.method.rawValue, uri: head.uri, host: host,
                    fallbackAuthority: c.authorityFallback, version: Self.versionString(head.version),
                    upgrade: head.headers.contains(name: "upgrade"), nowNanos: monotonicNanos(),
                    denied: denied, keepAlive: head.isKeepAlive, scheme: c.scheme)
                switch action {
                case .forward(let exchange):
                    recordRequest(exchange, head: head, verdict: .forwarded)
                    forward(.head(head))
                case .respondLocally(let exchange):
                    recordRequest(exchange, head: head, verdict: .dropped)
                    discardingBody = true
                    respondDenied(exchange)
                case .holdLocalResponse(let exchange):
                    recordRequest(exchange, head: head, verdict: .dropped)
                    discardingBody = true
                }
            case .body(let buffer):
                if !discardingBody { forward(.body(.byteBuffer(buffer))) }
            case .end(let trailers):
                if discardingBody { discardingBody = false } else { forward(.end(trailers)) }
            }
        }

        private func recordRequest(_ e: Exchange, head: HTTPRequestHead, verdict: Verdict) {
            let url = e.url
            connection.environment.record(connection.context.flow(
                verdict: verdict, type: .l7,
                l7: Layer7(type: .request, latencyNs: 0, http: HTTP(
                    method: e.method, url: url, protocol: e.version,
                    headers: head.headers.map { HTTP.Header(key: $0.name, value: $0.value) })),
                reply: false, summary: "\(e.version) \(e.method) \(url)",
                dropReason: verdict == .dropped ? .policyDenied : nil))
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
                reply: true, summary: "\(e.version) 403 \(latency / 1_000_000)ms (\(e.method) \(url))",
                dropReason: .policyDenied))
            let close = !e.keepAlive || e.wantsTunnel
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "text/plain")
            headers.add(name: "content-length", value: String(Self.accessDenied.readableBytes))
            if close { headers.add(name: "connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .forbidden, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(Self.accessDenied))), promise: nil)
            let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
            connection.wrote(done, to: .client)
            if close {
                let conn = connection
                done.assumeIsolated().whenComplete { _ in conn.close() }
            }
        }

        static let accessDenied = ByteBuffer(string: "Access denied\r\n")

        func channelReadComplete(context: ChannelHandlerContext) {
            glue.flush(.server)
        }

        /// Writes a response part toward the client (from the upstream side).
        func write(_ part: HTTPServerResponsePart) {
            guard !rejected, let written = glue.write(wrapOutboundOut(part), to: .client) else { return }
            connection.wrote(written, to: .client)
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            // Once refused, what the client still sends (the decoder reports it as an error) is dropped.
            guard !rejected else { return }
            guard let failure = error as? HTTP1RequestParser.Failure else {
                connection.close()
                return
            }
            reject(context: context, failure)
        }

        /// 400 (501, 505) with the reason, an ERROR flow naming it, then close: the client's
        /// framing can no longer be trusted, so the connection cannot be reused.
        private func reject(context: ChannelHandlerContext, _ failure: HTTP1RequestParser.Failure) {
            rejected = true
            connection.environment.count(.httpRequestsRejected)
            let c = connection.context
            let status = HTTPResponseStatus(statusCode: failure.status)
            let what = failure.status == 400 ? "malformed request rejected" : "request rejected"
            connection.environment.record(c.flow(
                verdict: .error, type: .l7,
                l7: Layer7(type: .response, latencyNs: 0,
                           http: HTTP(code: failure.status, method: "", url: "", protocol: "HTTP/1.1", headers: [])),
                reply: true, summary: "HTTP/1.1 \(failure.status) \(what): \(failure.reason)"))
            HTTP1Intercept.answerAndClose(context, status: status, text: "\(status.reasonPhrase): \(failure.reason)") {
                self.connection.close()
            }
        }

        static func versionString(_ v: HTTPVersion) -> String { "HTTP/\(v.major).\(v.minor)" }
    }

    /// Upstream (server) side: responses go back to the client part by part, each final response
    /// paired with its request for the RESPONSE flow.
    final class UpstreamHandler: SessionHandler {
        typealias InboundIn = HTTPClientResponsePart
        typealias OutboundIn = HTTPClientRequestPart
        typealias OutboundOut = HTTPClientRequestPart

        let session: Session
        let side = ConnectionStateMachine.Side.server
        private var tunnelAfterEnd = false
        /// What opened the tunnel (`Upgrade: websocket`, `CONNECT`), for the connection's flow.
        private var tunnel = ""
        private var closeAfterEnd = false

        init(session: Session) { self.session = session }

        private var partner: DownstreamHandler? { session.client }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(var head):
                Self.normalizeChunked(&head.headers)
                let code = Int(head.status.code)
                let c = connection.context
                switch session.exchanges.responseHead(code: code, nowNanos: monotonicNanos()) {
                case .forward(let e, let latency, _):
                    record(e, head: head, latency: latency, context: c)
                    // NIO's request decoder stops parsing after an Upgrade/CONNECT request; when
                    // the server declines, the connection cannot carry another request.
                    closeAfterEnd = e.wantsTunnel
                case .forwardThenTunnel(let e, let latency, _):
                    record(e, head: head, latency: latency, context: c)
                    tunnelAfterEnd = true
                    tunnel = code == 101 ? "Upgrade: \(head.headers.first(name: "upgrade") ?? "?")" : e.method
                case .informational:
                    break
                case .unsolicited:
                    connection.environment.count(.httpUnsolicitedResponses)
                }
                partner?.write(.head(head))
            case .body(let buffer):
                partner?.write(.body(.byteBuffer(buffer)))
            case .end(let trailers):
                partner?.write(.end(trailers))
                for held in session.exchanges.responseEnd() { partner?.respondDenied(held) }
                // The decoder delivers .end for a 101 too, then stops parsing: only now may the
                // codecs go (removing them at .head crashed the relay with the pending .end).
                if closeAfterEnd {
                    closeAfterEnd = false
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
        }

        /// NIO's response decoder removes a chunked body's framing whatever the spelling, and
        /// its encoder puts it back only for `transfer-encoding: chunked` spelled so: a server's
        /// `Chunked` is normalised, or the pod would read the body's bytes as chunks.
        static func normalizeChunked(_ headers: inout HTTPHeaders) {
            let values = headers[canonicalForm: "transfer-encoding"]
            guard !values.isEmpty, values != ["chunked"],
                  values.map({ $0.lowercased() }) == ["chunked"] else { return }
            headers.replaceOrAdd(name: "transfer-encoding", value: "chunked")
        }

        private func record(_ e: Exchange, head: HTTPResponseHead, latency: UInt64, context c: ConnectionContext) {
            let code = Int(head.status.code)
            let ms = latency / 1_000_000
            connection.environment.record(c.flow(
                verdict: .forwarded, type: .l7,
                l7: Layer7(type: .response, latencyNs: latency, http: HTTP(
                    code: code, method: e.method, url: e.url, protocol: e.version,
                    headers: head.headers.map { HTTP.Header(key: $0.name, value: $0.value) })),
                reply: true, summary: "\(e.version) \(code) \(ms)ms (\(e.method) \(e.url))"))
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
    /// The proxy's own final answer on a connection it then closes (400 for a malformed
    /// request, 502 for a refused HTTPS destination): `text` and CRLF as text/plain.
    static func answerAndClose(_ context: ChannelHandlerContext, status: HTTPResponseStatus, text: String,
                               then close: @escaping () -> Void) {
        var body = context.channel.allocator.buffer(capacity: text.utf8.count + 2)
        body.writeString(text + "\r\n")
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "text/plain")
        headers.add(name: "content-length", value: String(body.readableBytes))
        headers.add(name: "connection", value: "close")
        context.write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
                      promise: nil)
        context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil))).assumeIsolated().whenComplete { _ in close() }
    }
}

extension HTTP1Intercept.SessionHandler {
    var glue: Glue { session.glue }
    var connection: ProxyConnection { session.connection }
}
