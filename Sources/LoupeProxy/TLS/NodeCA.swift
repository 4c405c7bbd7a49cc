import Crypto
import Foundation
import Synchronization
import X509

/// The node's certificate authority: it signs short-lived leaf certificates for the server
/// names pods connect to, so the proxy can terminate their TLS (`<…/TCP/HTTPS>`) where a
/// Cilium user would hand-make one secret per host. Its key stays on the node: written with
/// mode 0600, never logged. Pods that opt into interception trust `ca.pem`.
public final class NodeCA: Sendable {
    public let certificate: Certificate
    private let key: P256.Signing.PrivateKey
    private let leaves = BoundedCache<Leaf>(limit: NodeCA.leafCacheSize)

    /// Leaf lifetime: short, so a leaked leaf is worth little; minted again when near its end.
    public static let leafValidity: TimeInterval = 24 * 3600
    /// Leaves kept (per server name); the oldest goes first.
    public static let leafCacheSize = 1024

    public struct Leaf: Sendable {
        public let certificate: Certificate
        public let key: P256.Signing.PrivateKey
        public let notValidAfter: Date
    }

    public struct CAError: Error, CustomStringConvertible {
        public let description: String
    }

    init(certificate: Certificate, key: P256.Signing.PrivateKey) {
        self.certificate = certificate
        self.key = key
    }

    /// A new CA (P-256, ten years), named after the node.
    public static func create(nodeName: String, now: Date = Date()) throws -> NodeCA {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName {
            OrganizationName("Loupe")
            CommonName("Loupe node CA \(nodeName)")
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(10 * 365 * 24 * 3600),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(key.publicKey))
            },
            issuerPrivateKey: .init(key))
        return NodeCA(certificate: certificate, key: key)
    }

    /// `ca.pem` and `ca.key` in DIR.
    public static func load(directory: String) throws -> NodeCA {
        let (certPath, keyPath) = paths(directory)
        guard let certPEM = try? String(contentsOfFile: certPath, encoding: .utf8) else {
            throw CAError(description: "no CA certificate at \(certPath) (run `loupe ca init --dir \(directory)`)")
        }
        guard let keyPEM = try? String(contentsOfFile: keyPath, encoding: .utf8) else {
            throw CAError(description: "no CA key at \(keyPath) (run `loupe ca init --dir \(directory)`)")
        }
        let certificate: Certificate, key: P256.Signing.PrivateKey
        do { certificate = try Certificate(pemEncoded: certPEM) } catch {
            throw CAError(description: "\(certPath): not a PEM certificate (\(error))")
        }
        do { key = try P256.Signing.PrivateKey(pemRepresentation: keyPEM) } catch {
            throw CAError(description: "\(keyPath): not a PEM P-256 private key") // the key itself is never printed
        }
        guard certificate.publicKey == Certificate.PublicKey(key.publicKey) else {
            throw CAError(description: "\(keyPath) is not the key of \(certPath)")
        }
        return NodeCA(certificate: certificate, key: key)
    }

    /// Writes `ca.pem` (0644) and `ca.key` (0600, created with that mode: never readable by others).
    public func write(directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        let (certPath, keyPath) = Self.paths(directory)
        try Self.writeFile(keyPath, key.pemRepresentation + "\n", mode: 0o600)
        try Self.writeFile(certPath, try certificate.serializeAsPEM().pemString + "\n", mode: 0o644)
    }

    public static func paths(_ directory: String) -> (certificate: String, key: String) {
        ("\(directory)/ca.pem", "\(directory)/ca.key")
    }

    private static func writeFile(_ path: String, _ text: String, mode: mode_t) throws {
        unlink(path)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw CAError(description: "cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard bytes.withUnsafeBytes({ Foundation.write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
            throw CAError(description: "cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// The leaf for SERVERNAME: from the cache while it has more than an hour left, else minted
    /// (CN and SAN the name, serverAuth, 24 h, a fresh P-256 key).
    public func leaf(for serverName: String, now: Date = Date()) throws -> Leaf {
        if let cached = leaves.get(serverName), cached.notValidAfter.timeIntervalSince(now) > 3600 { return cached }
        let key = P256.Signing.PrivateKey()
        let notAfter = now.addingTimeInterval(Self.leafValidity)
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: notAfter,
            issuer: self.certificate.subject, subject: try DistinguishedName { CommonName(serverName) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames([.dnsName(serverName)])
                if let ski = try? self.certificate.extensions.subjectKeyIdentifier {
                    AuthorityKeyIdentifier(keyIdentifier: ski.keyIdentifier)
                }
            },
            issuerPrivateKey: .init(self.key))
        let leaf = Leaf(certificate: certificate, key: key, notValidAfter: notAfter)
        leaves.put(serverName, leaf)
        return leaf
    }

    /// Leaves minted so far that are still cached (for `loupe status` and tests).
    public var cachedLeaves: Int { leaves.count }
}

/// A small insertion-ordered cache behind a lock, the oldest entry going first past `limit`
/// (the proxy's event loops share the CA's leaves and the TLS contexts built from them).
final class BoundedCache<Value: Sendable>: Sendable {
    private struct Entries {
        var values: [String: Value] = [:]
        var order: [String] = []
    }

    private let limit: Int
    private let entries = Mutex(Entries())

    init(limit: Int) { self.limit = limit }

    func get(_ key: String) -> Value? { entries.withLock { $0.values[key] } }

    func put(_ key: String, _ value: Value) {
        entries.withLock { e in
            if e.values.updateValue(value, forKey: key) == nil { e.order.append(key) }
            while e.order.count > limit { e.values[e.order.removeFirst()] = nil }
        }
    }

    var count: Int { entries.withLock { $0.values.count } }
}
