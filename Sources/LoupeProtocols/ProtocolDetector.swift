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

    /// Request methods recognised as HTTP/1.x (RFC 9110 plus WebDAV's common ones).
    static let methods: [[UInt8]] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH",
    ].map { Array($0.utf8) }
    static let http2Preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    static let longestMethod = methods.map(\.count).max()!

    public static func detect<C: Collection>(_ bytes: C) -> Decision where C.Element == UInt8 {
        let b = Array(bytes.prefix(http2Preface.count))
        if b.isEmpty { return .needMore }
        if b[0] == 0x16 {
            // TLS record: content type handshake, version 3.x.
            if b.count < 2 { return .needMore }
            return b[1] == 0x03 ? .tls : .opaque
        }
        if http2Preface.starts(with: b) {
            return b.count == http2Preface.count ? .http2 : .needMore
        }
        // An HTTP/1 method token followed by a space.
        var couldStillMatch = false
        for m in methods {
            if b.count > m.count {
                if b.starts(with: m) && b[m.count] == UInt8(ascii: " ") { return .http1 }
            } else if m.starts(with: b) {
                couldStillMatch = true
            }
        }
        return couldStillMatch ? .needMore : .opaque
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
