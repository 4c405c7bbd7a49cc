import LoupeFlow
import LoupePolicy
import NIOCore
import NIOHPACK
import NIOHTTP2

/// EXPERIMENTAL (off by default: `loupe agent --intercept-http2`): no per-stream policy, no
/// configured limits or GOAWAY draining yet. curl 7.88 (Debian 12) fails when it reuses a
/// prior-knowledge connection for a second URL ("Error in the HTTP2 framing layer", before it
/// sends anything): that is curl's bug #10634, fixed in 7.89 — h2load, nghttp and a
/// hand-written client reuse the connection fine. Without the flag h2c is relayed opaque.
///
/// HTTP/2 (prior knowledge, h2c) interception: the client's connection is terminated by an
/// HTTP/2 server stack and a client stack speaks to the original destination; each client
/// stream gets its own upstream stream, and frames (headers, data, trailers) are relayed per
/// stream with per-stream backpressure (a stream reads only while its partner stream can
/// take more, so one slow reader stalls only its own stream). Each stream gives a REQUEST and
/// a RESPONSE flow; for gRPC the response flow waits for the trailers to carry `grpc-status`.
enum HTTP2Intercept {
    static func install(connection: ProxyConnection, downstream ds: ChannelPipeline.SynchronousOperations,
                        after detect: ChannelHandler, upstream: Channel, us: ChannelPipeline.SynchronousOperations,
                        after gate: ChannelHandler) throws {
        let upstreamMux = try us.configureHTTP2Pipeline(
            mode: .client, connectionConfiguration: .init(), streamConfiguration: .init(),
            position: .after(gate),
            inboundStreamInitializer: { ch in ch.close() } // no server push through the proxy
        )
        _ = try ds.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: .init(), streamConfiguration: .init(),
            position: .after(detect),
            inboundStreamInitializer: { stream in
                // A client stream: pair it with a new upstream stream.
                let down = StreamRelay(connection: connection, client: true)
                let up = StreamRelay(connection: connection, client: false)
                down.partner = up
                up.partner = down
                upstreamMux.createStreamChannel(promise: nil) { upstreamStream in
                    upstreamStream.eventLoop.makeCompletedFuture { try upstreamStream.pipeline.syncOperations.addHandler(up) }
                }
                return stream.eventLoop.makeCompletedFuture { try stream.pipeline.syncOperations.addHandler(down) }
            }
        )
    }

    /// One side of a stream pair. Frames that arrive before the partner stream exists wait
    /// here (at most one flow-control window's worth).
    final class StreamRelay: ChannelDuplexHandler {
        typealias InboundIn = HTTP2Frame.FramePayload
        typealias OutboundIn = HTTP2Frame.FramePayload
        typealias OutboundOut = HTTP2Frame.FramePayload

        let connection: ProxyConnection
        let client: Bool
        var partner: StreamRelay?
        var context: ChannelHandlerContext?
        private var waiting: [HTTP2Frame.FramePayload] = []
        /// The last frame written into this stream: closing waits for it.
        private var lastWrite: EventLoopFuture<Void>?
        /// This side's peer ended its half of the stream (END_STREAM seen inbound).
        private var receivedEnd = false
        private var pendingRead = false
        // Flow state (client side records the request, server side the response).
        private var exchange: (method: String, url: String, started: UInt64)?
        private var grpc = false
        private var responseHead: HPACKHeaders?

        init(connection: ProxyConnection, client: Bool) {
            self.connection = connection
            self.client = client
        }

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
            case .headers(let h) where h.endStream: receivedEnd = true
            case .data(let d) where d.endStream: receivedEnd = true
            default: break
            }
            observe(payload)
            guard let partner, let target = partner.context else {
                waiting.append(payload)
                return
            }
            partner.lastWrite = target.write(wrapOutboundOut(payload))
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

        func channelInactive(context: ChannelHandlerContext) {
            // Ended normally (END_STREAM both ways went through us): the partner stream ends by
            // itself. Reset or aborted: the partner goes too, once what was relayed into it is
            // written (an RST then tells its peer). Closing a finished stream would put a
            // spurious RST_STREAM on the wire, which clients count as an error.
            if let p = partner, let pc = p.context, !(receivedEnd && p.receivedEnd) {
                pc.flush()
                (p.lastWrite ?? pc.eventLoop.makeSucceededVoidFuture()).whenComplete { _ in pc.close(promise: nil) }
            }
            if !client, let e = partner?.exchange, responseHead != nil, grpc { recordResponse(e, trailers: nil) }
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            context.close(promise: nil)
        }

        // MARK: flows

        private func observe(_ payload: HTTP2Frame.FramePayload) {
            guard case .headers(let h) = payload else { return }
            if client {
                guard exchange == nil else { return } // trailers from the client: nothing to record
                let method = h.headers.first(name: ":method") ?? "?"
                let scheme = h.headers.first(name: ":scheme") ?? "http"
                let authority = h.headers.first(name: ":authority") ?? connection.context.authorityFallback
                let path = h.headers.first(name: ":path") ?? "/"
                let url = Redaction.url("\(scheme)://\(authority)\(path)")
                exchange = (method, url, monotonicNanos())
                connection.environment.record(connection.context.flow(
                    verdict: .forwarded, type: .l7,
                    l7: Layer7(type: .request, latencyNs: 0, http: HTTP(method: method, url: url, protocol: "HTTP/2",
                                                                        headers: Self.flowHeaders(h.headers))),
                    reply: false, summary: "HTTP/2 \(method) \(url)"))
            } else {
                guard let e = partner?.exchange else { return }
                if responseHead == nil {
                    guard let status = h.headers.first(name: ":status"), let code = Int(status), code >= 200 else { return }
                    responseHead = h.headers
                    grpc = h.headers.first(name: "content-type")?.hasPrefix("application/grpc") ?? false
                    // gRPC carries its outcome in the trailers: record the response then.
                    if !grpc || h.endStream { recordResponse(e, trailers: h.endStream ? h.headers : nil) }
                } else if grpc {
                    recordResponse(e, trailers: h.headers)
                }
            }
        }

        private var recorded = false
        private func recordResponse(_ e: (method: String, url: String, started: UInt64), trailers: HPACKHeaders?) {
            guard !recorded, let head = responseHead else { return }
            recorded = true
            let code = Int(head.first(name: ":status") ?? "") ?? 0
            let latency = monotonicNanos() &- e.started
            var headers = Self.flowHeaders(head)
            var summary = "HTTP/2 \(code) \(latency / 1_000_000)ms (\(e.method) \(e.url))"
            if grpc {
                let status = trailers?.first(name: "grpc-status") ?? head.first(name: "grpc-status")
                let message = trailers?.first(name: "grpc-message") ?? head.first(name: "grpc-message")
                if let status { headers.append(.init(key: "grpc-status", value: status)); summary += " grpc-status=\(status)" }
                if let message { headers.append(.init(key: "grpc-message", value: message)) }
            }
            connection.environment.record(connection.context.flow(
                verdict: .forwarded, type: .l7,
                l7: Layer7(type: .response, latencyNs: latency, http: HTTP(code: code, method: e.method, url: e.url,
                                                                           protocol: "HTTP/2", headers: headers)),
                reply: true, summary: summary))
        }

        static func flowHeaders(_ h: HPACKHeaders) -> [HTTP.Header] {
            Redaction.headers(h.filter { !$0.name.hasPrefix(":") }.map { ($0.name, $0.value) })
        }
    }
}
