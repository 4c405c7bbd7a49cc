extension DNSMessage {
    /// Limits that keep parsing bounded whatever the input.
    public enum Limits {
        public static let maxNameLength = 255       // wire octets, RFC 1035 §2.3.4
        public static let maxLabelLength = 63
        public static let maxPointerJumps = 64
        public static let maxMessageSize = 65_535
    }

    public static func parse(_ bytes: [UInt8]) -> Result<DNSMessage, DNSParseError> {
        var r = DNSReader(bytes: bytes)
        do { return .success(try r.message()) } catch let e as DNSParseError { return .failure(e) } catch {
            return .failure(DNSParseError(offset: 0, reason: "\(error)"))
        }
    }

    /// Wire format, names uncompressed.
    public func serialize() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(512)
        func u16(_ v: UInt16) { out.append(UInt8(v >> 8)); out.append(UInt8(v & 0xff)) }
        func u32(_ v: UInt32) { u16(UInt16(v >> 16)); u16(UInt16(v & 0xffff)) }
        func name(_ n: String) {
            for label in DNSName.labels(n) {
                let b = Array(label.prefix(Limits.maxLabelLength))
                out.append(UInt8(b.count))
                out += b
            }
            out.append(0)
        }
        u16(id); u16(flags)
        u16(UInt16(clamping: questions.count)); u16(UInt16(clamping: answers.count))
        u16(UInt16(clamping: authorities.count)); u16(UInt16(clamping: additionals.count))
        for q in questions { name(q.name); u16(q.type.rawValue); u16(q.klass) }
        for r in answers + authorities + additionals {
            name(r.name); u16(r.type.rawValue); u16(r.klass); u32(r.ttl)
            var rdata: [UInt8]
            switch r.data {
            case .a(let b), .aaaa(let b), .opaque(let b): rdata = b
            case .cname(let n):
                let mark = out.count
                name(n)
                rdata = Array(out[mark...])
                out.removeSubrange(mark...)
            }
            u16(UInt16(clamping: rdata.count))
            out += rdata
        }
        return out
    }
}

/// Bounds-checked reader over one packet.
struct DNSReader {
    let bytes: [UInt8]
    var pos = 0
    /// The first name read and where it starts: an answer's name is mostly a lone compression
    /// pointer to the question's, and then is that same String (no second decoding, no copy).
    private var firstName: (offset: Int, name: String)?

    init(bytes: [UInt8]) { self.bytes = bytes }

    func fail(_ reason: String, at offset: Int? = nil) -> DNSParseError { DNSParseError(offset: offset ?? pos, reason: reason) }

    mutating func u8() throws -> UInt8 {
        guard pos < bytes.count else { throw fail("truncated") }
        defer { pos += 1 }
        return bytes[pos]
    }

    mutating func u16() throws -> UInt16 {
        guard pos + 2 <= bytes.count else { throw fail("truncated") }
        defer { pos += 2 }
        return UInt16(bytes[pos]) << 8 | UInt16(bytes[pos + 1])
    }

    mutating func u32() throws -> UInt32 {
        UInt32(try u16()) << 16 | UInt32(try u16())
    }

    mutating func message() throws -> DNSMessage {
        guard bytes.count <= DNSMessage.Limits.maxMessageSize else { throw fail("longer than 65535 bytes", at: 0) }
        guard bytes.count >= 12 else { throw fail("header shorter than 12 bytes", at: 0) }
        let id = try u16(), flags = try u16()
        let qd = Int(try u16()), an = Int(try u16()), ns = Int(try u16()), ar = Int(try u16())
        // Each question takes at least 5 bytes and each record 11: counts the packet cannot
        // hold are rejected before any loop runs.
        let remaining = bytes.count - pos
        guard qd * 5 + (an + ns + ar) * 11 <= remaining else {
            throw fail("section counts (\(qd) questions, \(an + ns + ar) records) exceed the \(remaining) bytes left", at: 4)
        }
        var m = DNSMessage(id: id, flags: flags)
        for _ in 0..<qd {
            let n = try name()
            m.questions.append(DNSQuestion(name: n, type: DNSType(rawValue: try u16()), klass: try u16()))
        }
        for _ in 0..<an { m.answers.append(try record()) }
        for _ in 0..<ns { m.authorities.append(try record()) }
        for _ in 0..<ar { m.additionals.append(try record()) }
        return m
    }

    mutating func record() throws -> DNSRecord {
        let n = try name()
        let type = DNSType(rawValue: try u16()), klass = try u16(), ttl = try u32()
        let length = Int(try u16())
        let start = pos
        guard start + length <= bytes.count else { throw fail("record data of \(length) bytes runs past the end") }
        let data: DNSRecord.Data
        switch type {
        case .a where klass == 1:
            guard length == 4 else { throw fail("A record with \(length) bytes of data") }
            data = .a(Array(bytes[start..<start + 4]))
        case .aaaa where klass == 1:
            guard length == 16 else { throw fail("AAAA record with \(length) bytes of data") }
            data = .aaaa(Array(bytes[start..<start + 16]))
        case .cname:
            var sub = self
            sub.pos = start
            let target = try sub.name()
            guard sub.pos <= start + length else { throw fail("CNAME target runs past its record data") }
            data = .cname(target)
        default:
            data = .opaque(Array(bytes[start..<start + length]))
        }
        pos = start + length
        return DNSRecord(name: n, type: type, klass: klass, ttl: ttl, data: data)
    }

    /// A domain name, following compression pointers only backwards (so no loop can form)
    /// and at most `maxPointerJumps` times; labels ≤ 63, the name ≤ 255 octets.
    mutating func name() throws -> String {
        if let first = firstName, pos + 1 < bytes.count, bytes[pos] & 0xC0 == 0xC0,
           Int(bytes[pos] & 0x3F) << 8 | Int(bytes[pos + 1]) == first.offset {
            pos += 2
            return first.name
        }
        // Read twice: checked and measured, then written straight into the String's storage in
        // presentation format (each label and its dot). A String per label and a join cost ~9 %
        // of the DNS proxy's CPU; a byte buffer copied into a String, an allocation per name more.
        let start = pos
        var textLength = 0
        var wireLength = 1
        var cursor = pos
        var jumped = false
        var jumps = 0
        var lowestTarget = pos
        while true {
            guard cursor < bytes.count else { throw fail("name runs past the end", at: cursor) }
            let len = Int(bytes[cursor])
            switch len & 0xC0 {
            case 0x00:
                if len == 0 {
                    cursor += 1
                    if !jumped { pos = cursor }
                    let name = textLength == 0 ? "." : presentation(at: start, length: textLength)
                    if firstName == nil { firstName = (start, name) }
                    return name
                }
                guard len <= DNSMessage.Limits.maxLabelLength else { throw fail("label longer than 63 bytes", at: cursor) }
                guard cursor + 1 + len <= bytes.count else { throw fail("label runs past the end", at: cursor) }
                wireLength += len + 1
                guard wireLength <= DNSMessage.Limits.maxNameLength else { throw fail("name longer than 255 bytes", at: cursor) }
                for b in bytes[(cursor + 1)..<(cursor + 1 + len)] { textLength += DNSName.presentationLength(b) }
                textLength += 1
                cursor += 1 + len
            case 0xC0:
                guard cursor + 1 < bytes.count else { throw fail("compression pointer runs past the end", at: cursor) }
                let target = (len & 0x3F) << 8 | Int(bytes[cursor + 1])
                guard target < lowestTarget else { throw fail("compression pointer does not point backwards (loop)", at: cursor) }
                jumps += 1
                guard jumps <= DNSMessage.Limits.maxPointerJumps else { throw fail("too many compression pointers", at: cursor) }
                if !jumped { pos = cursor + 2 }
                jumped = true
                lowestTarget = target
                cursor = target
            default:
                throw fail("label longer than 63 bytes (length byte \(len) has the reserved label type 0x\(String(len & 0xC0, radix: 16)))", at: cursor)
            }
        }
    }

    /// The text of the name checked by `name()` from START (its labels, pointers followed), LENGTH bytes.
    private func presentation(at start: Int, length: Int) -> String {
        String(unsafeUninitializedCapacity: length) { out in
            var i = 0
            var cursor = start
            while case let len = Int(bytes[cursor]), len != 0 {
                if len & 0xC0 == 0xC0 {
                    cursor = (len & 0x3F) << 8 | Int(bytes[cursor + 1])
                    continue
                }
                for b in bytes[(cursor + 1)..<(cursor + 1 + len)] { i = DNSName.writePresentation(b, to: out, at: i) }
                out[i] = UInt8(ascii: ".")
                i += 1
                cursor += 1 + len
            }
            return i
        }
    }
}

/// Names in presentation format, as dig prints them: printable ASCII as is, `.` and `\\`
/// escaped with a backslash, every other byte as `\\DDD`. Lossless both ways, so a label with
/// any bytes survives parse → serialize unchanged.
public enum DNSName {
    /// The length of a label's byte in presentation format: itself, escaped, or `\\DDD`.
    @inline(__always) static func presentationLength(_ b: UInt8) -> Int {
        switch b {
        case UInt8(ascii: "."), UInt8(ascii: "\\"): 2
        case 0x21...0x7E: 1
        default: 4
        }
    }

    /// A label's byte in presentation format written into OUT at I; the index after it.
    @inline(__always) static func writePresentation(_ b: UInt8, to out: UnsafeMutableBufferPointer<UInt8>, at i: Int) -> Int {
        switch b {
        case UInt8(ascii: "."), UInt8(ascii: "\\"):
            out[i] = UInt8(ascii: "\\")
            out[i + 1] = b
            return i + 2
        case 0x21...0x7E:
            out[i] = b
            return i + 1
        default:
            out[i] = UInt8(ascii: "\\")
            out[i + 1] = UInt8(ascii: "0") + b / 100
            out[i + 2] = UInt8(ascii: "0") + b / 10 % 10
            out[i + 3] = UInt8(ascii: "0") + b % 10
            return i + 4
        }
    }

    /// Wire labels of a presentation-format name (`.` alone is the root: no labels).
    public static func labels(_ name: String) -> [[UInt8]] {
        var labels: [[UInt8]] = []
        var cur: [UInt8] = []
        let u = Array(name.utf8)
        var i = 0
        while i < u.count {
            let c = u[i]
            if c == UInt8(ascii: "\\"), i + 1 < u.count {
                if i + 3 < u.count, let d = UInt8(String(decoding: u[(i + 1)...(i + 3)], as: UTF8.self)), u[(i + 1)...(i + 3)].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
                    cur.append(d)
                    i += 4
                } else {
                    cur.append(u[i + 1])
                    i += 2
                }
            } else if c == UInt8(ascii: ".") {
                if !cur.isEmpty { labels.append(cur) }
                cur = []
                i += 1
            } else {
                cur.append(c)
                i += 1
            }
        }
        if !cur.isEmpty { labels.append(cur) }
        return labels
    }
}
