import LoupeBPF
import Synchronization

/// What the proxy counts (`loupe status`'s proxy and splice sections,
/// `loupe_proxy_events_total{event}`). The names are a contract: dashboards and tests read them.
public enum ProxyCounter: Int, CaseIterable, Sendable {
    case connectionsAccepted, connectionsPolicyDenied, connectionsHTTP1, connectionsHTTP2
    case connectionsHTTPSIntercepted, connectionsOpaque, connectionsDNSTCP, connectionsTunneled
    case upstreamConnectErrors, upstreamErrors
    case httpRequestsPolicyDenied, httpRequestsRejected, httpUnsolicitedResponses
    case http2GoAwayToClient, http2ProtocolErrors, http2StreamsRefused, http2ErrorFlowsNotRecorded
    case http2LimitRapidReset, http2LimitContinuationFrames, http2LimitHeaderListSize
    case http2LimitConcurrentStreams, http2LimitHPACKTableSize, http2LimitStreamErrors
    case http2LimitGlitches, http2LimitControlFrames, http2LimitEmptyDataFrames, http2LimitBufferedFrames
    case tlsClientHellos, tlsClientHellosUnreadable, tlsPortNotTLS
    case httpsInterceptionUnavailable, httpsUpstreamRefused, httpsPodHandshakeFailed, httpsUpstreamShared
    case dnsQueries, dnsQueriesPolicyDenied, dnsNoOriginalDestination, dnsInflightLimit
    case dnsMalformedQueries, dnsMalformedAnswers, dnsUnmatchedAnswers, dnsMismatchedAnswers
    case dnsUpstreamErrors, dnsUpstreamTimeouts, dnsReplyErrors
    case spliceStarted, spliceEnded, spliceCloseWaitTimeouts, spliceBytesRelayedAfterSplice
    case spliceFallbackHalfClosed, spliceFallbackUnavailable, spliceFallbackInjected, spliceFallbackSocketInfo
    case spliceFallbackAddressFamily, spliceFallbackTestRun, spliceFallbackMapFull, spliceFallbackPairMap
    case spliceFallbackNoSocket, spliceFallbackBusy, spliceFallbackSocketState, spliceFallbackInsert
    case spliceFallbackRequest

    public var name: String {
        switch self {
        case .connectionsAccepted: "connections_accepted"
        case .connectionsPolicyDenied: "connections_policy_denied"
        case .connectionsHTTP1: "connections_http1"
        case .connectionsHTTP2: "connections_http2"
        case .connectionsHTTPSIntercepted: "connections_https_intercepted"
        case .connectionsOpaque: "connections_opaque"
        case .connectionsDNSTCP: "connections_dns_tcp"
        case .connectionsTunneled: "connections_tunneled"
        case .upstreamConnectErrors: "upstream_connect_errors"
        case .upstreamErrors: "upstream_errors"
        case .httpRequestsPolicyDenied: "http_requests_policy_denied"
        case .httpRequestsRejected: "http_requests_rejected"
        case .httpUnsolicitedResponses: "http_unsolicited_responses"
        case .http2GoAwayToClient: "http2_goaway_to_client"
        case .http2ProtocolErrors: "http2_protocol_errors"
        case .http2StreamsRefused: "http2_streams_refused"
        case .http2ErrorFlowsNotRecorded: "http2_error_flows_not_recorded"
        case .http2LimitRapidReset: "http2_limit_rapid_reset"
        case .http2LimitContinuationFrames: "http2_limit_continuation_frames"
        case .http2LimitHeaderListSize: "http2_limit_header_list_size"
        case .http2LimitConcurrentStreams: "http2_limit_concurrent_streams"
        case .http2LimitHPACKTableSize: "http2_limit_hpack_table_size"
        case .http2LimitStreamErrors: "http2_limit_stream_errors"
        case .http2LimitGlitches: "http2_limit_glitches"
        case .http2LimitControlFrames: "http2_limit_control_frames"
        case .http2LimitEmptyDataFrames: "http2_limit_empty_data_frames"
        case .http2LimitBufferedFrames: "http2_limit_buffered_frames"
        case .tlsClientHellos: "tls_client_hellos"
        case .tlsClientHellosUnreadable: "tls_client_hellos_unreadable"
        case .tlsPortNotTLS: "tls_port_not_tls"
        case .httpsInterceptionUnavailable: "https_interception_unavailable"
        case .httpsUpstreamRefused: "https_upstream_refused"
        case .httpsPodHandshakeFailed: "https_pod_handshake_failed"
        case .httpsUpstreamShared: "https_upstream_shared"
        case .dnsQueries: "dns_queries"
        case .dnsQueriesPolicyDenied: "dns_queries_policy_denied"
        case .dnsNoOriginalDestination: "dns_no_original_destination"
        case .dnsInflightLimit: "dns_inflight_limit"
        case .dnsMalformedQueries: "dns_malformed_queries"
        case .dnsMalformedAnswers: "dns_malformed_answers"
        case .dnsUnmatchedAnswers: "dns_unmatched_answers"
        case .dnsMismatchedAnswers: "dns_mismatched_answers"
        case .dnsUpstreamErrors: "dns_upstream_errors"
        case .dnsUpstreamTimeouts: "dns_upstream_timeouts"
        case .dnsReplyErrors: "dns_reply_errors"
        case .spliceStarted: "splice_started"
        case .spliceEnded: "splice_ended"
        case .spliceCloseWaitTimeouts: "splice_close_wait_timeouts"
        case .spliceBytesRelayedAfterSplice: "splice_bytes_relayed_after_splice"
        case .spliceFallbackHalfClosed: "splice_fallback_half_closed"
        case .spliceFallbackUnavailable: "splice_fallback_unavailable"
        case .spliceFallbackInjected: "splice_fallback_injected"
        case .spliceFallbackSocketInfo: "splice_fallback_socket_info"
        case .spliceFallbackAddressFamily: "splice_fallback_address_family"
        case .spliceFallbackTestRun: "splice_fallback_test_run"
        case .spliceFallbackMapFull: "splice_fallback_map_full"
        case .spliceFallbackPairMap: "splice_fallback_pair_map"
        case .spliceFallbackNoSocket: "splice_fallback_no_socket"
        case .spliceFallbackBusy: "splice_fallback_busy"
        case .spliceFallbackSocketState: "splice_fallback_socket_state"
        case .spliceFallbackInsert: "splice_fallback_insert"
        case .spliceFallbackRequest: "splice_fallback_request"
        }
    }

    /// The counter of a connection the kernel did not take, by why.
    static func spliceFallback(_ reason: SpliceFallback) -> ProxyCounter {
        switch reason {
        case .halfClosed: .spliceFallbackHalfClosed
        case .unavailable: .spliceFallbackUnavailable
        case .injected: .spliceFallbackInjected
        case .socketInfo: .spliceFallbackSocketInfo
        case .refused(let r):
            switch r {
            case .addressFamily: .spliceFallbackAddressFamily
            case .testRun: .spliceFallbackTestRun
            case .mapFull: .spliceFallbackMapFull
            case .pairMap: .spliceFallbackPairMap
            case .noSocket: .spliceFallbackNoSocket
            case .busy: .spliceFallbackBusy
            case .socketState: .spliceFallbackSocketState
            case .insert: .spliceFallbackInsert
            case .request: .spliceFallbackRequest
            }
        }
    }
}

/// Why an opaque connection stayed in the userspace relay.
enum SpliceFallback: Equatable, Sendable {
    /// A side had sent FIN before the splice was decided.
    case halfClosed
    /// The splice maps are not loaded.
    case unavailable
    /// `--splice-inject-failure` (tests).
    case injected
    /// A socket's cookie, addresses or tcp_info could not be read.
    case socketInfo
    /// The kernel refused the pair.
    case refused(SpliceRefusal.Reason)
}

/// The proxy's counters: one relaxed atomic per `ProxyCounter`, indexed by the enum, so the
/// event loops count without a shared lock or a string-keyed dictionary.
public final class ProxyCounters: Sendable {
    /// One heap cell per counter (`Atomic` is not copyable, so it cannot sit in an array).
    private final class Cell: Sendable {
        let value = Atomic<UInt64>(0)
    }

    private let cells: [Cell] = ProxyCounter.allCases.map { _ in Cell() }

    public init() {}

    public func add(_ counter: ProxyCounter, _ n: UInt64 = 1) {
        cells[counter.rawValue].value.wrappingAdd(n, ordering: .relaxed)
    }

    public subscript(_ counter: ProxyCounter) -> UInt64 {
        cells[counter.rawValue].value.load(ordering: .relaxed)
    }

    /// Every counter by name, zeros included (a series exists from the start).
    public var byName: [String: UInt64] {
        Dictionary(uniqueKeysWithValues: ProxyCounter.allCases.map { ($0.name, self[$0]) })
    }
}
