import LoupeProtocols
import Testing

/// The HTTP/1 response parser: each response's end found by its framing (RFC 9112 §6.3), whole
/// and one byte at a time, so that the proxy can relay the bytes as they came.
@Suite struct HTTP1ResponseParserTests {
    enum Event: Equatable {
        case head(Int, fields: [String])
        case body(String)
        case end
        case stopped(rest: String)
    }

    /// Feeds `text` in pieces of `chunk` bytes; `answering` lists the requests in order.
    func parse(_ text: String, answering: [HTTP1ResponseParser.Request] = [], chunk: Int = .max) throws -> [Event] {
        let all = Array(text.utf8)
        var parser = HTTP1ResponseParser(maxHeaderBytes: 1024)
        var buffer: [UInt8] = []
        var fed = 0
        var events: [Event] = []
        var requests = answering[...]
        while true {
            let (step, consumed) = try parser.step(buffer, answering: requests.first ?? .other)
            let taken = Array(buffer.prefix(consumed))
            buffer.removeFirst(consumed)
            switch step {
            case .head(let h):
                events.append(.head(h.code, fields: h.fields.map { "\($0.name): \($0.value)" }))
                if h.code >= 200 || h.code == 101 { requests = requests.dropFirst() }
            case .body:
                let s = String(decoding: taken, as: UTF8.self)
                if case .body(let prev) = events.last { events[events.count - 1] = .body(prev + s) } else { events.append(.body(s)) }
            case .end:
                events.append(.end)
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

    func both(_ text: String, answering: [HTTP1ResponseParser.Request] = []) throws -> [Event] {
        let whole = try parse(text, answering: answering)
        #expect(try parse(text, answering: answering, chunk: 1) == whole)
        return whole
    }

    @Test func sizedChunkedAndBodilessResponsesEndWhereTheirFramingSays() throws {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            + "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
            + "HTTP/1.1 204 No Content\r\n\r\n"
            + "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"
            + "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"   // answers HEAD: no body
            + "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
        #expect(try both(text, answering: [.other, .other, .other, .other, .head, .other]) == [
            .head(200, fields: ["Content-Length: 5"]), .body("hello"), .end,
            .head(200, fields: ["Transfer-Encoding: chunked"]), .body("abc"), .end,
            .head(204, fields: []), .end,
            .head(304, fields: ["Content-Length: 99"]), .end,
            .head(200, fields: ["Content-Length: 7"]), .end,
            .head(100, fields: []), .head(201, fields: ["Content-Length: 0"]), .end,
        ])
    }

    @Test func withoutALengthTheBodyRunsToTheClose() throws {
        #expect(try both("HTTP/1.0 200 OK\r\nServer: x\r\n\r\nall of it") == [
            .head(200, fields: ["Server: x"]), .body("all of it"),
        ])
        // A transfer coding other than chunked last: also until the close (RFC 9112 §6.3).
        #expect(try both("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz") == [
            .head(200, fields: ["Transfer-Encoding: gzip"]), .body("zz"),
        ])
    }

    @Test func switchingProtocolsAndConnectStopTheParser() throws {
        #expect(try both("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\u{1}frame") == [
            .head(101, fields: ["Upgrade: websocket"]), .end, .stopped(rest: "\u{1}frame"),
        ])
        #expect(try both("HTTP/1.1 200 Connection established\r\n\r\nTLS...", answering: [.connect]) == [
            .head(200, fields: []), .end, .stopped(rest: "TLS..."),
        ])
    }

    @Test func malformedResponsesAreRefusedWithTheReason() throws {
        for (text, reason) in [
            ("HTTP/1.1 2x0 OK\r\n\r\n", "malformed status line"),
            ("HTTP/2.0 200 OK\r\n\r\n", "malformed status line: HTTP version 2.0"),
            ("HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "malformed Content-Length in a response"),
            ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
             "Transfer-Encoding with Content-Length in a response"),
            ("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", "malformed line ending (a bare LF) in the response header block"),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
        ] {
            #expect(throws: HTTP1ResponseParser.Failure(reason)) { try parse(text) }
        }
    }
}
