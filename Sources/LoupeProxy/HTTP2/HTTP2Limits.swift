import NIOCore
import NIOHPACK
import NIOHTTP2

/// HTTP/2 abuse limits, applied to each intercepted connection on both sides (the pod's and the
/// destination's). Defaults are safe for ordinary clients, gRPC included; each breach ends in
/// RST_STREAM (one stream) or GOAWAY (the connection) and an ERROR flow naming the limit.
public struct HTTP2Limits: Sendable, Equatable {
    /// SETTINGS_MAX_CONCURRENT_STREAMS we advertise; a stream beyond it is refused (REFUSED_STREAM).
    public var maxConcurrentStreams = 100
    /// SETTINGS_MAX_HEADER_LIST_SIZE we advertise and enforce (bytes of one header block); a
    /// larger block ends the connection (GOAWAY). 16 KiB: NIO's value before the peer
    /// acknowledges our SETTINGS, and above gRPC's default metadata limit (8 KiB).
    public var maxHeaderListBytes = 16 * 1024
    /// SETTINGS_HEADER_TABLE_SIZE: the HPACK dynamic table a peer may make us keep per connection.
    public var hpackTableBytes = 4096
    /// CONTINUATION frames allowed after one HEADERS frame (the CVE-2024-27316 class).
    public var maxContinuationFrames = 5
    /// RST_STREAM frames a peer may send per window (CVE-2023-44487 rapid reset); more → GOAWAY
    /// ENHANCE_YOUR_CALM.
    public var maxResetsPerWindow = 200
    /// Stream errors a peer may provoke per window (refused streams, malformed headers).
    public var maxStreamErrorsPerWindow = 200
    /// The window of the two rates above.
    public var rateWindowSeconds: Int64 = 30

    public init() {}

    /// The HTTP/2 stack of either side. Header blocks are validated once on their way through:
    /// the client's as received (downstream), the destination's as sent on to the client — so
    /// the upstream stack, which would validate both again, does not (`validatingHeaders`).
    func connection(validatingHeaders: Bool) -> NIOHTTP2Handler.ConnectionConfiguration {
        var c = NIOHTTP2Handler.ConnectionConfiguration()
        c.headerBlockValidation = validatingHeaders ? .enabled : .disabled
        c.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: maxConcurrentStreams),
            HTTP2Setting(parameter: .maxHeaderListSize, value: maxHeaderListBytes),
            HTTP2Setting(parameter: .headerTableSize, value: hpackTableBytes),
            HTTP2Setting(parameter: .enablePush, value: 0), // nothing is pushed through the proxy
        ]
        c.maximumSequentialContinuationFrames = maxContinuationFrames
        // Frames still in flight for streams we reset are ignored, not a connection error: when a
        // client goes, all its streams toward the destination are reset at once.
        c.maximumRecentlyResetStreams = max(32, maxConcurrentStreams)
        return c
    }

    var stream: NIOHTTP2Handler.StreamConfiguration {
        var s = NIOHTTP2Handler.StreamConfiguration()
        s.streamResetFrameRateLimit.maximumCount = maxResetsPerWindow
        s.streamResetFrameRateLimit.windowLength = .seconds(rateWindowSeconds)
        s.streamErrorRateLimit.maximumCount = maxStreamErrorsPerWindow
        s.streamErrorRateLimit.windowLength = .seconds(rateWindowSeconds)
        return s
    }

    /// Which limit an error from the HTTP/2 stack reports, in the words of flows and
    /// `loupe status` counters; nil for an error that is not a limit (a protocol violation).
    func breach(_ error: Error) -> (counter: ProxyCounter, description: String)? {
        let base = (error as? NIOHTTP2Errors.StreamError)?.baseError ?? error
        let window = "\(rateWindowSeconds) s"
        switch base {
        case is NIOHTTP2Errors.ExcessiveRSTFrames:
            return (.http2LimitRapidReset, "stream resets (more than \(maxResetsPerWindow) RST_STREAM in \(window), rapid reset)")
        case is NIOHTTP2Errors.ExcessiveContinuationFrames:
            return (.http2LimitContinuationFrames, "CONTINUATION frames (more than \(maxContinuationFrames) after one HEADERS)")
        case is NIOHTTP2Errors.ExcessivelyLargeHeaderBlock, is NIOHPACKErrors.MaxHeaderListSizeViolation:
            return (.http2LimitHeaderListSize, "header list size (more than \(maxHeaderListBytes) bytes)")
        case is NIOHTTP2Errors.MaxStreamsViolation:
            return (.http2LimitConcurrentStreams, "concurrent streams (more than \(maxConcurrentStreams))")
        case is NIOHPACKErrors.InvalidDynamicTableSize, is NIOHPACKErrors.IllegalDynamicTableSizeChange:
            return (.http2LimitHPACKTableSize, "HPACK table size (more than \(hpackTableBytes) bytes)")
        case is NIOHTTP2Errors.ExcessiveStreamErrors:
            return (.http2LimitStreamErrors, "stream errors (more than \(maxStreamErrorsPerWindow) in \(window))")
        case is NIOHTTP2Errors.ExcessiveNumberOfGlitches:
            return (.http2LimitGlitches, "protocol glitches (too many suspicious frames)")
        case is NIOHTTP2Errors.ExcessiveControlFrames:
            return (.http2LimitControlFrames, "control frame rate (PING/SETTINGS/PRIORITY flood)")
        case is NIOHTTP2Errors.ExcessiveEmptyDataFrames:
            return (.http2LimitEmptyDataFrames, "empty DATA frames")
        case is NIOHTTP2Errors.ExcessiveOutboundFrameBuffering:
            return (.http2LimitBufferedFrames, "unread control frame replies (peer does not read)")
        default:
            return nil
        }
    }
}
