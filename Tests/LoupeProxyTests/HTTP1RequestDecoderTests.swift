import LoupeProtocols
@testable import LoupeProxy
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

/// `HTTP1RequestDecoder` in a channel: each message's parts arrive as soon as its bytes have,
/// a message's end included, and what follows an upgrade is handed on untouched.
@Suite struct HTTP1RequestDecoderTests {
    func channel() throws -> EmbeddedChannel {
        let c = EmbeddedChannel()
        try c.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTP1RequestDecoder(maxHeaderBytes: 1024)))
        return c
    }

    func parts(_ c: EmbeddedChannel) throws -> [String] {
        var out: [String] = []
        while let p = try c.readInbound(as: HTTPServerRequestPart.self) {
            switch p {
            case .head(let h): out.append("head \(h.method.rawValue) \(h.uri)")
            case .body(let b): out.append("body \(String(buffer: b))")
            case .end(let t): out.append("end\(t.map { " \($0.map { "\($0.name)=\($0.value)" })" } ?? "")")
            }
        }
        return out
    }

    @Test func aBodylessRequestEndsInTheReadThatCarriedIt() throws {
        let c = try channel()
        try c.writeInbound(ByteBuffer(string: "get / HTTP/1.1\r\nHost: a\r\n\r\n"))
        #expect(try parts(c) == ["head get /", "end"])
        #expect(try c.readInbound(as: HTTPServerRequestPart.self) == nil)
    }

    @Test func aSizedBodyEndsWithItsLastByte() throws {
        let c = try channel()
        try c.writeInbound(ByteBuffer(string: "PURGE /x HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc"))
        #expect(try parts(c) == ["head PURGE /x", "body abc"])
        try c.writeInbound(ByteBuffer(string: "def"))
        #expect(try parts(c) == ["body def", "end"])
    }

    @Test func malformedInputIsAnErrorWithItsReason() throws {
        let c = try channel()
        #expect(throws: HTTP1RequestParser.Failure("malformed header: whitespace before the colon")) {
            try c.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\nHost : a\r\n\r\n"))
        }
    }

    @Test func bytesAfterAnUpgradeGoOnWhenTheDecoderIsRemoved() throws {
        let c = try channel()
        try c.writeInbound(ByteBuffer(string: "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\u{1}frame"))
        #expect(try parts(c) == ["head GET /ws", "end"])
        let handler = try c.pipeline.syncOperations.handler(type: ByteToMessageHandler<HTTP1RequestDecoder>.self)
        let removed = c.pipeline.syncOperations.removeHandler(handler)
        c.embeddedEventLoop.run() // the removal is executed on the loop: no wait() on an EmbeddedEventLoop
        try removed.wait()
        #expect(try c.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "\u{1}frame"))
    }
}
