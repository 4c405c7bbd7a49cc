/// HTTP/1.1 responses as a proxy relays them: status line and fields parsed for flows, the body
/// only framed (RFC 9112 §6.3), so that the bytes can go on to the client as they came.
///
/// Pure: bytes in, steps out, nothing copied but the head. What a response's body is depends on
/// the request it answers (a response to HEAD has none, a 2xx to CONNECT opens a tunnel): the
/// caller says which with each step. Grammar and limits are `HTTP1RequestParser`'s.
public struct HTTP1ResponseParser: Sendable {
    public typealias Field = HTTP1RequestParser.Field
    public typealias Failure = HTTP1RequestParser.Failure

    public struct Head: Sendable, Equatable {
        public var code: Int
        public var reason: String
        public var major: Int
        public var minor: Int
        public var fields: [Field]
    }

    /// What the response answers, as far as its framing cares.
    public enum Request: Sendable {
        case head, connect, other
    }

    /// A `head` after a 1xx other than 101 is followed by the final response's; `stopped`
    /// comes after a 101, or a 2xx to CONNECT.
    public typealias Step = HTTP1Step<Head>

    typealias State = HTTP1MessageState

    public let maxHeaderBytes: Int
    private var state = State.head
    private var scanned = 0

    public init(maxHeaderBytes: Int = 64 * 1024) {
        self.maxHeaderBytes = maxHeaderBytes
    }

    /// Between responses: nothing of the next one has been passed on yet.
    public var atResponseStart: Bool {
        if case .head = state { return true }
        return false
    }

    /// The next step at the start of `input` (the unconsumed bytes) and how many bytes it
    /// consumed; `answering` is the request the next response head answers.
    public mutating func step(_ input: UnsafeRawBufferPointer, answering: Request) throws -> (step: Step, consumed: Int) {
        typealias P = HTTP1RequestParser
        switch state {
        case .head:
            guard let end = try P.scanBlock(input, scanned: &scanned, limit: maxHeaderBytes, what: "response header block") else {
                return (.needMore, 0)
            }
            let head = try Self.parseHead(UnsafeRawBufferPointer(rebasing: input[0..<end]))
            state = try Self.bodyState(of: head, answering: answering)
            return (.head(head), end)
        case .body:
            return try state.stepBody(input, scanned: &scanned, maxHeaderBytes: maxHeaderBytes)
        case .stopped:
            return (.stopped, 0)
        }
    }

    /// status-line = HTTP-version SP status-code SP [ reason-phrase ], then the fields.
    static func parseHead(_ b: UnsafeRawBufferPointer) throws -> Head {
        typealias P = HTTP1RequestParser
        guard b.count >= 14, P.isHTTPVersion(b[0..<8]), b[8] == P.sp,
              P.isDigit(b[9]), P.isDigit(b[10]), P.isDigit(b[11]) else {
            throw Failure("malformed status line")
        }
        let major = Int(b[5] - UInt8(ascii: "0")), minor = Int(b[7] - UInt8(ascii: "0"))
        guard major == 1 else { throw Failure("malformed status line: HTTP version \(major).\(minor)") }
        let code = Int(b[9] - 48) * 100 + Int(b[10] - 48) * 10 + Int(b[11] - 48)
        var p = 12
        guard b[p] == P.sp || b[p] == P.cr else { throw Failure("malformed status line: the status code") }
        if b[p] == P.sp { p += 1 }
        let reasonStart = p
        while p < b.count && b[p] != P.cr {
            guard P.isValueByte(b[p]) else { throw Failure("malformed status line: a control character in the reason") }
            p += 1
        }
        guard p + 1 < b.count, b[p + 1] == P.lf else { throw Failure("malformed status line") }
        let reason = String(decoding: b[reasonStart..<p], as: UTF8.self)
        let fields = try P.parseFields(UnsafeRawBufferPointer(rebasing: b[0..<(b.count - 2)]), from: p + 2)
        return Head(code: code, reason: reason, major: major, minor: minor, fields: fields)
    }

    /// The body of a response (RFC 9112 §6.3): none for 1xx, 204, 304 and answers to HEAD; a
    /// tunnel after 101 and a 2xx to CONNECT; chunked when chunked is the last transfer coding,
    /// until the close for any other (with a `Content-Length` too: refused); else
    /// `Content-Length`, or until the close without one.
    static func bodyState(of h: Head, answering: Request) throws -> State {
        if h.code == 101 || (answering == .connect && (200..<300).contains(h.code)) {
            return .body(HTTP1BodyFramer(.length(0)), leavesHTTP: true)
        }
        if (100..<200).contains(h.code) { return .head } // informational: the final response follows
        if answering == .head || h.code == 204 || h.code == 304 { return .body(HTTP1BodyFramer(.length(0)), leavesHTTP: false) }
        var lastCoding: Substring?
        var lengths = ContentLengthLines()
        for f in h.fields {
            if f.name.caselessEquals("transfer-encoding") {
                f.value.forEachListMember { if !$0.isEmpty { lastCoding = $0 } }
            } else if f.name.caselessEquals("content-length") {
                lengths.add(f.value)
            }
        }
        if let lastCoding {
            // Both: a sign of response splitting (RFC 9112 §6.3); a proxy that forwards the
            // bytes unchanged cannot drop the Content-Length, so it refuses the response.
            guard !lengths.seen else { throw Failure("Transfer-Encoding with Content-Length in a response") }
            return .body(HTTP1BodyFramer(lastCoding.caselessEquals("chunked") ? .chunked : .untilClose), leavesHTTP: false)
        }
        guard lengths.seen else { return .body(HTTP1BodyFramer(.untilClose), leavesHTTP: false) }
        guard let n = lengths.length else { throw Failure("malformed Content-Length in a response") }
        return .body(HTTP1BodyFramer(.length(n)), leavesHTTP: false)
    }
}

extension HTTP1ResponseParser {
    /// `step` over an array (tests).
    public mutating func step(_ bytes: [UInt8], answering: Request = .other) throws -> (step: Step, consumed: Int) {
        try bytes.withUnsafeBytes { try step($0, answering: answering) }
    }
}
