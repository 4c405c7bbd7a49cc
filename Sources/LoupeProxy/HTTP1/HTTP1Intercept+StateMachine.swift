/// HTTP/1.1 interception of one connection.
public enum HTTP1Intercept {}

extension HTTP1Intercept {
    /// A request seen on the connection, waiting for its response.
    public struct Exchange: Sendable, Equatable {
        public var method: String
        public var url: String
        public var version: String
        public var startNanos: UInt64
        /// The request asked to leave HTTP (Upgrade header or CONNECT).
        public var wantsTunnel: Bool
        /// Policy denied it: the proxy answers 403 itself, the server never sees it.
        public var denied: Bool = false
        /// The client keeps the connection after this exchange (HTTP/1.1 without `close`).
        public var keepAlive: Bool = true
    }

    /// Pure bookkeeping of an intercepted HTTP/1.1 connection: pairs responses with requests
    /// (pipelining keeps order), tells when to record which flow, when a denied request's local
    /// 403 may be written (only once every response before it is out), and when the connection
    /// stops being HTTP. No I/O: `HTTP1Intercept.DownstreamHandler`/`UpstreamHandler` act on
    /// the results.
    public struct StateMachine: Sendable {
        public enum RequestAction: Equatable, Sendable {
            /// Forward the request and record its REQUEST flow.
            case forward(Exchange)
            /// Denied, and nothing is ahead of it: answer 403 now.
            case respondLocally(Exchange)
            /// Denied, but earlier responses are still coming from the server: answer when
            /// `responseEnd()` hands it back.
            case holdLocalResponse(Exchange)
        }

        public enum ResponseAction: Equatable, Sendable {
            /// Forward the response and record its RESPONSE flow.
            case forward(Exchange, latencyNanos: UInt64, code: Int)
            /// 1xx: forward, the request still waits for its final response.
            case informational(code: Int)
            /// The request's tunnel was accepted (101, or 2xx to CONNECT): after this response
            /// both directions are opaque bytes.
            case forwardThenTunnel(Exchange, latencyNanos: UInt64, code: Int)
            /// A response nobody asked for: protocol violation by the server.
            case unsolicited(code: Int)
        }

        private var pending: [Exchange] = []
        public private(set) var requests = 0
        public private(set) var responses = 0

        public init() {}

        public var outstanding: Int { pending.count }

        /// The request the next response answers (its framing depends on the method).
        public var next: Exchange? { pending.first }

        public mutating func requestHead(method: String, uri: String, host: String?, fallbackAuthority: String,
                                         version: String, upgrade: Bool, nowNanos: UInt64, denied: Bool = false,
                                         keepAlive: Bool = true, scheme: String = "http") -> RequestAction {
            let url: String
            if uri.hasPrefix("http://") || uri.hasPrefix("https://") {
                url = uri // absolute-form (a proxy request)
            } else if method == "CONNECT" {
                url = "http://\(uri)"
            } else {
                url = "\(scheme)://\(host ?? fallbackAuthority)\(uri.hasPrefix("/") ? uri : "/" + uri)"
            }
            let e = Exchange(method: method, url: url, version: version, startNanos: nowNanos,
                             wantsTunnel: upgrade || method == "CONNECT", denied: denied, keepAlive: keepAlive)
            requests += 1
            if denied {
                if pending.isEmpty { return .respondLocally(e) }
                pending.append(e)
                return .holdLocalResponse(e)
            }
            pending.append(e)
            return .forward(e)
        }

        /// A final response from the server has ended: the denied requests now at the head of
        /// the queue get their local 403, in order.
        public mutating func responseEnd() -> [Exchange] {
            var ready: [Exchange] = []
            while let first = pending.first, first.denied {
                ready.append(pending.removeFirst())
            }
            return ready
        }

        public mutating func responseHead(code: Int, nowNanos: UInt64) -> ResponseAction {
            guard let first = pending.first else { return .unsolicited(code: code) }
            if (100..<200).contains(code) && code != 101 { return .informational(code: code) }
            pending.removeFirst()
            responses += 1
            let latency = nowNanos >= first.startNanos ? nowNanos - first.startNanos : 0
            let tunnels = first.wantsTunnel && (code == 101 || (first.method == "CONNECT" && (200..<300).contains(code)))
            return tunnels ? .forwardThenTunnel(first, latencyNanos: latency, code: code)
                           : .forward(first, latencyNanos: latency, code: code)
        }
    }
}

/// Monotonic nanoseconds for latencies.
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

#if canImport(Glibc)
import Glibc
#endif
