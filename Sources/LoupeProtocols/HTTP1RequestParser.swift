/// HTTP/1.1 requests as RFC 9112 writes them, parsed by the grammar rather than by a list of
/// known spellings: a method is any token (`get`, `PURGE` and `M-SEARCH` included — methods are
/// case-sensitive, and policy decides what they may do), a header name any token.
///
/// Pure: bytes in, steps out, nothing copied but the head. One framing decision per message,
/// made once from the head (RFC 9112 §6.3) and handed to the forwarding side with the head's
/// framing headers normalised, so that the proxy and the server can never read a body
/// differently (request smuggling):
/// - `Transfer-Encoding` with `Content-Length`, a `Content-Length` that is not digits or whose
///   copies differ, `Transfer-Encoding` in HTTP/1.0, bare LF line endings, whitespace before a
///   header's colon, obsolete line folding and a second `Host` are rejected (400);
/// - a transfer coding other than `chunked` is not understood: 501 (RFC 9112 §6.1);
/// - after an `Upgrade` request or `CONNECT` the parser stops: what follows is not HTTP/1.
public struct HTTP1RequestParser: Sendable {
    public struct Field: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    public struct Head: Sendable, Equatable {
        public var method: String
        public var target: String
        public var major: Int
        public var minor: Int
        /// As received, except the framing headers: a chunked request carries one
        /// `transfer-encoding: chunked`, a sized one one `content-length`.
        public var fields: [Field]
        /// The request asked to leave HTTP/1 (an `Upgrade` header, or `CONNECT`): the parser
        /// stops after it.
        public var leavesHTTP: Bool
        /// The framing headers as received said it another way (several `Content-Length` or
        /// `Transfer-Encoding` lines, `Chunked`, `007`): the head must be forwarded as `fields`
        /// say, not as its bytes came. False for the usual single well-formed header.
        public var framingRewritten: Bool = false


        /// The client keeps the connection after this exchange: HTTP/1.1 unless `Connection:
        /// close`, HTTP/1.0 only with `Connection: keep-alive` (RFC 9112 §9.3).
        public var isKeepAlive: Bool {
            var close = false, keepAlive = false
            for f in fields where f.name.caselessEquals("connection") {
                f.value.forEachListMember { token in
                    if token.caselessEquals("close") { close = true } else if token.caselessEquals("keep-alive") { keepAlive = true }
                }
            }
            return minor >= 1 ? !close : keepAlive && !close
        }

        /// The head as forwarded when its framing was rewritten: request line and `fields`.
        public var serialized: [UInt8] {
            var out: [UInt8] = []
            out.reserveCapacity(256)
            out += method.utf8; out.append(UInt8(ascii: " ")); out += target.utf8
            out += " HTTP/\(major).\(minor)\r\n".utf8
            for f in fields { out += f.name.utf8; out += ": ".utf8; out += f.value.utf8; out += "\r\n".utf8 }
            out += "\r\n".utf8
            return out
        }
    }

    /// Why a request was refused, and the status that says so.
    public struct Failure: Error, Sendable, Equatable, CustomStringConvertible {
        public var reason: String
        /// 400, or 501 (a transfer coding not understood), 505 (an HTTP version not supported).
        public var status: Int
        public init(_ reason: String, status: Int = 400) {
            self.reason = reason
            self.status = status
        }
        public var description: String { reason }
    }

    /// `skip` also consumes an empty line before a request line; `stopped` comes after an
    /// upgrade or CONNECT.
    public typealias Step = HTTP1Step<Head>

    typealias State = HTTP1MessageState

    public let maxHeaderBytes: Int
    private var state = State.head
    /// Head/trailer scanning resumes where the last call stopped (the caller keeps the bytes).
    private var scanned = 0

    public init(maxHeaderBytes: Int = 64 * 1024) {
        self.maxHeaderBytes = maxHeaderBytes
    }

    /// The next step at the start of `input` (the caller's unconsumed bytes) and how many bytes
    /// it consumed.
    public mutating func step(_ input: UnsafeRawBufferPointer) throws -> (step: Step, consumed: Int) {
        switch state {
        case .head:
            guard let end = try scanBlock(input, what: "header block") else { return (.needMore, 0) }
            if end == 2 { // an empty line before the request line (RFC 9112 §2.2): ignored
                return (.skip, 2)
            }
            let head = try Self.parseHead(UnsafeRawBufferPointer(rebasing: input[0..<end]))
            state = Self.bodyState(of: head)
            return (.head(head.head), end)
        case .body:
            return try state.stepBody(input, scanned: &scanned, maxHeaderBytes: maxHeaderBytes)
        case .stopped:
            return (.stopped, 0)
        }
    }

    // MARK: scanning

    static let cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n"), sp = UInt8(ascii: " "), htab = UInt8(ascii: "\t")

    private mutating func scanBlock(_ input: UnsafeRawBufferPointer, what: String) throws -> Int? {
        try Self.scanBlock(input, scanned: &scanned, limit: maxHeaderBytes, what: what)
    }

    /// The length of the block of lines ending in an empty line (2 when the first line is
    /// empty), or nil when it is not complete yet (`scanned`: where the next call resumes).
    /// Every line must end in CRLF.
    static func scanBlock(_ input: UnsafeRawBufferPointer, scanned: inout Int, limit maxHeaderBytes: Int, what: String) throws -> Int? {
        var i = scanned
        var lineStart = 0
        // Resume: find the start of the line `scanned` is in.
        if i > 0 {
            var j = i - 1
            while j >= 0 && input[j] != Self.lf { j -= 1 }
            lineStart = j + 1
        }
        while i < input.count {
            if input[i] == Self.lf {
                guard i > 0, input[i - 1] == Self.cr else { throw Failure("malformed line ending (a bare LF) in the \(what)") }
                if i == lineStart + 1 {
                    scanned = 0
                    return i + 1
                }
                lineStart = i + 1
            }
            i += 1
            if i > maxHeaderBytes { throw Failure("\(what) exceeds the limit of \(maxHeaderBytes) bytes") }
        }
        scanned = i
        return nil
    }

    /// The length of the first line, CRLF included, or nil when it is not complete yet.
    static func scanLine(_ input: UnsafeRawBufferPointer, limit: Int, what: String) throws -> Int? {
        for i in 0..<min(input.count, limit) where input[i] == Self.lf {
            guard i > 0, input[i - 1] == Self.cr else { throw Failure("malformed line ending (a bare LF) in a \(what)") }
            return i + 1
        }
        if input.count >= limit { throw Failure("\(what) exceeds \(limit) bytes") }
        return nil
    }

    // MARK: grammar

    /// tchar (RFC 9110 §5.6.2): the characters of a method or a field name.
    static let tchar: [Bool] = (0..<256).map { b in
        switch UInt8(b) {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(UInt8(b))
        }
    }

    @inline(__always) static func isTchar(_ b: UInt8) -> Bool { tchar[Int(b)] }

    /// field-vchar / SP / HTAB: visible ASCII, obs-text, space and tab; no other control.
    @inline(__always) static func isValueByte(_ b: UInt8) -> Bool { b >= 0x20 ? b != 0x7f : b == htab }

    struct ParsedHead: Sendable {
        var head: Head
        /// The body is chunked (the only transfer coding accepted), else `contentLength` bytes long.
        var chunked: Bool
        var contentLength: Int
    }

    /// Request line, fields, and the framing facts; the head block ends in an empty line.
    static func parseHead(_ b: UnsafeRawBufferPointer) throws -> ParsedHead {
        var p = 0
        while p < b.count && isTchar(b[p]) { p += 1 }
        guard p > 0, p < b.count, b[p] == sp else { throw Failure("malformed request line: the method is not a token") }
        let method = String(decoding: b[0..<p], as: UTF8.self)
        p += 1
        let targetStart = p
        while p < b.count && b[p] > 0x20 && b[p] < 0x7f { p += 1 }
        guard p > targetStart, p < b.count, b[p] == sp else { throw Failure("malformed request line: the request target") }
        let target = String(decoding: b[targetStart..<p], as: UTF8.self)
        p += 1
        guard p + 10 <= b.count, isHTTPVersion(b[p..<(p + 8)]), b[p + 8] == cr, b[p + 9] == lf else {
            throw Failure("malformed request line: the HTTP version")
        }
        let major = Int(b[p + 5] - UInt8(ascii: "0")), minor = Int(b[p + 7] - UInt8(ascii: "0"))
        guard major == 1 && minor <= 1 else { throw Failure("HTTP version \(major).\(minor) not supported", status: 505) }
        let fields = try parseFields(UnsafeRawBufferPointer(rebasing: b[0..<(b.count - 2)]), from: p + 10)
        return try framing(method: method, target: target, major: major, minor: minor, fields: fields)
    }

    /// HTTP-version = "HTTP/" DIGIT "." DIGIT (RFC 9112 §2.3): exactly these 8 bytes. (Walked in
    /// place: it is checked on every request and response line.)
    static func isHTTPVersion<C: Collection>(_ v: C) -> Bool where C.Element == UInt8 {
        guard v.count == 8 else { return false }
        for (i, byte) in v.enumerated() {
            let ok = switch i {
            case 0..<5: byte == httpSlash[i]
            case 6: byte == UInt8(ascii: ".")
            default: isDigit(byte)
            }
            if !ok { return false }
        }
        return true
    }

    private static let httpSlash = Array("HTTP/".utf8)

    @inline(__always) static func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

    /// Field lines (`name: value` CRLF …) from `start` to the end of `b`.
    static func parseFields(_ b: UnsafeRawBufferPointer, from start: Int) throws -> [Field] {
        // One allocation for the array: room for a field per line (growing it line by line
        // reallocated it four or five times for a usual response's head).
        var lines = 0
        for i in start..<b.count where b[i] == lf { lines += 1 }
        var fields: [Field] = []
        fields.reserveCapacity(lines)
        var p = start
        while p < b.count {
            if b[p] == sp || b[p] == htab { throw Failure("obsolete line folding in a header") }
            let nameStart = p
            while p < b.count && isTchar(b[p]) { p += 1 }
            guard p < b.count, p > nameStart, b[p] == UInt8(ascii: ":") else {
                if p < b.count && p > nameStart && (b[p] == sp || b[p] == htab) {
                    throw Failure("malformed header: whitespace before the colon")
                }
                throw Failure("malformed header: the name is not a token")
            }
            let name = String(decoding: b[nameStart..<p], as: UTF8.self)
            p += 1
            while p < b.count && (b[p] == sp || b[p] == htab) { p += 1 }
            let valueStart = p
            while p < b.count && b[p] != cr {
                guard isValueByte(b[p]) else { throw Failure("malformed header: a control character in the value of \(name)") }
                p += 1
            }
            guard p + 1 < b.count, b[p + 1] == lf else { throw Failure("malformed header: a CR without LF") }
            var valueEnd = p
            while valueEnd > valueStart && (b[valueEnd - 1] == sp || b[valueEnd - 1] == htab) { valueEnd -= 1 }
            fields.append(Field(name: name, value: String(decoding: b[valueStart..<valueEnd], as: UTF8.self)))
            p += 2
        }
        return fields
    }

    /// The one framing decision of a request (RFC 9112 §6.3), with its framing headers
    /// normalised so that what is forwarded says exactly what was decided.
    static func framing(method: String, target: String, major: Int, minor: Int, fields: [Field]) throws -> ParsedHead {
        var codings = 0, onlyChunked = true
        var sawTransferEncoding = false
        var framingLines: [String] = []
        var lengths = ContentLengthLines()
        var hosts = 0
        var upgrade = false
        for f in fields {
            if f.name.caselessEquals("transfer-encoding") {
                sawTransferEncoding = true
                framingLines.append(f.value)
                f.value.forEachListMember { coding in
                    guard !coding.isEmpty else { return }
                    codings += 1
                    onlyChunked = onlyChunked && coding.caselessEquals("chunked")
                }
            } else if f.name.caselessEquals("content-length") {
                framingLines.append(f.value)
                lengths.add(f.value)
            } else if f.name.caselessEquals("host") {
                hosts += 1
            } else if f.name.caselessEquals("upgrade") {
                upgrade = true
            }
        }
        if hosts > 1 { throw Failure("more than one Host header") }
        // Without framing headers the fields go on as they came (no copy).
        var kept = framingLines.isEmpty ? fields : fields.filter {
            !$0.name.caselessEquals("transfer-encoding") && !$0.name.caselessEquals("content-length")
        }
        var length = 0
        if sawTransferEncoding {
            guard !lengths.seen else { throw Failure("invalid message framing: Transfer-Encoding with Content-Length") }
            guard minor >= 1 else { throw Failure("invalid message framing: Transfer-Encoding in an HTTP/1.0 request") }
            guard codings == 1 && onlyChunked else {
                var named: [String] = []
                for line in framingLines { line.forEachListMember { if !$0.isEmpty { named.append($0.lowercased()) } } }
                throw Failure("transfer coding not understood (Transfer-Encoding: \(named.joined(separator: ", ")))", status: 501)
            }
            kept.append(Field(name: "transfer-encoding", value: "chunked"))
        } else if lengths.seen {
            guard let n = lengths.length else { throw Failure("malformed Content-Length") }
            length = n
            kept.append(Field(name: "content-length", value: String(n)))
        }
        // As received, the framing said exactly what `kept` says: one line, spelled so.
        let said = framingLines.count == 1 && framingLines[0] == (sawTransferEncoding ? "chunked" : String(length))
        let head = Head(method: method, target: target, major: major, minor: minor, fields: kept,
                        leavesHTTP: upgrade || method == "CONNECT", framingRewritten: !framingLines.isEmpty && !said)
        return ParsedHead(head: head, chunked: sawTransferEncoding, contentLength: length)
    }

    static func bodyState(of h: ParsedHead) -> State {
        if h.head.method == "CONNECT" { return .body(HTTP1BodyFramer(.length(0)), leavesHTTP: true) } // no content (RFC 9110 §9.3.6)
        return .body(HTTP1BodyFramer(h.chunked ? .chunked : .length(h.contentLength)), leavesHTTP: h.head.leavesHTTP)
    }

    /// chunk-size [ chunk-ext ] (the line without its CRLF).
    static func chunkSize(_ b: UnsafeRawBufferPointer) throws -> Int {
        var size = 0, p = 0
        while p < b.count, let d = hexValue(b[p]) {
            guard p < 15 else { throw Failure("malformed chunk size: too large") }
            size = size << 4 | d
            p += 1
        }
        guard p > 0 else { throw Failure("malformed chunk size") }
        while p < b.count && (b[p] == sp || b[p] == htab) { p += 1 }
        if p < b.count {
            guard b[p] == UInt8(ascii: ";") else { throw Failure("malformed chunk size") }
            for q in p..<b.count where !isValueByte(b[q]) { throw Failure("malformed chunk extension") }
        }
        return size
    }

    @inline(__always) static func hexValue(_ b: UInt8) -> Int? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(b - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(b - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(b - UInt8(ascii: "A") + 10)
        default: nil
        }
    }
}

extension HTTP1RequestParser {
    /// `step` over an array (tests, fuzzing).
    public mutating func step(_ bytes: [UInt8]) throws -> (step: Step, consumed: Int) {
        try bytes.withUnsafeBytes { try step($0) }
    }
}

extension Array where Element == HTTP1RequestParser.Field {
    /// The value of the first field of that name (given in lower case), compared without case:
    /// a request's or a response's head.
    public func first(_ lowerCaseName: String) -> String? {
        first { $0.name.caselessEquals(lowerCaseName) }?.value
    }
}

extension StringProtocol {
    /// ASCII case-insensitive equality with a lower-case literal (header names, tokens).
    func caselessEquals(_ lower: String) -> Bool {
        guard utf8.count == lower.utf8.count else { return false }
        for (a, b) in zip(utf8, lower.utf8) where a != b && !(a >= 0x41 && a <= 0x5a && a | 0x20 == b) { return false }
        return true
    }
}

extension String {
    /// Each member of a comma-separated field value (RFC 9110 §5.6.1) without its OWS, empty
    /// ones included, walked in place (the framing headers of every message: no array each).
    func forEachListMember(_ body: (Substring) throws -> Void) rethrows {
        var rest = self[...]
        while true {
            let comma = rest.utf8.firstIndex(of: UInt8(ascii: ","))
            try body(rest[..<(comma ?? rest.endIndex)].trimmingOWS)
            guard let comma else { return }
            rest = rest[rest.utf8.index(after: comma)...]
        }
    }
}

/// The Content-Length lines of one message as its one length (RFC 9112 §6.3, RFC 9110 §8.6):
/// every comma-separated value of every line must be the same decimal number.
struct ContentLengthLines {
    private(set) var seen = false
    private var first: Substring?
    private var agree = true

    mutating func add(_ value: String) {
        seen = true
        value.forEachListMember { piece in
            if let first { agree = agree && piece == first } else { first = piece }
        }
    }

    /// The length the lines say; nil when they disagree or a value is not a decimal number
    /// (of at most 18 digits).
    var length: Int? {
        guard agree, let first, !first.isEmpty, first.utf8.count <= 18,
              first.utf8.allSatisfy(HTTP1RequestParser.isDigit) else { return nil }
        return Int(first)
    }
}

extension Substring {
    /// Without optional whitespace (SP, HTAB) at either end.
    var trimmingOWS: Substring {
        var s = self
        while let c = s.first, c == " " || c == "\t" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" { s = s.dropLast() }
        return s
    }
}
