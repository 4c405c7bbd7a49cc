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

        public func first(_ lowerCaseName: String) -> String? {
            fields.first { $0.name.caselessEquals(lowerCaseName) }?.value
        }
    }

    /// What the response answers, as far as its framing cares.
    public enum Request: Sendable {
        case head, connect, other
    }

    public enum Step: Sendable, Equatable {
        /// Not enough bytes for the next step (nothing consumed).
        case needMore
        /// Framing bytes consumed (a chunk-size line, a chunk's CRLF).
        case skip
        /// A response head; after a 1xx other than 101 the final response is still to come.
        case head(Head)
        /// The next `n` bytes of the input are body bytes.
        case body(Int)
        /// The response is complete (its trailer section consumed, if it had one).
        case end
        /// After a 101, or a 2xx to CONNECT: the rest is not HTTP/1 (nothing consumed).
        case stopped
    }

    enum State: Sendable {
        case head
        case fixedBody(remaining: Int, then: After)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkEnd
        case trailers
        /// No length: the body ends when the server closes.
        case untilClose
        case stopped
    }

    enum After: Sendable { case head, stopped }

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
        case .fixedBody(let remaining, let then):
            if remaining == 0 {
                state = then == .stopped ? .stopped : .head
                return (.end, 0)
            }
            guard !input.isEmpty else { return (.needMore, 0) }
            let n = min(remaining, input.count)
            state = .fixedBody(remaining: remaining - n, then: then)
            return (.body(n), n)
        case .chunkSize:
            guard let lineEnd = try P.scanLine(input, limit: 4096, what: "chunk size line") else { return (.needMore, 0) }
            let size = try P.chunkSize(UnsafeRawBufferPointer(rebasing: input[0..<(lineEnd - 2)]))
            state = size == 0 ? .trailers : .chunkData(remaining: size)
            return (.skip, lineEnd)
        case .chunkData(let remaining):
            guard !input.isEmpty else { return (.needMore, 0) }
            let n = min(remaining, input.count)
            state = remaining == n ? .chunkEnd : .chunkData(remaining: remaining - n)
            return (.body(n), n)
        case .chunkEnd:
            guard input.count >= 2 else { return (.needMore, 0) }
            guard input[0] == P.cr, input[1] == P.lf else { throw Failure("malformed chunk: no CRLF after its data") }
            state = .chunkSize
            return (.skip, 2)
        case .trailers:
            guard let end = try P.scanBlock(input, scanned: &scanned, limit: maxHeaderBytes, what: "trailer section") else {
                return (.needMore, 0)
            }
            if end > 2 { _ = try P.parseFields(UnsafeRawBufferPointer(rebasing: input[0..<(end - 2)]), from: 0) }
            state = .head
            return (.end, end)
        case .untilClose:
            return input.isEmpty ? (.needMore, 0) : (.body(input.count), input.count)
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
            return .fixedBody(remaining: 0, then: .stopped)
        }
        if (100..<200).contains(h.code) { return .head } // informational: the final response follows
        if answering == .head || h.code == 204 || h.code == 304 { return .fixedBody(remaining: 0, then: .head) }
        var codings: [Substring] = []
        var lengths: [Substring] = []
        for f in h.fields {
            if f.name.caselessEquals("transfer-encoding") {
                codings += f.value.split(separator: ",").map { $0.trimmingOWS }.filter { !$0.isEmpty }
            } else if f.name.caselessEquals("content-length") {
                lengths += f.value.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingOWS }
            }
        }
        if let last = codings.last {
            // Both: a sign of response splitting (RFC 9112 §6.3); a proxy that forwards the
            // bytes unchanged cannot drop the Content-Length, so it refuses the response.
            guard lengths.isEmpty else { throw Failure("Transfer-Encoding with Content-Length in a response") }
            return String(last).caselessEquals("chunked") ? .chunkSize : .untilClose
        }
        guard let first = lengths.first else { return .untilClose }
        guard lengths.allSatisfy({ $0 == first }), !first.isEmpty, first.count <= 18,
              first.utf8.allSatisfy(HTTP1RequestParser.isDigit), let n = Int(first) else {
            throw Failure("malformed Content-Length in a response")
        }
        return .fixedBody(remaining: n, then: .head)
    }
}

extension HTTP1ResponseParser {
    /// `step` over an array (tests).
    public mutating func step(_ bytes: [UInt8], answering: Request = .other) throws -> (step: Step, consumed: Int) {
        try bytes.withUnsafeBytes { try step($0, answering: answering) }
    }
}
