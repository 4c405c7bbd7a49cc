import LoupeFlow
import NIOCore
import NIOHPACK
import NIOHTTP2

/// HTTP/2 (prior knowledge, h2c, and inside intercepted HTTPS) interception: the client's
/// connection is terminated by an HTTP/2 server stack, and a client stack speaks to the original
/// destination (`Upstream`: the connection's own, or for HTTPS one shared by several client
/// connections). Frames are relayed stream by stream at the frame level (`FrameRelay` on the
/// client's side, `UpstreamRelay` on the destination's, one `Session` per client connection) —
/// no channel per stream. Steps per stream:
///   1. the client's HEADERS → REQUEST flow, policy verdict (`:method`, `:path`, `:authority`);
///   2. allowed → a stream toward the destination, frames relayed both ways; denied →
///      `403 Access denied` on this stream only;
///   3. the response (gRPC: its trailers) → RESPONSE flow (`Exchange`).
/// Flow control is end to end per stream: a DATA frame's bytes are credited back to its sender
/// (WINDOW_UPDATE) only once they were written to the other side, so a slow reader holds back
/// only its own stream and the proxy holds at most one window per stream. SETTINGS and PING are
/// answered hop by hop by NIO; a GOAWAY or close from the destination becomes a GOAWAY to the
/// client, whose open streams drain before its connection closes; limits (`HTTP2Limits`) and
/// protocol errors end in RST_STREAM/GOAWAY with an ERROR flow.
///
/// Known client quirk: curl 7.88 (Debian 12) fails when it reuses a prior-knowledge connection
/// for a second URL ("Error in the HTTP2 framing layer", before sending anything) — curl bug
/// #10634, fixed in 7.89; h2load, nghttp, grpcio and python `h2` reuse connections fine.
enum HTTP2Intercept {
    /// The client's side: its HTTP/2 server stack and the session relaying its streams over
    /// `upstream` (this connection's own, or a shared one, see `Upstream`).
    @discardableResult
    static func install(connection: ProxyConnection, downstream ds: ChannelPipeline.SynchronousOperations,
                        after detect: ChannelHandler, upstream: Upstream, reserved: Bool) throws -> Session {
        let limits = connection.environment.configuration.http2
        let session = Session(connection: connection)
        let client = FrameRelay(session: session)
        session.client = client
        let downstreamHTTP2 = NIOHTTP2Handler(mode: .server, connectionConfiguration: limits.connection(validatingHeaders: true),
                                              streamConfiguration: limits.stream)
        try ds.addHandler(downstreamHTTP2, position: .after(detect))
        try ds.addHandler(client, position: .after(downstreamHTTP2))
        client.openConnectionWindow()
        upstream.attach(session, reserved: reserved)
        return session
    }

    /// The state of one intercepted client connection: its streams, flow-control credit, GOAWAY.
    final class Session {
        let connection: ProxyConnection
        let glue = Glue()
        var client: FrameRelay?
        /// The connection to the destination its streams go over; nil once that is gone.
        var upstream: Upstream?
        var streams = StreamTable()
        /// The destination sent GOAWAY or closed: no new upstream streams.
        private(set) var upstreamGoingAway = false
        /// The last stream the destination said (GOAWAY) it will process; later ones it never saw.
        private(set) var upstreamLastStreamID: HTTP2StreamID?
        private var upstreamGone = false
        /// The client sent FIN: its connection closes once its streams are done.
        private var clientInputClosed = false
        private var goAwaySent = false
        /// The client stream whose response header block the client's stack just refused to send
        /// (malformed, see `malformedResponse`): its error, reported once more by that stack, is
        /// the destination's and already recorded.
        var refusedResponseStream: HTTP2StreamID?
        /// ERROR flows recorded for stream-level errors on this connection: past a few, only counted.
        private var errorFlows = 0
        static let maxErrorFlowsPerConnection = 16
        static let drainDeadlineSeconds: Int64 = 30

        init(connection: ProxyConnection) { self.connection = connection }

        /// The destination sent GOAWAY: the client is told to open no more streams here; the
        /// streams in flight finish (those the destination did not take are refused one by one,
        /// REFUSED_STREAM, which clients retry elsewhere).
        func upstreamGoAway(lastStreamID: HTTP2StreamID) {
            upstreamGoingAway = true
            upstreamLastStreamID = min(upstreamLastStreamID ?? .maxID, lastStreamID)
            sendGoAwayToClient()
        }

        /// The destination's connection closed: its unfinished streams are reset toward the
        /// client, and the client's connection follows once its open streams have drained
        /// (bounded by a deadline).
        func upstreamClosed() {
            upstreamGoingAway = true
            upstreamGone = true
            upstream = nil
            sendGoAwayToClient()
            for id in streams.unfinishedUpstream() { upstreamStreamClosed(id, reason: .cancel) }
            client?.flush()
            closeClientWhenDrained()
        }

        /// The client sent FIN: no new streams will come; its connection closes once the open
        /// ones are answered (as the destination's close is drained).
        func clientFinished() {
            clientInputClosed = true
            closeClientWhenDrained()
        }

        private func closeClientWhenDrained() {
            let ds = connection.downstream
            if streams.openClientStreams == 0 {
                ds.close(promise: nil)
            } else {
                let deadline = ds.eventLoop.assumeIsolated().scheduleTask(in: .seconds(Self.drainDeadlineSeconds)) { ds.close(promise: nil) }
                ds.closeFuture.whenComplete { _ in deadline.cancel() }
            }
        }

        func clientStreamsDrained() {
            if (upstreamGone || clientInputClosed) && streams.openClientStreams == 0 { connection.downstream.close(promise: nil) }
        }

        /// The client's connection is gone: its streams toward the destination are reset (a
        /// response not complete is recorded as such) and the upstream connection is left to
        /// the other sessions (or closed, if it was this one's own).
        func clientGone() {
            guard let upstream else { return }
            for pair in streams.byClient.values where pair.clientOpen {
                if pair.upstreamOpen, let up = pair.upstreamID { upstream.write(HTTP2Frame(streamID: up, payload: .rstStream(.cancel))) }
                finish(pair)
                streams.clientClosed(pair)
            }
            upstream.flush()
            self.upstream = nil
            upstream.detach(self)
        }

        /// GOAWAY with the highest stream id: "no new streams", while every open stream may
        /// still complete (RFC 9113 §6.8, the first of a graceful shutdown's two GOAWAYs).
        private func sendGoAwayToClient() {
            guard !goAwaySent, let client else { return }
            goAwaySent = true
            connection.environment.count(.http2GoAwayToClient)
            client.write(HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil)))
            client.flush()
        }

        /// An error from one side's HTTP/2 stack. NIO has already sent the RST_STREAM (stream
        /// error) or GOAWAY (connection error); here it becomes an ERROR flow. True: the error
        /// ends that side's connection (the caller closes it).
        func stackError(_ error: Error, client: Bool) -> Bool {
            let streamLevel = error is NIOHTTP2Errors.StreamError
            if client, let refused = refusedResponseStream, (error as? NIOHTTP2Errors.StreamError)?.streamID == refused {
                refusedResponseStream = nil
                return false
            }
            let limits = connection.environment.configuration.http2
            let side = client ? "client" : "server"
            let summary: String
            if let breach = limits.breach(error) {
                connection.environment.count(breach.counter)
                summary = "HTTP/2 limit breached by \(side): \(breach.description); " + (streamLevel ? "stream reset" : "connection closed with GOAWAY")
            } else if Self.isProtocolError(error) {
                connection.environment.count(.http2ProtocolErrors)
                summary = "HTTP/2 protocol error from \(side): \(describe(error)); " + (streamLevel ? "stream reset" : "connection closed with GOAWAY")
            } else if Self.isLocalRace(error) {
                return false // our write met a stream or connection that had just closed
            } else {
                // I/O errors (a reset peer): the connection ends, nothing to record here.
                return !streamLevel
            }
            if streamLevel {
                recordError(summary: summary, client: client)
                return false
            }
            recordError(summary: summary, client: client, capped: false)
            return true
        }

        /// An ERROR flow for a protocol error or a breached limit; past a few per connection,
        /// stream-level ones are only counted.
        func recordError(summary: String, client: Bool, capped: Bool = true) {
            if capped && errorFlows >= Self.maxErrorFlowsPerConnection {
                connection.environment.count(.http2ErrorFlowsNotRecorded)
                return
            }
            errorFlows += 1
            connection.environment.record(connection.context.flow(
                verdict: .error, type: .l7,
                l7: Layer7(type: client ? .request : .response, latencyNs: 0,
                           http: HTTP(method: "", url: "", protocol: "HTTP/2", headers: [])),
                reply: !client, summary: summary))
        }

        /// A peer's protocol violation, as opposed to our own writes racing a close.
        static func isProtocolError(_ error: Error) -> Bool {
            let base = (error as? NIOHTTP2Errors.StreamError)?.baseError ?? error
            return !isLocalRace(base) && (base is any NIOHTTP2Error || base is any NIOHPACKError)
        }

        static func isLocalRace(_ error: Error) -> Bool {
            let base = (error as? NIOHTTP2Errors.StreamError)?.baseError ?? error
            return base is NIOHTTP2Errors.IOOnClosedConnection || base is NIOHTTP2Errors.StreamClosed
        }

        func describe(_ error: Error) -> String {
            if let e = error as? NIOHTTP2Errors.StreamError { return "stream \(e.streamID): \(e.baseError)" }
            if error is NIOHTTP2Errors.UnableToParseFrame {
                // NIO reports every decoding failure this way, HPACK ones included.
                let limits = connection.environment.configuration.http2
                return "a frame or header block could not be decoded: malformed, HPACK misuse (e.g. its table resized past "
                    + "\(limits.hpackTableBytes) bytes) or a header list decoding to more than \(limits.maxHeaderListBytes) bytes"
            }
            return "\(error)"
        }
    }
}
