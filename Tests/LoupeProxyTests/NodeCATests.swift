import Crypto
import Foundation
@testable import LoupeProxy
import Testing
import X509

@Suite struct NodeCATests {
    @Test func aMintedLeafNamesTheServerAndChainsToTheNodeCA() async throws {
        let ca = try NodeCA.create(nodeName: "test-node")
        let leaf = try ca.leaf(for: "api.example.test")
        #expect(leaf.certificate.issuer == ca.certificate.subject)
        let san = try #require(try leaf.certificate.extensions.subjectAlternativeNames)
        #expect(Array(san) == [.dnsName("api.example.test")])
        #expect(leaf.notValidAfter.timeIntervalSinceNow <= NodeCA.leafValidity)
        var verifier = Verifier(rootCertificates: CertificateStore([ca.certificate])) {
            RFC5280Policy()
            ServerIdentityPolicy(serverHostname: "api.example.test", serverIP: nil)
        }
        guard case .validCertificate(let chain) = await verifier.validate(leaf: leaf.certificate, intermediates: CertificateStore()) else {
            Issue.record("the leaf does not verify against the node CA")
            return
        }
        #expect(chain.count == 2)
        // The same leaf does not pass for another name.
        var other = Verifier(rootCertificates: CertificateStore([ca.certificate])) {
            RFC5280Policy()
            ServerIdentityPolicy(serverHostname: "www.example.test", serverIP: nil)
        }
        guard case .couldNotValidate = await other.validate(leaf: leaf.certificate, intermediates: CertificateStore()) else {
            Issue.record("a leaf for api.example.test verified as www.example.test")
            return
        }
    }

    @Test func leavesAreReusedFromTheCacheUntilNearTheirEnd() throws {
        let ca = try NodeCA.create(nodeName: "test-node")
        let now = Date()
        let first = try ca.leaf(for: "api.example.test", now: now)
        #expect(try ca.leaf(for: "api.example.test", now: now.addingTimeInterval(600)).certificate == first.certificate)
        #expect(try ca.leaf(for: "www.example.test", now: now).certificate != first.certificate)
        #expect(ca.cachedLeaves == 2)
        // Less than an hour left: a fresh one.
        #expect(try ca.leaf(for: "api.example.test", now: now.addingTimeInterval(NodeCA.leafValidity - 1800)).certificate
                != first.certificate)
    }

    @Test func writtenKeyIsPrivateAndLoadsBack() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("loupe-ca-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ca = try NodeCA.create(nodeName: "test-node")
        try ca.write(directory: dir)
        let (certPath, keyPath) = NodeCA.paths(dir)
        let mode = try #require(try FileManager.default.attributesOfItem(atPath: keyPath)[.posixPermissions] as? Int)
        #expect(mode == 0o600)
        let loaded = try NodeCA.load(directory: dir)
        #expect(loaded.certificate == ca.certificate)
        // A key that is not the certificate's is refused, without printing either.
        try P256.Signing.PrivateKey().pemRepresentation.write(toFile: keyPath, atomically: true, encoding: .utf8)
        #expect(throws: NodeCA.CAError.self) { try NodeCA.load(directory: dir) }
        _ = certPath
    }
}
