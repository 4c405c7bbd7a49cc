import LoupeFlow
import LoupePolicy
import NIOCore
import NIOHPACK
import NIOHTTP2

extension HTTP2Intercept {
    /// One client stream and the destination stream it was paired with.
    final class StreamPair {
        let clientID: HTTP2StreamID
        var upstreamID: HTTP2StreamID?
        var exchange = Exchange()
        /// Each side's stream is still open (NIO has not reported it closed).
        var clientOpen = true
        var upstreamOpen = false
        /// END_STREAM received from that side.
        var clientEnded = false
        var upstreamEnded = false
        /// DATA bytes relayed to the other side and not yet credited back to their sender.
        var creditForClient = 0
        var creditForUpstream = 0

        init(clientID: HTTP2StreamID) { self.clientID = clientID }
    }

    /// One pass over a header block: the fields the proxy reads, and the regular (non-pseudo)
    /// fields for flows and policy. HTTP/2 field names are lower case: NIO validates the
    /// client's blocks as they arrive, the destination's as they go on to the client (one with
    /// an upper-case name is refused then, and its facts are never recorded).
    struct HeaderFacts {
        var method, scheme, authority, path, status, contentType, grpcStatus, grpcMessage: String?
        var regular: [(name: String, value: String)] = []

        init(_ headers: HPACKHeaders) {
            regular.reserveCapacity(headers.count)
            for (name, value, _) in headers {
                if name.utf8.first == UInt8(ascii: ":") {
                    switch name {
                    case ":method": method = value
                    case ":scheme": scheme = value
                    case ":authority": authority = value
                    case ":path": path = value
                    case ":status": status = value
                    default: break
                    }
                    continue
                }
                switch name {
                case "content-type": contentType = value
                case "grpc-status": grpcStatus = value
                case "grpc-message": grpcMessage = value
                default: break
                }
                regular.append((name, value))
            }
        }

        var flowHeaders: [HTTP.Header] { regular.map { HTTP.Header(key: $0.name, value: $0.value) } }
    }

    /// The streams of one connection pair, by client and by destination stream id.
    struct StreamTable {
        private(set) var byClient: [HTTP2StreamID: StreamPair] = [:]
        private(set) var byUpstream: [HTTP2StreamID: StreamPair] = [:]
        private(set) var openClientStreams = 0

        mutating func add(_ pair: StreamPair) {
            byClient[pair.clientID] = pair
            openClientStreams += 1
        }

        /// The client stream's partner toward the destination (its id from `Upstream.openStream`).
        mutating func pair(_ pair: StreamPair, upstream id: HTTP2StreamID) {
            pair.upstreamID = id
            pair.upstreamOpen = true
            byUpstream[id] = pair
        }

        mutating func clientClosed(_ pair: StreamPair) {
            pair.clientOpen = false
            openClientStreams -= 1
            forgetIfClosed(pair)
        }

        mutating func upstreamClosed(_ pair: StreamPair) {
            pair.upstreamOpen = false
            forgetIfClosed(pair)
        }

        private mutating func forgetIfClosed(_ pair: StreamPair) {
            guard !pair.clientOpen && !pair.upstreamOpen else { return }
            byClient[pair.clientID] = nil
            if let id = pair.upstreamID { byUpstream[id] = nil }
        }

        func unfinishedUpstream() -> [HTTP2StreamID] {
            byUpstream.filter { $0.value.upstreamOpen }.map(\.key)
        }
    }
}

extension HTTP2Intercept.Session {
    /// A DATA frame's bytes credited back (WINDOW_UPDATE) once this many were relayed: half the
    /// default stream window, so the sender never waits on a full window.
    static let streamCreditThreshold = 32_768

    /// A frame on a client stream.
    func fromClient(_ frame: HTTP2Frame) {
        let id = frame.streamID
        switch frame.payload {
        case .headers(let h):
            guard let pair = streams.byClient[id] else { return newClientStream(id, h) }
            // Trailers.
            if h.endStream { pair.clientEnded = true }
            if let up = pair.upstreamID, pair.upstreamOpen { upstream?.write(HTTP2Frame(streamID: up, payload: frame.payload)) }
        case .data(let d):
            let n = Self.flowControlledLength(d)
            client?.connectionCredit += n
            guard let pair = streams.byClient[id] else { return }
            if d.endStream { pair.clientEnded = true }
            guard let up = pair.upstreamID, pair.upstreamOpen, let target = upstream?.relay else { return } // denied: discarded
            relayData(frame.payload, streamID: up, length: n, ended: d.endStream, to: target) { [weak self] in
                self?.credit(pair, n, client: true)
            }
        default:
            break // RST_STREAM arrives as StreamClosedEvent; WINDOW_UPDATE and PRIORITY are NIO's
        }
    }

    /// A frame on a destination stream.
    func fromServer(_ frame: HTTP2Frame) {
        let id = frame.streamID
        switch frame.payload {
        case .headers(let h):
            guard let pair = streams.byUpstream[id] else { return }
            if h.endStream { pair.upstreamEnded = true }
            let response = observeResponse(pair, h)
            guard pair.clientOpen, let client else {
                if let response { recordResponse(response, verdict: .forwarded) }
                return
            }
            // The destination's header block is validated once, on its way to the client (the
            // upstream stack does not validate what it receives): its flow is recorded once it
            // went out, and a malformed one ends the stream instead.
            // (The callback is in place before the write: a refusal fails the promise at once,
            // before the client's stack reports the same error.)
            let written = connection.downstream.eventLoop.makePromise(of: Void.self)
            written.futureResult.assumeIsolated().whenComplete { result in
                switch result {
                case .success: if let response { self.recordResponse(response, verdict: .forwarded) }
                case .failure(let error): self.malformedResponse(pair, error, response)
                }
            }
            client.write(HTTP2Frame(streamID: pair.clientID, payload: frame.payload), promise: written)
        case .data(let d):
            let n = Self.flowControlledLength(d) // the connection's share is credited by `Upstream`
            guard let pair = streams.byUpstream[id] else { return }
            if d.endStream { pair.upstreamEnded = true }
            guard pair.clientOpen, let client else { return }
            relayData(frame.payload, streamID: pair.clientID, length: n, ended: d.endStream, to: client) { [weak self] in
                self?.credit(pair, n, client: false)
            }
        default:
            break
        }
    }

    /// Writes DATA toward the other side; its bytes are credited back to the sender once written
    /// (end-to-end flow control: a reader that stops holds back only its own stream).
    private func relayData(_ payload: HTTP2Frame.FramePayload, streamID: HTTP2StreamID, length: Int, ended: Bool,
                           to target: any FrameWriting, credited: @escaping () -> Void) {
        guard length > 0 && !ended else {
            target.write(HTTP2Frame(streamID: streamID, payload: payload))
            return
        }
        let written = connection.downstream.eventLoop.makePromise(of: Void.self)
        target.write(HTTP2Frame(streamID: streamID, payload: payload), promise: written)
        written.futureResult.assumeIsolated().whenSuccess(credited)
    }

    /// `n` bytes the client (`client: true`) or the destination sent on this stream were written
    /// to the other side: credit them back, in batches.
    private func credit(_ pair: HTTP2Intercept.StreamPair, _ n: Int, client fromClient: Bool) {
        if fromClient {
            guard pair.clientOpen && !pair.clientEnded, let client else { return }
            pair.creditForClient += n
            guard pair.creditForClient >= Self.streamCreditThreshold else { return }
            client.write(HTTP2Frame(streamID: pair.clientID, payload: .windowUpdate(windowSizeIncrement: pair.creditForClient)))
            pair.creditForClient = 0
            client.flush()
        } else {
            guard pair.upstreamOpen && !pair.upstreamEnded, let up = pair.upstreamID, let upstream else { return }
            pair.creditForUpstream += n
            guard pair.creditForUpstream >= Self.streamCreditThreshold else { return }
            upstream.write(HTTP2Frame(streamID: up, payload: .windowUpdate(windowSizeIncrement: pair.creditForUpstream)))
            pair.creditForUpstream = 0
            upstream.flush()
        }
    }

    static func flowControlledLength(_ d: HTTP2Frame.FramePayload.Data) -> Int {
        d.data.readableBytes + (d.paddingBytes.map { $0 + 1 } ?? 0)
    }

    /// Step 1: a new client stream's HEADERS → REQUEST flow and policy verdict; step 2: its
    /// destination stream, or the local 403.
    private func newClientStream(_ id: HTTP2StreamID, _ h: HTTP2Frame.FramePayload.Headers) {
        let pair = HTTP2Intercept.StreamPair(clientID: id)
        pair.clientEnded = h.endStream
        streams.add(pair)
        let f = HTTP2Intercept.HeaderFacts(h.headers)
        guard let req = pair.exchange.request(
            method: f.method, scheme: f.scheme, authority: f.authority, path: f.path, contentType: f.contentType,
            fallbackAuthority: connection.context.authorityFallback, now: monotonicNanos()
        ) else { return }
        let decision = connection.currentDecision()
        // Facts are built only when a policy applies: the unenforced path stays lean.
        let denied = decision.isEnforced && !decision.allows(HTTPRequestFacts(
            method: req.method, path: f.path ?? "/", host: f.authority ?? connection.context.authorityFallback,
            headers: f.regular))
        connection.environment.record(connection.context.flow(
            verdict: denied ? .dropped : .forwarded, type: .l7,
            l7: Layer7(type: .request, latencyNs: 0, http: HTTP(method: req.method, url: req.url, protocol: "HTTP/2",
                                                                headers: f.flowHeaders)),
            reply: false, dropReason: denied ? .policyDenied : nil)) // summary: said from the HTTP record
        if denied { return respondDenied(pair) }
        guard !upstreamGoingAway, let upstream else { return refuse(pair) }
        let up = upstream.openStream(for: self)
        streams.pair(pair, upstream: up)
        upstream.write(HTTP2Frame(streamID: up, payload: .headers(h)))
    }

    /// The policy's answer on this stream alone: `403 Access denied`, as for HTTP/1 (gRPC
    /// clients map 403 to PERMISSION_DENIED). Other streams of the connection go on. A request
    /// still sending its body is then told to stop (RST_STREAM NO_ERROR, RFC 9113 §8.1).
    private func respondDenied(_ pair: HTTP2Intercept.StreamPair) {
        guard let client else { return }
        connection.environment.count(.httpRequestsPolicyDenied)
        if let r = pair.exchange.answeredLocally(code: 403, now: monotonicNanos()) {
            recordResponse(r, verdict: .dropped, dropReason: .policyDenied)
        }
        let body = HTTP1Intercept.DownstreamHandler.accessDenied
        let head = HPACKHeaders([(":status", "403"), ("content-type", "text/plain"),
                                 ("content-length", String(body.readableBytes))])
        client.write(HTTP2Frame(streamID: pair.clientID, payload: .headers(.init(headers: head))))
        client.write(HTTP2Frame(streamID: pair.clientID, payload: .data(.init(data: .byteBuffer(body), endStream: true))))
        if !pair.clientEnded { client.write(HTTP2Frame(streamID: pair.clientID, payload: .rstStream(.noError))) }
    }

    /// No destination stream can be had (it is going away): REFUSED_STREAM tells the client the
    /// request was not processed and may be retried.
    private func refuse(_ pair: HTTP2Intercept.StreamPair) {
        connection.environment.count(.http2StreamsRefused)
        client?.write(HTTP2Frame(streamID: pair.clientID, payload: .rstStream(.refusedStream)))
    }

    /// Step 3: the destination's HEADERS (response head or trailers): the response to record,
    /// once they reached the client, if they complete one.
    private func observeResponse(_ pair: HTTP2Intercept.StreamPair, _ h: HTTP2Frame.FramePayload.Headers) -> HTTP2Intercept.Exchange.Response? {
        let f = HTTP2Intercept.HeaderFacts(h.headers)
        return pair.exchange.response(
            status: f.status, headers: f.flowHeaders, grpcStatus: f.grpcStatus, grpcMessage: f.grpcMessage,
            contentType: f.contentType, endStream: h.endStream, now: monotonicNanos())
    }

    /// The destination's HEADERS could not go to the client. Malformed (RFC 9113 §8.2–8.3: a
    /// connection-specific field, an upper-case name, a missing or misplaced pseudo-header):
    /// refused as a malformed block received is — PROTOCOL_ERROR on the destination's stream
    /// and then the client's — with an ERROR flow naming what was wrong. Otherwise the client's
    /// stream or connection went meanwhile: the response is recorded as it was relayed.
    private func malformedResponse(_ pair: HTTP2Intercept.StreamPair, _ error: Error, _ response: HTTP2Intercept.Exchange.Response?) {
        guard Self.isProtocolError(error), let up = pair.upstreamID else {
            if let response { recordResponse(response, verdict: .forwarded) }
            return
        }
        connection.environment.count(.http2ProtocolErrors)
        refusedResponseStream = pair.clientID
        // NIO reports the destination's stream closed (reset) as this is written: the client's
        // stream is reset from there; if the destination's had already ended, it is reset here.
        if pair.upstreamOpen { upstream?.write(HTTP2Frame(streamID: up, payload: .rstStream(.protocolError))) }
        if pair.clientOpen { client?.write(HTTP2Frame(streamID: pair.clientID, payload: .rstStream(.protocolError))) }
        upstream?.flush()
        client?.flush()
        let summary = "HTTP/2 protocol error from server: \(describe(NIOHTTP2Errors.streamError(streamID: up, baseError: error))); stream reset"
        if let r = response {
            recordResponse(r, verdict: .error, summary: summary)
        } else {
            recordError(summary: summary, client: false)
        }
    }

    /// NIO closed a stream on one side. A reset (or abort) resets the partner stream too — with
    /// REFUSED_STREAM for a stream the destination's GOAWAY dropped unprocessed (NIO reports
    /// those as CANCEL), so the client may retry it; a normal end needs nothing (an RST after a
    /// finished stream would be counted as an error by clients).
    func clientStreamClosed(_ id: HTTP2StreamID, reason: HTTP2ErrorCode?) {
        guard let pair = streams.byClient[id], pair.clientOpen else { return }
        if reason != nil, pair.upstreamOpen, let up = pair.upstreamID {
            upstream?.write(HTTP2Frame(streamID: up, payload: .rstStream(.cancel)))
        }
        finish(pair)
        streams.clientClosed(pair)
        clientStreamsDrained()
    }

    func upstreamStreamClosed(_ id: HTTP2StreamID, reason: HTTP2ErrorCode?) {
        guard let pair = streams.byUpstream[id], pair.upstreamOpen else { return }
        if var code = reason, pair.clientOpen {
            if let last = upstreamLastStreamID, id > last { code = .refusedStream }
            client?.write(HTTP2Frame(streamID: pair.clientID, payload: .rstStream(code)))
        }
        finish(pair)
        streams.upstreamClosed(pair)
    }

    /// A response never completed (reset, aborted, gRPC without trailers): recorded now.
    func finish(_ pair: HTTP2Intercept.StreamPair) {
        if let r = pair.exchange.closed(now: monotonicNanos()) { recordResponse(r, verdict: .forwarded) }
    }

    private func recordResponse(_ r: HTTP2Intercept.Exchange.Response, verdict: Verdict, dropReason: DropReason? = nil,
                                summary: String? = nil) {
        connection.environment.record(connection.context.flow(
            verdict: r.incomplete ? .error : verdict, type: .l7,
            l7: Layer7(type: .response, latencyNs: r.latencyNanos,
                       http: HTTP(code: r.code == 0 ? nil : r.code, method: r.request.method, url: r.request.url,
                                  protocol: "HTTP/2", headers: r.headers)),
            reply: true, summary: summary ?? (r.summarySaysMore ? r.summary : ""), dropReason: dropReason))
    }
}
