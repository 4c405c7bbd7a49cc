/// Decides from a connection's first client bytes which pipeline handles it. Pure: bytes in,
/// decision out, tested on captured prefixes.
public enum ProtocolDetector {
    public enum Decision: Equatable, Sendable {
        /// Not enough bytes yet to tell.
        case needMore
        /// An HTTP/1.x request line starts here.
        case http1
        /// The HTTP/2 connection preface (prior knowledge).
        case http2
        /// A TLS handshake record.
        case tls
        /// Anything else: relay bytes unchanged.
        case opaque
    }

    static let http2Preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    /// A first line longer than this that still has the shape of a request line so far is taken
    /// as HTTP/1 (the request parser then judges it, limits included).
    public static let requestLineCap = 16 * 1024

    public static func detect<C: Collection>(_ bytes: C) -> Decision where C.Element == UInt8 {
        guard let first = bytes.first else { return .needMore }
        if first == 0x16 {
            // TLS record: content type handshake, version 3.x.
            guard bytes.count >= 2 else { return .needMore }
            return bytes.dropFirst().first == 0x03 ? .tls : .opaque
        }
        let head = Array(bytes.prefix(http2Preface.count))
        if http2Preface.starts(with: head) {
            return head.count == http2Preface.count ? .http2 : .needMore
        }
        return requestLine(bytes)
    }

    /// HTTP/1 by the grammar of its request line (RFC 9112 §3), not by a list of methods: a
    /// token, a space, and a line that ends in ` HTTP/` DIGIT `.` DIGIT. Methods are
    /// case-sensitive tokens of any spelling (`get`, `PURGE`, `M-SEARCH`); a line that starts
    /// like a request but ends otherwise (`get key` of memcached, Redis's inline commands) is
    /// not HTTP. What lies between is the request parser's to judge (a malformed target gets a 400).
    static func requestLine<C: Collection>(_ bytes: C) -> Decision where C.Element == UInt8 {
        var it = bytes.makeIterator()
        var n = 0
        var methodLength = 0
        // The method token and its space.
        while let b = it.next() {
            n += 1
            if HTTP1RequestParser.isTchar(b) { methodLength += 1; continue }
            guard b == UInt8(ascii: " "), methodLength > 0 else { return .opaque }
            break
        }
        if n == methodLength { return n >= requestLineCap ? .opaque : .needMore }
        // The rest of the line: remember its last 10 bytes (" HTTP/1.1" and a CR).
        var tail: [UInt8] = []
        tail.reserveCapacity(10)
        while let b = it.next() {
            n += 1
            if b == UInt8(ascii: "\n") {
                if tail.last == UInt8(ascii: "\r") { tail.removeLast() }
                return endsWithHTTPVersion(tail) ? .http1 : .opaque
            }
            if tail.count == 10 { tail.removeFirst() }
            tail.append(b)
            if n >= requestLineCap { return .http1 }
        }
        return .needMore
    }

    /// SP HTTP-version at the end of the line.
    private static func endsWithHTTPVersion(_ t: [UInt8]) -> Bool {
        t.count >= 9 && t[t.count - 9] == UInt8(ascii: " ") && HTTP1RequestParser.isHTTPVersion(t.suffix(8))
    }

    /// Whether a server's first bytes are an HTTP/2 server preface (a SETTINGS frame on stream 0,
    /// not an ACK). HTTP/2 servers send it as soon as they accept, often before the client's
    /// preface reaches the proxy; such a server has not "spoken first" in the sense of a
    /// server-first protocol, and detection keeps waiting for the client.
    public static func isHTTP2ServerPreface<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
        let b = Array(bytes.prefix(9))
        guard b.count == 9 else { return false }
        let length = Int(b[0]) << 16 | Int(b[1]) << 8 | Int(b[2])
        let streamID = (UInt32(b[5]) << 24 | UInt32(b[6]) << 16 | UInt32(b[7]) << 8 | UInt32(b[8])) & 0x7fff_ffff
        return b[3] == 0x04 && b[4] & 0x01 == 0 && streamID == 0 && length % 6 == 0
    }
}
