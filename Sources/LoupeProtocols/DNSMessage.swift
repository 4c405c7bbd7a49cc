/// A DNS message (RFC 1035) as the proxy needs it: header, questions, and records with A,
/// AAAA and CNAME data decoded and everything else (EDNS0 OPT included) carried opaque.
/// Parsing is strictly bounded — every length, count, label and compression pointer is checked
/// against the packet — and any malformed input is a `DNSParseError` value, never a crash.
public struct DNSMessage: Equatable, Sendable {
    public var id: UInt16
    public var flags: UInt16
    public var questions: [DNSQuestion]
    public var answers: [DNSRecord]
    public var authorities: [DNSRecord]
    public var additionals: [DNSRecord]

    public init(id: UInt16, flags: UInt16, questions: [DNSQuestion] = [], answers: [DNSRecord] = [],
                authorities: [DNSRecord] = [], additionals: [DNSRecord] = []) {
        self.id = id
        self.flags = flags
        self.questions = questions
        self.answers = answers
        self.authorities = authorities
        self.additionals = additionals
    }

    public var isResponse: Bool { flags & 0x8000 != 0 }
    public var opcode: UInt8 { UInt8((flags >> 11) & 0xF) }
    public var isTruncated: Bool { flags & 0x0200 != 0 }
    public var rcode: DNSRCode { DNSRCode(rawValue: UInt8(flags & 0xF)) }

    /// The shortest TTL among the A/AAAA answers (how long the addresses may be used), nil
    /// when there are none.
    public var addressTTL: UInt32? {
        var lowest: UInt32?
        for r in answers {
            switch r.data {
            case .a, .aaaa: lowest = min(lowest ?? r.ttl, r.ttl)
            default: break
            }
        }
        return lowest
    }

    /// FORMERR for a malformed query, echoing its id when the first two bytes are there.
    public static func formatError(replyingTo bytes: [UInt8]) -> DNSMessage {
        let id = bytes.count >= 2 ? UInt16(bytes[0]) << 8 | UInt16(bytes[1]) : 0
        return DNSMessage(id: id, flags: 0x8000 | UInt16(DNSRCode.formErr.rawValue))
    }

    /// A response to `query` with `rcode` and no records (REFUSED, SERVFAIL, FORMERR from the
    /// proxy itself): same id, question echoed, RD copied, RA set.
    public static func reply(to query: DNSMessage, rcode: DNSRCode) -> DNSMessage {
        DNSMessage(id: query.id, flags: 0x8000 | (query.flags & 0x7900) | 0x0080 | UInt16(rcode.rawValue & 0xF),
                   questions: query.questions)
    }
}

public struct DNSQuestion: Equatable, Sendable {
    /// Fully qualified, with the trailing dot: `api.example.test.`
    public var name: String
    public var type: DNSType
    public var klass: UInt16

    public init(name: String, type: DNSType, klass: UInt16 = 1) {
        self.name = name
        self.type = type
        self.klass = klass
    }
}

public struct DNSRecord: Equatable, Sendable {
    public enum Data: Equatable, Sendable {
        case a([UInt8])
        case aaaa([UInt8])
        case cname(String)
        case opaque([UInt8])
    }
    public var name: String
    public var type: DNSType
    public var klass: UInt16
    public var ttl: UInt32
    public var data: Data

    public init(name: String, type: DNSType, klass: UInt16 = 1, ttl: UInt32, data: Data) {
        self.name = name
        self.type = type
        self.klass = klass
        self.ttl = ttl
        self.data = data
    }

    /// `198.19.0.20` / `2001:db8:19::14` for A and AAAA records.
    public var address: String? {
        switch data {
        case .a(let b): return DNSRecord.ipv4String(b)
        case .aaaa(let b): return DNSRecord.ipv6String(b)
        default: return nil
        }
    }

    /// Dotted decimal, written in one go (a String per byte and a join before).
    static func ipv4String(_ b: [UInt8]) -> String {
        var text: [UInt8] = []
        text.reserveCapacity(15)
        for (i, byte) in b.enumerated() {
            if i > 0 { text.append(UInt8(ascii: ".")) }
            if byte >= 100 { text.append(UInt8(ascii: "0") + byte / 100) }
            if byte >= 10 { text.append(UInt8(ascii: "0") + byte / 10 % 10) }
            text.append(UInt8(ascii: "0") + byte % 10)
        }
        return String(decoding: text, as: UTF8.self)
    }

    static func ipv6String(_ b: [UInt8]) -> String {
        var groups: [UInt16] = []
        for i in stride(from: 0, to: 16, by: 2) { groups.append(UInt16(b[i]) << 8 | UInt16(b[i + 1])) }
        // Longest run of zero groups (length ≥ 2) becomes "::", as RFC 5952 says.
        var best = (start: -1, len: 0), run = (start: -1, len: 0)
        for (i, g) in groups.enumerated() {
            if g == 0 {
                run = run.start < 0 ? (i, 1) : (run.start, run.len + 1)
                if run.len > best.len { best = run }
            } else {
                run = (-1, 0)
            }
        }
        func hex(_ g: [UInt16]) -> String { g.map { String($0, radix: 16) }.joined(separator: ":") }
        guard best.len >= 2 else { return hex(groups) }
        return hex(Array(groups[..<best.start])) + "::" + hex(Array(groups[(best.start + best.len)...]))
    }
}

/// Record types, with names for the common ones (as Hubble prints `qtypes`/`rrtypes`).
public struct DNSType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let a = DNSType(rawValue: 1), ns = DNSType(rawValue: 2), cname = DNSType(rawValue: 5)
    public static let soa = DNSType(rawValue: 6), ptr = DNSType(rawValue: 12), mx = DNSType(rawValue: 15)
    public static let txt = DNSType(rawValue: 16), aaaa = DNSType(rawValue: 28), srv = DNSType(rawValue: 33)
    public static let opt = DNSType(rawValue: 41), https = DNSType(rawValue: 65), any = DNSType(rawValue: 255)

    /// The mnemonic (`A`, `AAAA`, …), `TYPE<n>` for a type without one. A switch: it is said
    /// for every question and record of every recorded query.
    public var description: String {
        switch rawValue {
        case 1: "A"
        case 2: "NS"
        case 5: "CNAME"
        case 6: "SOA"
        case 12: "PTR"
        case 15: "MX"
        case 16: "TXT"
        case 28: "AAAA"
        case 33: "SRV"
        case 41: "OPT"
        case 64: "SVCB"
        case 65: "HTTPS"
        case 255: "ANY"
        default: "TYPE\(rawValue)"
        }
    }
}

public struct DNSRCode: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let noError = DNSRCode(rawValue: 0), formErr = DNSRCode(rawValue: 1), servFail = DNSRCode(rawValue: 2)
    public static let nxDomain = DNSRCode(rawValue: 3), notImp = DNSRCode(rawValue: 4), refused = DNSRCode(rawValue: 5)
}

/// Why a packet is not a DNS message, and where.
public struct DNSParseError: Error, Equatable, Sendable, CustomStringConvertible {
    public var offset: Int
    public var reason: String
    public var description: String { "malformed DNS message at byte \(offset): \(reason)" }
}
