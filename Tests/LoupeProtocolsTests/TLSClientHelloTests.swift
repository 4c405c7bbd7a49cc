import Foundation
@testable import LoupeProtocols
import Testing

/// ClientHellos captured from real clients (Fixtures/*.hex: the first bytes each sent to a
/// listener on 127.0.0.1), and every prefix of each.
@Suite struct TLSClientHelloTests {
    static func fixture(_ name: String) -> [UInt8] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/\(name).hex")
        let hex = try! String(contentsOf: url, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        var bytes: [UInt8] = []
        var i = hex.startIndex
        while i < hex.endIndex {
            let j = hex.index(i, offsetBy: 2)
            bytes.append(UInt8(hex[i..<j], radix: 16)!)
            i = j
        }
        return bytes
    }

    static func hello(_ bytes: [UInt8]) -> TLSClientHello? {
        if case .hello(let h) = TLSClientHello.parse(bytes) { return h }
        return nil
    }

    @Test(arguments: [
        ("curl", "api.example.test", ["h2", "http/1.1"]),         // curl 7.88.1 / OpenSSL 3.0
        ("openssl", "www.example.test", ["h2", "http/1.1"]),      // openssl s_client -alpn h2,http/1.1
        ("python", "edge.example.test", ["http/1.1"]),            // python ssl, set_alpn_protocols
        ("openssl-no-sni", nil, []),                              // s_client -noservername -tls1_2
    ] as [(String, String?, [String])])
    func capturedHellosGiveSNIAndALPN(name: String, sni: String?, alpn: [String]) throws {
        let bytes = Self.fixture(name)
        let h = try #require(Self.hello(bytes))
        #expect(h.serverName == sni)
        #expect(h.alpn == alpn)
        #expect(h.legacyVersion == 0x0303 && h.cipherSuiteCount > 0)
        #expect(h.recordBytes == bytes.count)
        #expect(h.highestVersion == (name == "openssl-no-sni" ? 0x0303 : 0x0304))
    }

    @Test(arguments: ["curl", "openssl", "python", "openssl-no-sni"])
    func everyPrefixNeedsMore(name: String) {
        let bytes = Self.fixture(name)
        for n in 0..<bytes.count {
            #expect(TLSClientHello.parse(bytes.prefix(n)) == .needMore, "prefix \(n) of \(name)")
        }
    }

    /// The same hello re-framed into records of `size` bytes each (RFC 8446 §5.1).
    static func refragment(_ bytes: [UInt8], size: Int) -> [UInt8] {
        let handshake = Array(bytes[5...])
        var out: [UInt8] = []
        var i = 0
        while i < handshake.count {
            let chunk = handshake[i..<min(i + size, handshake.count)]
            out += [22, 3, 1, UInt8(chunk.count >> 8), UInt8(chunk.count & 0xff)] + chunk
            i += size
        }
        return out
    }

    @Test func aHelloSplitAcrossManyRecordsIsReassembled() throws {
        let bytes = Self.fixture("curl")
        for size in [7, 100] {
            let split = Self.refragment(bytes, size: size)
            let h = try #require(Self.hello(split), "records of \(size) bytes")
            #expect(h.serverName == "api.example.test" && h.alpn == ["h2", "http/1.1"] && h.recordBytes == split.count)
            for n in stride(from: 0, to: split.count, by: 97) {
                #expect(TLSClientHello.parse(split.prefix(n)) == .needMore)
                #expect(TLSClientHello.bytesNeeded(Array(split.prefix(n))) > n)
            }
        }
        // One byte per record: more records than any client uses, refused rather than parsed 500 times.
        guard case .malformed(let why) = TLSClientHello.parse(Self.refragment(bytes, size: 1)) else {
            Issue.record("1-byte records")
            return
        }
        #expect(why.contains("more than 256 records"))
    }

    @Test func otherProtocolsAndBrokenHellosSayWhy() {
        guard case .notTLS(let why) = TLSClientHello.parse(Array("GET / HTTP/1.1\r\n".utf8)) else { Issue.record("HTTP is not TLS"); return }
        #expect(why.contains("first byte 71"))
        guard case .notTLS = TLSClientHello.parse([22, 2, 0]) else { Issue.record("SSL 2 style version"); return }
        var alert = Self.fixture("curl")
        alert[0] = 21
        guard case .notTLS = TLSClientHello.parse(alert) else { Issue.record("an alert record is not a hello"); return }
        var serverHello = Self.fixture("curl")
        serverHello[5] = 2
        guard case .malformed(let m) = TLSClientHello.parse(serverHello) else { Issue.record("ServerHello"); return }
        #expect(m.contains("handshake type 2"))
        var badLength = Self.fixture("python")
        badLength[5 + 4 + 2 + 32] = 200 // session_id length over 32
        guard case .malformed(let s) = TLSClientHello.parse(badLength) else { Issue.record("session_id"); return }
        #expect(s.contains("session_id"))
        guard case .malformed(let big) = TLSClientHello.parse([22, 3, 1, 0, 4, 1, 0x02, 0, 0]) else { Issue.record("huge"); return }
        #expect(big.contains("exceeds"))
    }

    @Test func onlyHostNamesAreServerNames() {
        #expect(TLSClientHello.hostName(Array("API.Example.test".utf8)) == "api.example.test")
        #expect(TLSClientHello.hostName(Array("a b".utf8)) == nil)
        #expect(TLSClientHello.hostName(Array("bad..name".utf8)) == nil)
        #expect(TLSClientHello.hostName(Array("trailing.".utf8)) == nil)
        #expect(TLSClientHello.hostName([0x61, 0x00]) == nil)
        #expect(TLSClientHello.hostName(Array(String(repeating: "a", count: 64).utf8)) == nil)
    }
}
