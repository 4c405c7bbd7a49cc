import LoupeProtocols
import Testing

/// The HTTP/1 request parser on crafted requests, whole and one byte at a time.
@Suite struct HTTP1RequestParserTests {
    enum Event: Equatable {
        case head(method: String, target: String, fields: [String])
        case body(String)
        case end(trailers: [String]?)
        case stopped(rest: String)
    }

    /// Feeds `text` in pieces of `chunk` bytes as a decoder would (unconsumed bytes stay in
    /// front of the next piece); body pieces are merged.
    func parse(_ text: String, chunk: Int = .max, maxHeaderBytes: Int = 64 * 1024) throws -> [Event] {
        let all = Array(text.utf8)
        var parser = HTTP1RequestParser(maxHeaderBytes: maxHeaderBytes)
        var buffer: [UInt8] = []
        var fed = 0
        var events: [Event] = []
        while true {
            let (step, consumed) = try parser.step(buffer)
            let taken = Array(buffer.prefix(consumed))
            buffer.removeFirst(consumed)
            switch step {
            case .head(let h):
                events.append(.head(method: h.method, target: h.target, fields: h.fields.map { "\($0.name): \($0.value)" }))
            case .body:
                let s = String(decoding: taken, as: UTF8.self)
                if case .body(let prev) = events.last { events[events.count - 1] = .body(prev + s) } else { events.append(.body(s)) }
            case .end(let trailers):
                events.append(.end(trailers: trailers?.map { "\($0.name): \($0.value)" }))
            case .skip:
                break
            case .stopped:
                events.append(.stopped(rest: String(decoding: buffer + all[fed...], as: UTF8.self)))
                return events
            case .needMore:
                guard fed < all.count else { return events }
                let n = min(chunk, all.count - fed)
                buffer += all[fed..<(fed + n)]
                fed += n
            }
        }
    }

    /// The same events whole and byte by byte.
    func parseBothWays(_ text: String) throws -> [Event] {
        let whole = try parse(text)
        #expect(try parse(text, chunk: 1) == whole)
        return whole
    }

    func failure(_ text: String, maxHeaderBytes: Int = 64 * 1024) -> HTTP1RequestParser.Failure? {
        do {
            _ = try parse(text, maxHeaderBytes: maxHeaderBytes)
            return nil
        } catch {
            return error as? HTTP1RequestParser.Failure
        }
    }

    @Test(arguments: ["GET", "get", "PURGE", "M-SEARCH", "BREW", "PROPFIND", "QUERY"])
    func anyTokenIsAMethodKeptAsSpelled(method: String) throws {
        #expect(try parseBothWays("\(method) /x HTTP/1.1\r\nHost: a\r\n\r\n") == [
            .head(method: method, target: "/x", fields: ["Host: a"]), .end(trailers: nil)])
    }

    @Test func pipelinedRequestsWithSizedAndChunkedBodies() throws {
        let text = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            + "POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 1\r\n\r\n"
            + "\r\nGET /c HTTP/1.0\r\n\r\n"
        #expect(try parseBothWays(text) == [
            .head(method: "POST", target: "/a", fields: ["Host: a", "content-length: 5"]), .body("hello"), .end(trailers: nil),
            .head(method: "POST", target: "/b", fields: ["Host: a", "transfer-encoding: chunked"]), .body("abcde"),
            .end(trailers: ["X-Sum: 1"]),
            .head(method: "GET", target: "/c", fields: []), .end(trailers: nil),
        ])
    }

    @Test func valuesLoseOptionalWhitespaceAndRepeatedEqualLengthsBecomeOne() throws {
        #expect(try parseBothWays("PUT / HTTP/1.1\r\nX-A: \t spaced \t\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok") == [
            .head(method: "PUT", target: "/", fields: ["X-A: spaced", "content-length: 2"]), .body("ok"), .end(trailers: nil)])
    }

    @Test func upgradeAndConnectStopTheParser() throws {
        #expect(try parseBothWays("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\u{1}\u{2}binary") == [
            .head(method: "GET", target: "/ws", fields: ["Upgrade: websocket", "Connection: Upgrade"]), .end(trailers: nil),
            .stopped(rest: "\u{1}\u{2}binary")])
        #expect(try parseBothWays("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 3\r\n\r\nTLS") == [
            .head(method: "CONNECT", target: "a:443", fields: ["Host: a:443", "content-length: 3"]), .end(trailers: nil),
            .stopped(rest: "TLS")])
    }

    @Test(arguments: [
        ("GET /bad path HTTP/1.1\r\n\r\n", "malformed request line", 400),
        ("GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF", 400),
        ("G(T / HTTP/1.1\r\n\r\n", "malformed request line", 400),
        ("GET / HTTP/2.0\r\n\r\n", "not supported", 505),
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", "whitespace before the colon", 400),
        ("GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", "obsolete line folding", 400),
        ("GET / HTTP/1.1\r\nX: a\u{0}b\r\n\r\n", "control character", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host", 400),
        ("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "Transfer-Encoding with Content-Length", 400),
        ("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "malformed Content-Length", 400),
        ("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", "malformed Content-Length", 400),
        ("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", "malformed Content-Length", 400),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0", 400),
        ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "not understood", 501),
        ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n", "not understood", 501),
        ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "not understood", 501),
        ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZ\r\n", "malformed chunk size", 400),
        ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\n", "too large", 400),
        ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", "no CRLF after its data", 400),
    ])
    func malformedRequestsAreRefusedWithTheirReason(text: String, reason: String, status: Int) {
        let f = failure(text)
        #expect(f?.reason.contains(reason) == true, "\(String(describing: f))")
        #expect(f?.status == status)
    }

    @Test func aHeaderBlockOverTheLimitIsRefusedBeforeItEnds() {
        let f = failure("GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 2000), maxHeaderBytes: 1024)
        #expect(f?.reason.contains("header block exceeds the limit") == true)
    }

    @Test func aBodyIsHandedOutInPiecesWithoutBuffering() throws {
        var parser = HTTP1RequestParser()
        let head = Array("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n".utf8)
        let (step, consumed) = try parser.step(head + Array("abc".utf8))
        #expect(consumed == head.count)
        guard case .head = step else { Issue.record("expected the head, got \(step)"); return }
        #expect(try parser.step(Array("abc".utf8)) == (.body(3), 3))
        #expect(try parser.step([]) == (.needMore, 0))
        #expect(try parser.step(Array("defghijNEXT".utf8)) == (.body(7), 7))
        #expect(try parser.step(Array("NEXT".utf8)) == (.end(trailers: nil), 0))
    }
}

/// What the proxy forwards of a head: its bytes as they came, unless the framing headers said
/// it another way (then the head as parsed, framing normalised).
@Suite struct HTTP1RequestHeadForwardingTests {
    func head(_ text: String) throws -> HTTP1RequestParser.Head {
        var parser = HTTP1RequestParser()
        guard case .head(let h) = try parser.step(Array(text.utf8)).step else { throw HTTP1RequestParser.Failure("no head") }
        return h
    }

    @Test func framingSaidOnceAndPlainlyIsForwardedAsItCame() throws {
        #expect(try !head("GET / HTTP/1.1\r\nHost: a\r\n\r\n").framingRewritten)
        #expect(try !head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").framingRewritten)
        #expect(try !head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").framingRewritten)
    }

    @Test func framingSaidAnotherWayIsRewritten() throws {
        for text in ["POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                     "POST / HTTP/1.1\r\nContent-Length: 005\r\n\r\n",
                     "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n",
                     "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, \r\n\r\n"] {
            let h = try head(text)
            #expect(h.framingRewritten, "\(text)")
        }
        let h = try head("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n")
        #expect(String(decoding: h.serialized, as: UTF8.self) == "POST /x HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\n\r\n")
    }

    @Test func keepAliveFollowsTheVersionAndConnectionHeader() throws {
        #expect(try head("GET / HTTP/1.1\r\n\r\n").isKeepAlive)
        #expect(try !head("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").isKeepAlive)
        #expect(try !head("GET / HTTP/1.0\r\n\r\n").isKeepAlive)
        #expect(try head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").isKeepAlive)
    }
}
