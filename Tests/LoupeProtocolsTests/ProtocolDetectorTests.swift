import LoupeProtocols
import Testing

@Suite struct ProtocolDetectorTests {
    @Test func everyPrefixOfAnHTTPRequestLineIsNeedMoreThenHTTP1() {
        let line = Array("POST /v1/request-landing HTTP/1.1\r\n".utf8)
        for n in 1..<line.count { #expect(ProtocolDetector.detect(line.prefix(n)) == .needMore, "prefix \(n)") }
        #expect(ProtocolDetector.detect(line) == .http1) // the line end decides
        #expect(ProtocolDetector.detect(line + Array("Host: x\r\n\r\n".utf8)) == .http1)
    }

    @Test(arguments: ["get", "PURGE", "M-SEARCH", "BREW", "x", "SEARCH", "QUERY", "!#$%&'*+-.^_`|~09"])
    func anyMethodTokenIsHTTP1(method: String) {
        #expect(ProtocolDetector.detect(Array("\(method) / HTTP/1.1\r\nHost: x\r\n\r\n".utf8)) == .http1)
        #expect(ProtocolDetector.detect(Array("\(method) * HTTP/1.0\n".utf8)) == .http1) // bare LF: the parser's to refuse
    }

    @Test func aLineShapedLikeARequestButNotEndingInAVersionIsNotHTTP() {
        #expect(ProtocolDetector.detect(Array("get key\r\n".utf8)) == .opaque)           // memcached
        #expect(ProtocolDetector.detect(Array("SET k v\r\n".utf8)) == .opaque)           // Redis inline
        #expect(ProtocolDetector.detect(Array("GET / HTTP/1\r\n".utf8)) == .opaque)
        #expect(ProtocolDetector.detect(Array("GET / HTTQ/1.1\r\n".utf8)) == .opaque)
        #expect(ProtocolDetector.detect(Array(" GET / HTTP/1.1\r\n".utf8)) == .opaque)
        #expect(ProtocolDetector.detect(Array("GET\t/ HTTP/1.1\r\n".utf8)) == .opaque)
        // Malformed in the middle but shaped like a request: HTTP, for the parser to answer 400.
        #expect(ProtocolDetector.detect(Array("GET /bad path HTTP/1.1\r\n".utf8)) == .http1)
    }

    @Test func aLongRequestLineIsDecidedAtTheCap() {
        let long = Array("GET /".utf8) + Array(repeating: UInt8(ascii: "a"), count: ProtocolDetector.requestLineCap)
        #expect(ProtocolDetector.detect(long.prefix(ProtocolDetector.requestLineCap - 1)) == .needMore)
        #expect(ProtocolDetector.detect(long) == .http1)
        #expect(ProtocolDetector.detect(Array(repeating: UInt8(ascii: "A"), count: ProtocolDetector.requestLineCap)) == .opaque)
    }

    @Test func http2PrefaceIsRecognisedOnlyWhenComplete() {
        let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
        for n in 1..<preface.count { #expect(ProtocolDetector.detect(preface.prefix(n)) == .needMore) }
        #expect(ProtocolDetector.detect(preface) == .http2)
    }

    @Test func tlsRecordAndBinaryAreNotHTTP() {
        #expect(ProtocolDetector.detect([0x16, 0x03, 0x01, 0x02, 0x00]) == .tls)
        #expect(ProtocolDetector.detect([0x00, 0x01, 0x02]) == .opaque)
        #expect(ProtocolDetector.detect(Array("SSH-2.0-OpenSSH\r\n".utf8)) == .opaque)
        #expect(ProtocolDetector.detect(Array("GETX/ HTTP/1.1\r\n".utf8)) == .opaque)
    }

    @Test func anHTTP2ServersSettingsAreNotAServerFirstProtocol() {
        // grpc-core's and nginx's first bytes: SETTINGS (3 and 4 settings), before the client speaks.
        let grpc: [UInt8] = [0, 0, 18, 0x04, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, 0, 4, 0, 0x40, 0, 0, 0, 6, 0, 0, 0x40, 0]
        #expect(ProtocolDetector.isHTTP2ServerPreface(grpc))
        #expect(ProtocolDetector.isHTTP2ServerPreface([0, 0, 0, 0x04, 0, 0, 0, 0, 0])) // empty SETTINGS
        #expect(!ProtocolDetector.isHTTP2ServerPreface([0, 0, 0, 0x04, 0x01, 0, 0, 0, 0])) // an ACK
        #expect(!ProtocolDetector.isHTTP2ServerPreface([0, 0, 6, 0x04, 0, 0, 0, 0, 1])) // not stream 0
        #expect(!ProtocolDetector.isHTTP2ServerPreface([0, 0, 5, 0x04, 0, 0, 0, 0, 0])) // not n × 6 bytes
        #expect(!ProtocolDetector.isHTTP2ServerPreface(Array("220 smtp.example.test ESMTP\r\n".utf8)))
        #expect(!ProtocolDetector.isHTTP2ServerPreface(Array("SSH-2.0".utf8)))
    }
}
