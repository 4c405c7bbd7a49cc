/// What a TLS ClientHello says in the clear: the server name (SNI), the application protocols
/// offered (ALPN) and the TLS versions. Pure: the first bytes of a connection in, a result out.
/// The hello may arrive split across TCP segments (ask again with more bytes) and across TLS
/// records (RFC 8446 §5.1 allows a handshake message to span records): both are handled.
public struct TLSClientHello: Equatable, Sendable {
    /// `legacy_version` of the hello (0x0303 for TLS 1.2 and 1.3).
    public var legacyVersion: UInt16
    /// The `host_name` of the server_name extension, lower-cased; nil without SNI.
    public var serverName: String?
    /// The protocols of the ALPN extension, in the client's order (`h2`, `http/1.1`).
    public var alpn: [String]
    /// The supported_versions extension (TLS 1.3 clients), in the client's order.
    public var supportedVersions: [UInt16]
    public var cipherSuiteCount: Int
    /// Extension types in order (GREASE values included, as sent).
    public var extensionTypes: [UInt16]
    /// Bytes of the TLS records that carried the hello.
    public var recordBytes: Int

    public enum Result: Equatable, Sendable {
        /// A prefix of a well-formed hello so far: more bytes are needed.
        case needMore
        case hello(TLSClientHello)
        /// Not a TLS handshake at all (another protocol on a TLS port).
        case notTLS(String)
        /// TLS records, but not a hello that can be read: the reason names the field and offset.
        case malformed(String)
    }

    /// A hello longer than this is not waited for (real ones are 0.2–2 KB; post-quantum key
    /// shares make them ~1.8 KB).
    public static let maxHelloBytes = 65_536
    /// Records one hello may span: real clients use one or two; a client that drips a hello
    /// in tiny records costs a parse per record, so this bounds the work.
    public static let maxRecords = 256

    /// The buffer length at which `parse` can next make progress: the end of the first
    /// incomplete record, or of its header. Cheap (reads record headers only), for callers
    /// that buffer a stream and should not parse again on every byte.
    public static func bytesNeeded<C: RandomAccessCollection>(_ bytes: C) -> Int where C.Element == UInt8, C.Index == Int {
        var offset = 0
        while true {
            guard bytes.count >= offset + 5 else { return offset + 5 }
            let length = Int(bytes[bytes.startIndex + offset + 3]) << 8 | Int(bytes[bytes.startIndex + offset + 4])
            guard bytes.count >= offset + 5 + length else { return offset + 5 + length }
            offset += 5 + length
        }
    }

    public static func parse<C: Collection>(_ bytes: C) -> Result where C.Element == UInt8 {
        var handshake: [UInt8] = []
        var reader = ByteReader(Array(bytes))
        var consumed = 0
        var records = 0
        // Reassemble the handshake message from consecutive handshake records.
        while true {
            records += 1
            guard records <= maxRecords else { return .malformed("ClientHello spans more than \(maxRecords) records") }
            guard reader.remaining >= 5 else { return reader.remaining == 0 && !handshake.isEmpty ? .needMore : prefixCheck(reader) }
            let recordStart = reader.offset
            let type = reader.u8()!, major = reader.u8()!, _ = reader.u8()!, length = Int(reader.u16()!)
            if recordStart == 0 {
                guard type == 22 else { return .notTLS("first byte \(type) is not a TLS handshake record (22)") }
                guard major == 3 else { return .notTLS("record version major \(major) is not 3") }
            } else if type != 22 {
                return .malformed("record at offset \(recordStart): content type \(type) before the ClientHello was complete")
            }
            guard length > 0, length <= 16_384 + 256 else {
                return .malformed("record at offset \(recordStart): length \(length) outside 1…16640")
            }
            guard let fragment = reader.bytes(length) else { return .needMore }
            handshake += fragment
            consumed = reader.offset
            if handshake.count >= 4 {
                guard handshake[0] == 1 else { return .malformed("handshake type \(handshake[0]) is not ClientHello (1)") }
                let total = 4 + (Int(handshake[1]) << 16 | Int(handshake[2]) << 8 | Int(handshake[3]))
                guard total <= maxHelloBytes else { return .malformed("ClientHello length \(total - 4) exceeds \(maxHelloBytes)") }
                if handshake.count >= total {
                    return parseBody(handshake[4..<total], recordBytes: consumed)
                }
            }
        }
    }

    /// Fewer than 5 bytes of a record header: a prefix of TLS, or not TLS at all.
    private static func prefixCheck(_ r: ByteReader) -> Result {
        if r.offset == 0, let first = r.peek(0), first != 22 { return .notTLS("first byte \(first) is not a TLS handshake record (22)") }
        if r.offset == 0, let major = r.peek(1), major != 3 { return .notTLS("record version major \(major) is not 3") }
        if r.offset > 0, let type = r.peek(0), type != 22 {
            return .malformed("record at offset \(r.offset): content type \(type) before the ClientHello was complete")
        }
        return .needMore
    }

    private static func parseBody(_ body: ArraySlice<UInt8>, recordBytes: Int) -> Result {
        var r = ByteReader(body)
        func bad(_ what: String) -> Result { .malformed("ClientHello \(what) (offset \(r.offset) of the hello)") }
        guard let version = r.u16(), r.bytes(32) != nil else { return bad("ends inside version/random") }
        guard let sidLength = r.u8(), sidLength <= 32, r.bytes(Int(sidLength)) != nil else { return bad("session_id is invalid") }
        guard let csLength = r.u16(), csLength >= 2, csLength % 2 == 0, r.bytes(Int(csLength)) != nil else {
            return bad("cipher_suites length is invalid")
        }
        guard let compLength = r.u8(), compLength >= 1, r.bytes(Int(compLength)) != nil else {
            return bad("compression_methods is invalid")
        }
        var hello = TLSClientHello(legacyVersion: version, serverName: nil, alpn: [], supportedVersions: [],
                                   cipherSuiteCount: Int(csLength) / 2, extensionTypes: [], recordBytes: recordBytes)
        if r.remaining == 0 { return .hello(hello) } // no extensions (TLS 1.2 and older may omit them)
        guard let extLength = r.u16(), Int(extLength) == r.remaining else { return bad("extensions length does not match the hello") }
        // Sized once for a browser's ~20 extensions (grown step by step: ~12 allocations).
        var seen = Set<UInt16>(minimumCapacity: 32)
        hello.extensionTypes.reserveCapacity(32)
        while r.remaining > 0 {
            guard let type = r.u16(), let length = r.u16(), let data = r.bytes(Int(length)) else { return bad("extension is truncated") }
            guard seen.insert(type).inserted else { return bad("repeats extension \(type)") }
            hello.extensionTypes.append(type)
            var e = ByteReader(data)
            switch type {
            case 0: // server_name
                guard let listLength = e.u16(), Int(listLength) == e.remaining else { return bad("server_name list length is invalid") }
                while e.remaining > 0 {
                    guard let nameType = e.u8(), let nameLength = e.u16(), let name = e.bytes(Int(nameLength)) else {
                        return bad("server_name entry is truncated")
                    }
                    guard nameType == 0, hello.serverName == nil else { continue } // host_name, first one only
                    guard let host = hostName(name) else { return bad("server_name is not a host name") }
                    hello.serverName = host
                }
            case 16: // application_layer_protocol_negotiation
                guard let listLength = e.u16(), Int(listLength) == e.remaining, listLength > 0 else {
                    return bad("ALPN list length is invalid")
                }
                while e.remaining > 0 {
                    guard let n = e.u8(), n > 0, let p = e.bytes(Int(n)) else { return bad("ALPN entry is invalid") }
                    hello.alpn.append(String(decoding: p, as: UTF8.self))
                }
            case 43: // supported_versions
                guard let n = e.u8(), Int(n) == e.remaining, n % 2 == 0 else { return bad("supported_versions length is invalid") }
                while let v = e.u16() { hello.supportedVersions.append(v) }
            default:
                break
            }
        }
        return .hello(hello)
    }

    /// A DNS host name as SNI carries it (RFC 6066: ASCII, no trailing dot), lower-cased; nil
    /// for anything else (control bytes, spaces, empty labels, IP literals are not host names).
    static func hostName<C: Collection>(_ bytes: C) -> String? where C.Element == UInt8 {
        guard !bytes.isEmpty, bytes.count <= 253 else { return nil }
        var label = 0
        for b in bytes {
            switch b {
            case UInt8(ascii: "."):
                guard label > 0 else { return nil }
                label = 0
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
                label += 1
                guard label <= 63 else { return nil }
            default:
                return nil
            }
        }
        guard label > 0 else { return nil }
        return String(decoding: bytes, as: UTF8.self).lowercased()
    }

    /// `TLS 1.3`, `TLS 1.2`, …; other values (GREASE) in hex.
    public static func versionName(_ v: UInt16) -> String {
        switch v {
        case 0x0304: "TLS 1.3"
        case 0x0303: "TLS 1.2"
        case 0x0302: "TLS 1.1"
        case 0x0301: "TLS 1.0"
        case 0x0300: "SSL 3.0"
        default: "0x" + String(v, radix: 16)
        }
    }

    /// The highest real version the client offers (supported_versions, else legacy_version).
    public var highestVersion: UInt16 {
        supportedVersions.filter { $0 & 0x0f0f != 0x0a0a }.max() ?? legacyVersion // skip GREASE (0x?a?a)
    }
}

/// Bounds-checked big-endian reads off a slice; the parts it hands out are slices of the same
/// storage (a ClientHello's ~20 extensions copied out one by one cost an allocation each).
struct ByteReader {
    private let bytes: ArraySlice<UInt8>
    /// Bytes read so far.
    private(set) var offset = 0

    init(_ bytes: ArraySlice<UInt8>) { self.bytes = bytes }
    init(_ bytes: [UInt8]) { self.bytes = bytes[...] }

    var remaining: Int { bytes.count - offset }

    private func at(_ i: Int) -> UInt8 { bytes[bytes.startIndex + offset + i] }

    func peek(_ i: Int) -> UInt8? { offset + i < bytes.count ? at(i) : nil }

    mutating func u8() -> UInt8? {
        guard remaining >= 1 else { return nil }
        defer { offset += 1 }
        return at(0)
    }

    mutating func u16() -> UInt16? {
        guard remaining >= 2 else { return nil }
        defer { offset += 2 }
        return UInt16(at(0)) << 8 | UInt16(at(1))
    }

    mutating func bytes(_ n: Int) -> ArraySlice<UInt8>? {
        guard n >= 0, remaining >= n else { return nil }
        defer { offset += n }
        let start = bytes.startIndex + offset
        return bytes[start..<start + n]
    }
}
