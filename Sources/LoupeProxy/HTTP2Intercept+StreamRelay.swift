import LoupeFlow
import LoupePolicy
import NIOCore
import NIOHPACK
import NIOHTTP2

extension HTTP2Intercept {
    /// What the two sides of one stream share: its exchange (which flows, when).
    final class StreamPair {
        var exchange = Exchange()
    }

    /// One side of a stream pair (`client`: the pod's stream; otherwise the destination's).
    /// Frames are relayed to the partner as they come; a stream reads only while its partner can
    /// take more, so a slow reader stalls only its own stream and memory stays within one
    /// flow-control window per stream. Frames that arrive before the partner stream exists wait
    /// here (bounded the same way).
    final class StreamRelay: ChannelDuplexHandler {
        typealias InboundIn = HTTP2Frame.FramePayload
        typealias OutboundIn = HTTP2Frame.FramePayload
        typealias OutboundOut = HTTP2Frame.FramePayload

        let session: Session
        let client: Bool
        let pair: StreamPair
        var partner: StreamRelay?
        var context: ChannelHandlerContext?
        private var waiting: [HTTP2Frame.FramePayload] = []
        /// The last frame written into this stream: closing waits for it.
        private var lastWrite: EventLoopFuture<Void>?
        /// This side's peer ended its half of the stream (END_STREAM seen inbound).
        private var receivedEnd = false
        private var pendingRead = false
        /// Denied by policy: the proxy answered; what the client still sends goes nowhere.
        private var answeredLocally = false

        init(session: Session, client: Bool, pair: StreamPair) {
            self.session = session
            self.client = client
            self.pair = pair
        }

        private var connection: ProxyConnection { session.connection }

        func handlerAdded(context: ChannelHandlerContext) {
            self.context = context
            flushWaiting()
        }

        func handlerRemoved(context: ChannelHandlerContext) {
            self.context = nil
            partner = nil
        }

        /// Writes (into this stream) the frames the partner received before this stream existed.
        private func flushWaiting() {
            guard let partner, let context, !partner.waiting.isEmpty else { return }
            for f in partner.waiting { lastWrite = context.write(wrapOutboundOut(f)) }
            partner.waiting.removeAll()
            context.flush()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let payload = unwrapInboundIn(data)
            switch payload {
            case .headers(let h):
                if h.endStream { receivedEnd = true }
                if client ? requestHeaders(h, context: context) : responseHeaders(h) { return }
            case .data(let d) where d.endStream: receivedEnd = true
            default: break
            }
            if answeredLocally { return }
            guard let partner, let target = partner.context else {
                waiting.append(payload)
                return
            }
            partner.lastWrite = target.write(wrapOutboundOut(payload))
        }

        /// Step 1 on the client's first HEADERS: REQUEST flow and policy verdict. Returns true
        /// when the frame was consumed here (denied).
        private func requestHeaders(_ h: HTTP2Frame.FramePayload.Headers, context: ChannelHandlerContext) -> Bool {
            let headers = h.headers
            let authority = headers.first(name: ":authority")
            guard let req = pair.exchange.request(
                method: headers.first(name: ":method"), scheme: headers.first(name: ":scheme"), authority: authority,
                path: headers.first(name: ":path"), contentType: headers.first(name: "content-type"),
                fallbackAuthority: connection.context.authorityFallback, now: monotonicNanos()
            ) else { return answeredLocally } // trailers
            let decision = connection.currentDecision()
            // Facts are built only when a policy applies: the unenforced path stays lean.
            let denied = decision.isEnforced && !decision.allows(HTTPRequestFacts(
                method: req.method, path: headers.first(name: ":path") ?? "/",
                host: authority ?? connection.context.authorityFallback,
                headers: headers.filter { !$0.name.hasPrefix(":") }.map { (name: $0.name, value: $0.value) }))
            connection.environment.record(connection.context.flow(
                verdict: denied ? .dropped : .forwarded, type: .l7,
                l7: Layer7(type: .request, latencyNs: 0, http: HTTP(method: req.method, url: req.url, protocol: "HTTP/2",
                                                                    headers: Self.flowHeaders(headers))),
                reply: false, summary: "HTTP/2 \(req.method) \(req.url)", dropReason: denied ? "POLICY_DENIED" : nil))
            if denied {
                respondDenied(context: context)
                return true
            }
            session.openUpstream(for: self)
            return false
        }

        /// Step 3: the destination's HEADERS (response head or trailers). Never consumed.
        private func responseHeaders(_ h: HTTP2Frame.FramePayload.Headers) -> Bool {
            let headers = h.headers
            if let r = pair.exchange.response(
                status: headers.first(name: ":status"), headers: Self.flowHeaders(headers),
                grpcStatus: headers.first(name: "grpc-status"), grpcMessage: headers.first(name: "grpc-message"),
                contentType: headers.first(name: "content-type"), endStream: h.endStream, now: monotonicNanos()
            ) {
                recordResponse(r, verdict: .forwarded)
            }
            return false
        }

        /// The policy's answer on this stream alone: `403 Access denied`, as for HTTP/1 (gRPC
        /// clients map 403 to PERMISSION_DENIED). Other streams of the connection go on.
        private func respondDenied(context: ChannelHandlerContext) {
            answeredLocally = true
            connection.environment.count("http_requests_policy_denied")
            if let r = pair.exchange.answeredLocally(code: 403, now: monotonicNanos()) {
                recordResponse(r, verdict: .dropped, dropReason: "POLICY_DENIED")
            }
            let body = HTTP1Intercept.DownstreamHandler.accessDenied
            let head = HPACKHeaders([(":status", "403"), ("content-type", "text/plain"),
                                     ("content-length", String(body.readableBytes))])
            context.write(wrapOutboundOut(.headers(.init(headers: head))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(body), endStream: true))), promise: nil)
        }

        /// No upstream stream can be had (the destination is going away): REFUSED_STREAM, which
        /// tells the client the request was not processed and may be retried.
        func refuse() {
            guard let context else { return }
            connection.environment.count("http2_streams_refused")
            partner = nil
            waiting.removeAll()
            context.writeAndFlush(wrapOutboundOut(.rstStream(.refusedStream)), promise: nil)
        }

        private func recordResponse(_ r: Exchange.Response, verdict: Verdict, dropReason: String? = nil) {
            connection.environment.record(connection.context.flow(
                verdict: r.incomplete ? .error : verdict, type: .l7,
                l7: Layer7(type: .response, latencyNs: r.latencyNanos,
                           http: HTTP(code: r.code == 0 ? nil : r.code, method: r.request.method, url: r.request.url,
                                      protocol: "HTTP/2", headers: r.headers)),
                reply: true, summary: r.summary, dropReason: dropReason))
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            partner?.context?.flush()
        }

        func channelWritabilityChanged(context: ChannelHandlerContext) {
            if context.channel.isWritable, let p = partner, p.pendingRead, let pc = p.context {
                p.pendingRead = false
                pc.read()
            }
            context.fireChannelWritabilityChanged()
        }

        func read(context: ChannelHandlerContext) {
            if partner?.context?.channel.isWritable ?? true { context.read() } else { pendingRead = true }
        }

        /// Why this stream closed, when it was not a normal end (from NIO's StreamClosedEvent).
        private var closeReason: HTTP2ErrorCode?

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let e = event as? StreamClosedEvent { closeReason = e.reason }
            context.fireUserInboundEventTriggered(event)
        }

        func channelInactive(context: ChannelHandlerContext) {
            // Ended normally (END_STREAM both ways went through us): the partner stream ends by
            // itself. Reset or aborted: the partner goes too, once what was relayed into it is
            // written — with the same error code, so a stream the destination refused stays
            // retryable for the client. Closing a finished stream would put a spurious
            // RST_STREAM on the wire, which clients count as an error.
            if let p = partner, let pc = p.context, !(receivedEnd && p.receivedEnd) {
                pc.flush()
                // NIO reports streams dropped by the destination's GOAWAY as CANCEL; they were
                // never processed, which REFUSED_STREAM says.
                var reason = closeReason
                if !client, let last = session.upstreamLastStreamID,
                   let id = try? context.channel.syncOptions?.getOption(HTTP2StreamChannelOptions.streamID), id > last {
                    reason = .refusedStream
                }
                (p.lastWrite ?? pc.eventLoop.makeSucceededVoidFuture()).whenComplete { _ in
                    if let reason, reason != .noError, pc.channel.isActive {
                        pc.writeAndFlush(NIOAny(HTTP2Frame.FramePayload.rstStream(reason)), promise: nil)
                    } else {
                        pc.close(promise: nil)
                    }
                }
            }
            if let r = pair.exchange.closed(now: monotonicNanos()) { recordResponse(r, verdict: .forwarded) }
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            context.close(promise: nil)
        }

        static func flowHeaders(_ h: HPACKHeaders) -> [HTTP.Header] {
            Redaction.headers(h.filter { !$0.name.hasPrefix(":") }.map { ($0.name, $0.value) })
        }
    }
}
