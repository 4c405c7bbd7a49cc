import CLoupeBPF
import Foundation
import Glibc
import LoupeBPF
import Testing

/// The kernel splice on real loopback sockets: two connections (client → "proxy" socket A,
/// "proxy" socket B → server), A and B spliced through `loupe_splice_insert` (BPF_PROG_TEST_RUN
/// by 4-tuple), then bytes written by the client arrive at the server and back, with nothing
/// reading A or B. Needs root.
@Suite(.serialized, .enabled(if: geteuid() == 0, "sockmap and BPF_PROG_TEST_RUN need root"))
final class SpliceTests {
    static let objectPath = TCFromPodTests.objectPath.replacingOccurrences(of: "tc_from_pod.bpf.o", with: "splice.bpf.o")

    let pinRoot = "/sys/fs/bpf/loupe-splice-test-\(getpid())"
    let maps: SpliceMaps

    init() throws {
        maps = try SpliceMaps(objectPath: Self.objectPath, pinRoot: pinRoot)
    }

    deinit { maps.close(unpin: true) }

    /// client ↔ a (accepted) and b ↔ server (accepted): a and b play the proxy's two sockets.
    struct Pair {
        var client: Int32, a: Int32, b: Int32, server: Int32
        func closeAll() { for fd in [client, a, b, server] { close(fd) } }
    }

    func makePair() throws -> Pair {
        let l1 = try TCPSocket.listen(), l2 = try TCPSocket.listen()
        defer { close(l1.fd); close(l2.fd) }
        let client = try TCPSocket.connect(port: l1.port)
        let a = accept(l1.fd, nil, nil)
        let b = try TCPSocket.connect(port: l2.port)
        let server = accept(l2.fd, nil, nil)
        return Pair(client: client.fd, a: a, b: b.fd, server: server)
    }

    func spliceSocket(_ fd: Int32) -> SpliceSocket {
        var cookie: UInt64 = 0
        var len = socklen_t(8)
        getsockopt(fd, SOL_SOCKET, 57 /* SO_COOKIE */, &cookie, &len)
        func name(_ get: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32) -> ([UInt8], UInt16) {
            var a = sockaddr_in()
            var l = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { get(fd, $0, &l) } }
            return (withUnsafeBytes(of: a.sin_addr) { Array($0) }, UInt16(bigEndian: a.sin_port))
        }
        let local = name { getsockname($0, $1, $2) }, remote = name { getpeername($0, $1, $2) }
        return SpliceSocket(cookie: cookie, localAddress: local.0, localPort: local.1, remoteAddress: remote.0, remotePort: remote.1)
    }

    func readExactly(_ fd: Int32, _ n: Int) -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        while out.count < n {
            let r = recv(fd, &buf, min(buf.count, n - out.count), 0)
            if r <= 0 { break }
            out += buf[0..<r]
        }
        return out
    }

    @Test func splicedSocketsCarryBytesBothWaysWithoutTheProxyReading() throws {
        let p = try makePair()
        defer { p.closeAll() }
        let a = spliceSocket(p.a), b = spliceSocket(p.b)
        try maps.insert(downstream: a, upstream: b)
        #expect(maps.status()["paired_sockets"] == 2)

        let up = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        #expect(send(p.client, up, up.count, 0) == up.count)
        #expect(readExactly(p.server, up.count) == up)
        let down = Array("answer from the server".utf8)
        #expect(send(p.server, down, down.count, 0) == down.count)
        #expect(readExactly(p.client, down.count) == down)

        #expect(maps.forwardedBytes(from: a.cookie) == UInt64(up.count))
        #expect(maps.forwardedBytes(from: b.cookie) == UInt64(down.count))
        maps.remove(a.cookie, b.cookie)
        #expect(maps.status()["paired_sockets"] == 0)
    }

    @Test func aSocketAlreadySplicedIsRefusedAndNothingStays() throws {
        let p = try makePair(), q = try makePair()
        defer { p.closeAll(); q.closeAll() }
        try maps.insert(downstream: spliceSocket(p.a), upstream: spliceSocket(p.b))
        #expect(throws: SpliceRefusal.self) {
            try maps.insert(downstream: spliceSocket(p.a), upstream: spliceSocket(q.b))
        }
        #expect(maps.status()["paired_sockets"] == 2)
        maps.remove(spliceSocket(p.a).cookie, spliceSocket(p.b).cookie)
    }

    @Test func aSocketThatIsGoneIsRefusedByName() throws {
        let p = try makePair()
        let a = spliceSocket(p.a), b = spliceSocket(p.b)
        p.closeAll()
        do {
            try maps.insert(downstream: a, upstream: b)
            Issue.record("closed sockets were spliced")
        } catch {
            #expect(error.reason == .noSocket)
        }
        #expect(maps.status()["paired_sockets"] == 0)
    }

    /// A crashed agent leaves its pins; an older build's pair map had a smaller value (no
    /// forwarded sequence) and could not be reused. A new agent replaces them and splices.
    @Test func pinsOfAnOlderLayoutLeftByACrashAreReplaced() throws {
        let root = pinRoot + "-old"
        try BPFFilesystem.makeDirectory(root)
        defer { BPFFilesystem.removePins(in: root) }
        let old = bpf_map_create(BPF_MAP_TYPE_HASH, "loupe_splice_pairs", 8, 16, 16, nil)
        #expect(old >= 0)
        #expect(bpf_obj_pin(old, root + "/loupe_splice_pairs") == 0)
        close(old)

        let fresh = try SpliceMaps(objectPath: Self.objectPath, pinRoot: root)
        defer { fresh.close(unpin: true) }
        let p = try makePair()
        defer { p.closeAll() }
        let a = spliceSocket(p.a), b = spliceSocket(p.b)
        try fresh.insert(downstream: a, upstream: b)
        let bytes = Array("through the replaced maps".utf8)
        #expect(send(p.client, bytes, bytes.count, 0) == bytes.count)
        #expect(readExactly(p.server, bytes.count) == bytes)
        #expect(fresh.forwardedBytes(from: a.cookie) == UInt64(bytes.count))
        fresh.remove(a.cookie, b.cookie)
    }
}
