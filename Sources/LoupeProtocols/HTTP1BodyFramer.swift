/// What an HTTP/1 parser (requests or responses) finds at the start of its input.
public enum HTTP1Step<Head: Sendable & Equatable>: Sendable, Equatable {
    /// Not enough bytes for the next step (nothing consumed).
    case needMore
    /// Framing bytes consumed (a chunk-size line, a chunk's CRLF); nothing to deliver.
    case skip
    case head(Head)
    /// The next `n` bytes of the input are body bytes: the caller takes them as they are.
    case body(Int)
    /// The message is complete (with its trailer fields, if it had any).
    case end(trailers: [HTTP1RequestParser.Field]?)
    /// The connection left HTTP/1: the rest of the input is not for the parser (nothing consumed).
    case stopped
}

/// Where a parser is in the messages of a connection.
enum HTTP1MessageState: Sendable {
    case head
    /// A message's body; `leavesHTTP`: after it the connection is not HTTP/1 any more (an
    /// upgrade, a CONNECT tunnel).
    case body(HTTP1BodyFramer, leavesHTTP: Bool)
    case stopped

    /// In a body, its next step; at its end the state moves to the next head, or stops.
    mutating func stepBody<Head>(_ input: UnsafeRawBufferPointer, scanned: inout Int,
                                 maxHeaderBytes: Int) throws -> (step: HTTP1Step<Head>, consumed: Int) {
        guard case .body(var framer, let leaves) = self else { return (.needMore, 0) }
        let (step, consumed) = try framer.step(input, scanned: &scanned, maxHeaderBytes: maxHeaderBytes)
        self = .body(framer, leavesHTTP: leaves)
        switch step {
        case .needMore: return (.needMore, 0)
        case .skip: return (.skip, consumed)
        case .body(let n): return (.body(n), consumed)
        case .end(let trailers):
            self = leaves ? .stopped : .head
            return (.end(trailers: trailers), consumed)
        }
    }
}

/// The body of one HTTP/1 message as RFC 9112 frames it — so many bytes (§6.2), chunked (§7.1:
/// size lines, data, CRLFs, a trailer section), or until the connection closes (a response
/// without a length, §6.3) — shared by the request and the response parser: which input bytes
/// are body, which are framing, and where the message ends. Pure: bytes in, steps out.
struct HTTP1BodyFramer: Sendable {
    enum Framing: Sendable, Equatable {
        case length(Int)
        case chunked
        case untilClose
    }

    enum Step: Sendable, Equatable {
        /// Not enough bytes for the next step (nothing consumed).
        case needMore
        /// Framing bytes consumed (a chunk-size line, a chunk's CRLF).
        case skip
        /// The next `n` bytes of the input are body bytes, as they are.
        case body(Int)
        /// The body is complete (with its trailer fields, if it had any).
        case end(trailers: [HTTP1RequestParser.Field]?)
    }

    private enum State: Sendable {
        case fixed(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkEnd
        case trailers
        case untilClose
    }

    private var state: State

    init(_ framing: Framing) {
        state = switch framing {
        case .length(let n): .fixed(remaining: n)
        case .chunked: .chunkSize
        case .untilClose: .untilClose
        }
    }

    /// The next step at the start of `input`; `scanned` and `maxHeaderBytes` bound the trailer
    /// section as the parser bounds a head.
    mutating func step(_ input: UnsafeRawBufferPointer, scanned: inout Int, maxHeaderBytes: Int) throws -> (step: Step, consumed: Int) {
        typealias P = HTTP1RequestParser
        switch state {
        case .fixed(let remaining):
            if remaining == 0 { return (.end(trailers: nil), 0) }
            guard !input.isEmpty else { return (.needMore, 0) }
            let n = min(remaining, input.count)
            state = .fixed(remaining: remaining - n)
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
            guard input[0] == P.cr, input[1] == P.lf else { throw P.Failure("malformed chunk: no CRLF after its data") }
            state = .chunkSize
            return (.skip, 2)
        case .trailers:
            guard let end = try P.scanBlock(input, scanned: &scanned, limit: maxHeaderBytes, what: "trailer section") else {
                return (.needMore, 0)
            }
            let fields = end == 2 ? nil : try P.parseFields(UnsafeRawBufferPointer(rebasing: input[0..<(end - 2)]), from: 0)
            return (.end(trailers: fields), end)
        case .untilClose:
            return input.isEmpty ? (.needMore, 0) : (.body(input.count), input.count)
        }
    }
}
