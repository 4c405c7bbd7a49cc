import LoupeFlow

extension HTTP2Intercept {
    /// One stream's exchange as the proxy sees it, with no I/O: the relay handlers feed it the
    /// stream's HEADERS frames and its end, and it says which flow to record when. gRPC carries
    /// its outcome in the trailers, so a gRPC response is complete only with them (or when the
    /// stream ends without them).
    struct Exchange {
        struct Request: Equatable {
            var method: String
            var url: String
            var grpc: Bool
            var startedNanos: UInt64
        }

        struct Response: Equatable {
            var request: Request
            /// `:status`; 0 when the stream ended before any response.
            var code: Int
            /// From the request to the response headers (Hubble's meaning of latency).
            var latencyNanos: UInt64
            var headers: [HTTP.Header]
            var grpcStatus: String?
            var grpcMessage: String?
            /// The stream ended (reset, aborted) before its response was complete.
            var incomplete: Bool
            /// gRPC (the summary names the outcome).
            var grpc: Bool

            /// The flow's summary: a plain response's is what its HTTP record says, a gRPC
            /// response's names its status, a response that never came says so.
            var summary: String {
                guard code != 0 else { return "HTTP/2 stream ended before a response (\(request.method) \(request.url))" }
                let plain = HTTP.responseSummary(protocol: "HTTP/2", code: code, latencyNanos: latencyNanos,
                                                 method: request.method, url: request.url)
                guard grpc else { return plain }
                guard let grpcStatus else { return plain + (incomplete ? " (stream ended without grpc-status)" : "") }
                let name = Int(grpcStatus).flatMap(GRPCStatus.name(of:)).map { " \($0)" } ?? ""
                return plain + " grpc-status=\(grpcStatus)" + name
            }

            /// The summary says more than the flow's HTTP record (the flow then carries it).
            var summarySaysMore: Bool { code == 0 || grpc }
        }

        enum State: Equatable {
            case idle
            case requested(Request)
            /// Final response headers seen; a gRPC response waits for its trailers.
            case responding(Request, Response)
            case done
        }

        private(set) var state: State = .idle

        /// The client's first HEADERS: the request. Later HEADERS (trailers) give nil.
        mutating func request(method: String?, scheme: String?, authority: String?, path: String?,
                              contentType: String?, fallbackAuthority: String, now: UInt64) -> Request? {
            guard case .idle = state else { return nil }
            let url = "\(scheme ?? "http")://\(authority ?? fallbackAuthority)\(path ?? "/")"
            let r = Request(method: method ?? "?", url: url, grpc: GRPCStatus.isGRPC(contentType: contentType),
                            startedNanos: now)
            state = .requested(r)
            return r
        }

        /// HEADERS from the server: the response to record once it is complete. Informational
        /// (1xx) heads are skipped; a gRPC head waits for its trailers unless it ends the stream
        /// (trailers-only response).
        mutating func response(status: String?, headers: [HTTP.Header], grpcStatus: String?, grpcMessage: String?,
                               contentType: String?, endStream: Bool, now: UInt64) -> Response? {
            switch state {
            case .requested(let req):
                guard let status, let code = Int(status) else { return nil }
                if code < 200 { return nil }
                let grpc = req.grpc || GRPCStatus.isGRPC(contentType: contentType)
                let r = Self.response(req, code: code, latency: now &- req.startedNanos, headers: headers,
                                      grpcStatus: grpcStatus, grpcMessage: grpcMessage, grpc: grpc, incomplete: false)
                if grpc && !endStream && grpcStatus == nil {
                    var waiting = req
                    waiting.grpc = true
                    state = .responding(waiting, r)
                    return nil
                }
                state = .done
                return r
            case .responding(let req, let head):
                // The trailers.
                state = .done
                return Self.response(req, code: head.code, latency: head.latencyNanos, headers: head.headers,
                                     grpcStatus: grpcStatus, grpcMessage: grpcMessage, grpc: true, incomplete: false)
            case .idle, .done:
                return nil
            }
        }

        /// The proxy answered the request itself (policy: 403).
        mutating func answeredLocally(code: Int, now: UInt64) -> Response? {
            guard case .requested(let req) = state else { return nil }
            state = .done
            return Self.response(req, code: code, latency: now &- req.startedNanos, headers: [], grpcStatus: nil,
                                 grpcMessage: nil, grpc: false, incomplete: false)
        }

        /// The stream closed: a response not yet recorded is recorded now — a gRPC response whose
        /// trailers never came, or a request that never got a response (code 0).
        mutating func closed(now: UInt64) -> Response? {
            defer { state = .done }
            switch state {
            case .requested(let req):
                return Self.response(req, code: 0, latency: now &- req.startedNanos, headers: [], grpcStatus: nil,
                                     grpcMessage: nil, grpc: req.grpc, incomplete: true)
            case .responding(let req, let head):
                return Self.response(req, code: head.code, latency: head.latencyNanos, headers: head.headers,
                                     grpcStatus: nil, grpcMessage: nil, grpc: true, incomplete: true)
            case .idle, .done:
                return nil
            }
        }

        private static func response(_ req: Request, code: Int, latency: UInt64, headers: [HTTP.Header], grpcStatus: String?,
                                     grpcMessage: String?, grpc: Bool, incomplete: Bool) -> Response {
            var headers = headers
            if grpc, let grpcStatus {
                headers.removeAll { $0.key == "grpc-status" || $0.key == "grpc-message" }
                headers.append(.init(key: "grpc-status", value: grpcStatus))
                if let grpcMessage { headers.append(.init(key: "grpc-message", value: grpcMessage)) }
            }
            return Response(request: req, code: code, latencyNanos: latency, headers: headers, grpcStatus: grpcStatus,
                            grpcMessage: grpcMessage, incomplete: incomplete, grpc: grpc)
        }
    }
}
