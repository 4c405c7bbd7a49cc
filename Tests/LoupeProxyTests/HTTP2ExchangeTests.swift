import LoupeFlow
@testable import LoupeProxy
import NIOHPACK
import Testing

@Suite struct HTTP2ExchangeTests {
    typealias Exchange = HTTP2Intercept.Exchange

    func requested(_ contentType: String? = nil, path: String = "/h2/one") -> Exchange {
        var e = Exchange()
        let r = e.request(method: "GET", scheme: "http", authority: "web:8080", path: path, contentType: contentType,
                          fallbackAuthority: "198.18.0.11:8080", now: 1_000_000)
        #expect(r?.url == "http://web:8080\(path)")
        return e
    }

    @Test func aPlainResponseIsRecordedAtItsHeadersWithLatency() {
        var e = requested()
        let r = e.response(status: "200", headers: [], grpcStatus: nil, grpcMessage: nil, contentType: "text/plain",
                           endStream: false, now: 4_000_000)
        #expect(r?.code == 200 && r?.latencyNanos == 3_000_000)
        #expect(r?.summary == "HTTP/2 200 3ms (GET http://web:8080/h2/one)")
        #expect(e.closed(now: 9_000_000) == nil) // recorded once
    }

    @Test func informationalHeadsAreSkippedAndTrailersOfAClientAreNotARequest() {
        var e = requested()
        #expect(e.request(method: nil, scheme: nil, authority: nil, path: nil, contentType: nil,
                          fallbackAuthority: "x", now: 2) == nil)
        #expect(e.response(status: "100", headers: [], grpcStatus: nil, grpcMessage: nil, contentType: nil,
                           endStream: false, now: 2_000_000) == nil)
        #expect(e.response(status: "204", headers: [], grpcStatus: nil, grpcMessage: nil, contentType: nil,
                           endStream: true, now: 2_000_000)?.code == 204)
    }

    @Test func aGRPCResponseWaitsForItsTrailersAndNamesTheStatus() {
        var e = requested("application/grpc", path: "/helloworld.Greeter/Find")
        #expect(e.response(status: "200", headers: [.init(key: "content-type", value: "application/grpc")],
                           grpcStatus: nil, grpcMessage: nil, contentType: "application/grpc", endStream: false,
                           now: 4_000_000) == nil)
        let r = e.response(status: nil, headers: [], grpcStatus: "5", grpcMessage: "no such greeting", contentType: nil,
                           endStream: true, now: 9_000_000)
        #expect(r?.code == 200 && r?.latencyNanos == 3_000_000)
        #expect(r?.summary == "HTTP/2 200 3ms (GET http://web:8080/helloworld.Greeter/Find) grpc-status=5 NOT_FOUND")
        #expect(r?.headers == [.init(key: "content-type", value: "application/grpc"),
                               .init(key: "grpc-status", value: "5"), .init(key: "grpc-message", value: "no such greeting")])
    }

    @Test func aTrailersOnlyGRPCResponseIsCompleteAtOnce() {
        var e = requested("application/grpc+proto")
        let r = e.response(status: "200", headers: [], grpcStatus: "7", grpcMessage: nil, contentType: "application/grpc",
                           endStream: true, now: 2_000_000)
        #expect(r?.grpcStatus == "7" && r?.summary.hasSuffix("grpc-status=7 PERMISSION_DENIED") == true)
    }

    @Test func aStreamThatEndsEarlyIsRecordedAsIncomplete() {
        var e = requested()
        let r = e.closed(now: 5_000_000)
        #expect(r?.incomplete == true && r?.code == 0)
        #expect(r?.summary == "HTTP/2 stream ended before a response (GET http://web:8080/h2/one)")
        var g = requested("application/grpc")
        _ = g.response(status: "200", headers: [], grpcStatus: nil, grpcMessage: nil, contentType: nil, endStream: false, now: 2)
        #expect(g.closed(now: 3)?.incomplete == true)
    }

    @Test func aDeniedRequestIsAnsweredLocallyOnce() {
        var e = requested()
        #expect(e.answeredLocally(code: 403, now: 2_000_000)?.summary == "HTTP/2 403 1ms (GET http://web:8080/h2/one)")
        #expect(e.closed(now: 3_000_000) == nil)
    }

    @Test func headerFactsReadOneBlockInOnePass() {
        let f = HTTP2Intercept.HeaderFacts(HPACKHeaders([
            (":method", "POST"), (":scheme", "http"), (":authority", "greeter:50051"),
            (":path", "/helloworld.Greeter/SayHello"), ("content-type", "application/grpc"),
            ("authorization", "Bearer secret"), ("te", "trailers"),
        ]))
        #expect(f.method == "POST" && f.scheme == "http" && f.authority == "greeter:50051")
        #expect(f.path == "/helloworld.Greeter/SayHello" && f.contentType == "application/grpc" && f.status == nil)
        #expect(f.regular.map(\.name) == ["content-type", "authorization", "te"])
        // Flow headers are raw here: redaction happens once, where flows are recorded (RedactionTests).
        #expect(f.flowHeaders.map(\.key) == ["content-type", "authorization", "te"])
        let trailers = HTTP2Intercept.HeaderFacts(HPACKHeaders([("grpc-status", "5"), ("grpc-message", "no such greeting")]))
        #expect(trailers.grpcStatus == "5" && trailers.grpcMessage == "no such greeting")
    }
}
