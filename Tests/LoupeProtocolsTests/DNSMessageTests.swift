import LoupeProtocols
import Testing

/// A response as a resolver sends it: compressed names, a CNAME chain, A answers, EDNS0 OPT.
/// Question api.example.test. A; answers: api.example.test. CNAME edge.example.test.;
/// edge.example.test. A 198.19.0.20 (TTL 300); additional: OPT (udp 1232).
let compressedResponse: [UInt8] = [
    0x12, 0x34, 0x81, 0x80, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x01,
    // question at 12: 3api 7example 4test 0
    3, 0x61, 0x70, 0x69, 7, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 4, 0x74, 0x65, 0x73, 0x74, 0,
    0x00, 0x01, 0x00, 0x01,
    // answer 1: ptr→12 CNAME IN ttl 60, rdata "4edge" + ptr→16 (example.test)
    0xC0, 12, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3C, 0x00, 0x07, 4, 0x65, 0x64, 0x67, 0x65, 0xC0, 16,
    // answer 2: ptr→(offset of "4edge" = 46) A IN ttl 300 198.19.0.20
    0xC0, 46, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x01, 0x2C, 0x00, 0x04, 198, 19, 0, 20,
    // OPT: root name, type 41, udp size 1232, ttl 0, rdlen 0
    0x00, 0x00, 0x29, 0x04, 0xD0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
]

@Suite struct DNSMessageTests {
    @Test func parsesACompressedResponseWithCNAMEChainAndOPT() throws {
        let m = try DNSMessage.parse(compressedResponse).get()
        #expect(m.id == 0x1234 && m.isResponse && m.rcode == .noError)
        #expect(m.questions == [DNSQuestion(name: "api.example.test.", type: .a)])
        #expect(m.answers[0] == DNSRecord(name: "api.example.test.", type: .cname, ttl: 60, data: .cname("edge.example.test.")))
        #expect(m.answers[1].name == "edge.example.test." && m.answers[1].address == "198.19.0.20" && m.answers[1].ttl == 300)
        #expect(m.additionals[0].type == .opt && m.additionals[0].klass == 1232)
    }

    @Test func everyPrefixIsAnErrorNotACrash() {
        for n in 0..<compressedResponse.count {
            guard case .failure = DNSMessage.parse(Array(compressedResponse.prefix(n))) else {
                Issue.record("prefix \(n) parsed")
                continue
            }
        }
    }

    @Test func malformedPacketsAreNamedErrors() {
        func reason(_ b: [UInt8]) -> String {
            if case .failure(let e) = DNSMessage.parse(b) { return e.reason }
            return "parsed"
        }
        let header: [UInt8] = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        #expect(reason([0, 1, 0]).contains("header shorter than 12 bytes"))
        #expect(reason(header + [0xC0, 12, 0, 1, 0, 1]).contains("does not point backwards"))           // points at itself
        #expect(reason(header + [0xC0, 14, 0xC0, 12, 0, 1, 0, 1]).contains("does not point backwards"))   // forward pointer
        #expect(reason(header + [64] + Array(repeating: 0x61, count: 64) + [0, 0, 1, 0, 1]).contains("label longer than 63"))
        #expect(reason([0, 1, 0, 0, 0x03, 0xE8, 0, 0, 0, 0, 0, 0]).contains("exceed"))                   // 1000 questions, no body
        #expect(reason(header + [0x80, 0, 0, 1, 0, 1]).contains("reserved label type"))
        var long: [UInt8] = header
        for _ in 0..<5 { long += [60] + Array(repeating: 0x61, count: 60) }
        #expect(reason(long + [0, 0, 1, 0, 1]).contains("longer than 255"))
    }

    @Test func serializeThenParseRoundTrips() throws {
        var g = SplitMix(seed: 42)
        for _ in 0..<2000 {
            let m = randomMessage(&g)
            let parsed = try DNSMessage.parse(m.serialize()).get()
            #expect(parsed == m)
        }
    }

    @Test func randomBytesNeverCrash() {
        var g = SplitMix(seed: 7)
        for _ in 0..<20_000 {
            var b = compressedResponse
            for _ in 0..<Int.random(in: 1...6, using: &g) { b[Int.random(in: 0..<b.count, using: &g)] = UInt8.random(in: 0...255, using: &g) }
            _ = DNSMessage.parse(b)
            _ = DNSMessage.parse((0..<Int.random(in: 0...64, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) })
        }
    }

    @Test func proxyRepliesEchoTheQuestion() throws {
        let q = DNSMessage(id: 7, flags: 0x0100, questions: [DNSQuestion(name: "x.test.", type: .aaaa)])
        let r = DNSMessage.reply(to: q, rcode: .refused)
        #expect(r.isResponse && r.rcode == .refused && r.id == 7 && r.questions == q.questions && r.flags & 0x0100 != 0)
        #expect(DNSRecord(name: ".", type: .aaaa, ttl: 1, data: .aaaa([0x20, 0x01, 0x0d, 0xb8, 0, 0x19] + Array(repeating: 0, count: 9) + [0x14])).address == "2001:db8:19::14")
    }

    @Test func addressesAreDottedDecimalAndTheirTTLIsTheShortest() {
        for (bytes, text) in [([0, 0, 0, 0], "0.0.0.0"), ([255, 255, 255, 255], "255.255.255.255"), ([198, 19, 0, 9], "198.19.0.9"),
                              ([10, 100, 99, 1], "10.100.99.1")] as [([UInt8], String)] {
            #expect(DNSRecord(name: ".", type: .a, ttl: 1, data: .a(bytes)).address == text)
        }
        let r = DNSMessage(id: 1, flags: 0x8180, answers: [
            DNSRecord(name: "a.", type: .cname, ttl: 5, data: .cname("b.")),
            DNSRecord(name: "b.", type: .a, ttl: 300, data: .a([1, 2, 3, 4])),
            DNSRecord(name: "b.", type: .aaaa, ttl: 60, data: .aaaa(Array(repeating: 0, count: 16))),
        ])
        #expect(r.addressTTL == 60)
        #expect(DNSMessage(id: 1, flags: 0x8180, answers: [r.answers[0]]).addressTTL == nil)
    }

    func randomName(_ g: inout SplitMix) -> String {
        let n = Int.random(in: 0...4, using: &g)
        if n == 0 { return "." }
        let chars = Array("abcdefghijklmnopqrstuvwxyz0123456789-")  // odd bytes: DNSNameTests
        return (0..<n).map { _ in String((0..<Int.random(in: 1...20, using: &g)).map { _ in chars.randomElement(using: &g)! }) }
            .joined(separator: ".") + "."
    }

    func randomMessage(_ g: inout SplitMix) -> DNSMessage {
        func record() -> DNSRecord {
            let name = randomName(&g), ttl = UInt32.random(in: 0...UInt32.max, using: &g)
            switch Int.random(in: 0...3, using: &g) {
            case 0: return DNSRecord(name: name, type: .a, ttl: ttl, data: .a((0..<4).map { _ in UInt8.random(in: 0...255, using: &g) }))
            case 1: return DNSRecord(name: name, type: .aaaa, ttl: ttl, data: .aaaa((0..<16).map { _ in UInt8.random(in: 0...255, using: &g) }))
            case 2: return DNSRecord(name: name, type: .cname, ttl: ttl, data: .cname(randomName(&g)))
            default: return DNSRecord(name: name, type: .txt, ttl: ttl, data: .opaque((0..<Int.random(in: 0...40, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }))
            }
        }
        return DNSMessage(id: UInt16.random(in: 0...UInt16.max, using: &g), flags: UInt16.random(in: 0...UInt16.max, using: &g),
                          questions: (0..<Int.random(in: 0...3, using: &g)).map { _ in DNSQuestion(name: randomName(&g), type: DNSType(rawValue: UInt16.random(in: 1...300, using: &g))) },
                          answers: (0..<Int.random(in: 0...4, using: &g)).map { _ in record() },
                          authorities: (0..<Int.random(in: 0...2, using: &g)).map { _ in record() },
                          additionals: (0..<Int.random(in: 0...2, using: &g)).map { _ in record() })
    }
}

/// Deterministic generator so a failing round trip can be replayed.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite struct DNSNameTests {
    @Test func oddBytesAreEscapedAndSurviveARoundTrip() throws {
        let header: [UInt8] = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        let label: [UInt8] = [0x61, 0x2E, 0x5C, 0x00, 0xFF, 0x20]
        let m = try DNSMessage.parse(header + [UInt8(label.count)] + label + [0, 0, 1, 0, 1]).get()
        #expect(m.questions[0].name == #"a\.\\\000\255\032."#)
        #expect(DNSName.labels(m.questions[0].name) == [label])
        #expect(try DNSMessage.parse(m.serialize()).get() == m)
    }
}
