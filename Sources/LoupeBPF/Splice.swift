import CLoupeBPF
import Glibc

/// One socket of a connection to splice, named as an arriving packet would name it.
public struct SpliceSocket: Sendable {
    /// SO_COOKIE.
    public var cookie: UInt64
    /// 4 or 16 bytes.
    public var localAddress: [UInt8]
    public var localPort: UInt16
    public var remoteAddress: [UInt8]
    public var remotePort: UInt16

    public init(cookie: UInt64, localAddress: [UInt8], localPort: UInt16, remoteAddress: [UInt8], remotePort: UInt16) {
        self.cookie = cookie
        self.localAddress = localAddress
        self.localPort = localPort
        self.remoteAddress = remoteAddress
        self.remotePort = remotePort
    }

    /// saddr/sport = the remote end, daddr/dport = the local end, network byte order.
    var tuple: bpf_sock_tuple {
        var t = bpf_sock_tuple()
        withUnsafeMutableBytes(of: &t) { raw in
            let n = localAddress.count
            for (i, b) in remoteAddress.enumerated() { raw[i] = b }
            for (i, b) in localAddress.enumerated() { raw[n + i] = b }
            raw.storeBytes(of: remotePort.bigEndian, toByteOffset: 2 * n, as: UInt16.self)
            raw.storeBytes(of: localPort.bigEndian, toByteOffset: 2 * n + 2, as: UInt16.self)
        }
        return t
    }
}

/// Why the kernel did not take a connection; `reason` is metric-safe (`splice_fallback_<reason>`).
public struct SpliceRefusal: Error, CustomStringConvertible, Sendable {
    public enum Reason: String, CaseIterable, Sendable {
        case addressFamily = "address_family", testRun = "test_run", mapFull = "map_full", pairMap = "pair_map"
        case noSocket = "no_socket", busy, socketState = "socket_state", insert, request
    }

    public var reason: Reason
    public var detail: String
    public init(reason: Reason, detail: String) {
        self.reason = reason
        self.detail = detail
    }
    public var description: String { "\(reason.rawValue): \(detail)" }
}

/// The kernel splice (`bpf/splice.bpf.c`): a SOCKHASH of proxy sockets with the stream-verdict
/// program attached, the pair map, and the inserter run through BPF_PROG_TEST_RUN. Maps are
/// pinned beside the datapath's. `@unchecked Sendable`: it holds only file descriptors, and every
/// call is one or a few bpf syscalls, which the kernel serialises.
public final class SpliceMaps: @unchecked Sendable {
    private let object: BPFObject
    private let insertProgram: Int32
    private let verdictProgram: Int32
    public let sockets: BPFMap
    public let pairs: BPFMap
    public let counters: BPFMap
    /// A previous agent's splice pins (a crash leaves them) are replaced: the sockets they held
    /// closed with it, and maps of an older layout could not be reused — the splice would be
    /// unavailable until someone removed them.
    public init(objectPath: String, pinRoot: String) throws {
        object = try BPFObject(path: objectPath, pinRoot: pinRoot, replacingPins: true)
        insertProgram = try object.programFD("loupe_splice_insert")
        verdictProgram = try object.programFD("loupe_splice_verdict")
        sockets = try object.map("loupe_splice_socks")
        pairs = try object.map("loupe_splice_pairs")
        counters = try object.map("loupe_splice_counters")
        if bpf_prog_attach(verdictProgram, sockets.fd, BPF_SK_SKB_STREAM_VERDICT, 0) != 0 {
            let e = errno
            object.close()
            throw BPFError("attach the splice verdict to loupe_splice_socks", errno: e)
        }
    }

    /// Pairs the two sockets and puts both into the SOCKHASH: from then on what one receives
    /// the kernel sends on the other. On failure nothing stays in the maps.
    public func insert(downstream: SpliceSocket, upstream: SpliceSocket) throws(SpliceRefusal) {
        guard downstream.localAddress.count == upstream.localAddress.count,
              [4, 16].contains(downstream.localAddress.count) else {
            throw SpliceRefusal(reason: .addressFamily, detail: "both sockets must be IPv4 or both IPv6")
        }
        do {
            try pairs.insert(downstream.cookie, loupe_splice_peer(peer_cookie: upstream.cookie, bytes: 0, forwarded_seq: 0))
        } catch {
            throw Self.pairRefusal(error)
        }
        do {
            try pairs.insert(upstream.cookie, loupe_splice_peer(peer_cookie: downstream.cookie, bytes: 0, forwarded_seq: 0))
        } catch {
            pairs.delete(downstream.cookie)
            throw Self.pairRefusal(error)
        }
        var req = loupe_splice_request()
        req.family = downstream.localAddress.count == 4 ? 4 : 6
        req.downstream = downstream.tuple
        req.upstream = upstream.tuple
        req.downstream_cookie = downstream.cookie
        req.upstream_cookie = upstream.cookie
        var retval: UInt32 = 0, mark: UInt32 = 0
        let rc = withUnsafeBytes(of: &req) { loupe_prog_test_run_skb(insertProgram, $0.baseAddress, UInt32($0.count), nil, 0, 0, &retval, &mark) }
        if rc != 0 || retval != 0 {
            pairs.delete(downstream.cookie)
            pairs.delete(upstream.cookie)
            throw rc != 0 ? SpliceRefusal(reason: .testRun, detail: "BPF_PROG_TEST_RUN: \(String(cString: strerror(-rc)))")
                          : Self.refusal(retval)
        }
    }

    static func pairRefusal(_ error: BPFError) -> SpliceRefusal {
        SpliceRefusal(reason: [E2BIG, ENOMEM, ENOSPC].contains(error.errno) ? .mapFull : .pairMap, detail: error.description)
    }

    static func refusal(_ retval: UInt32) -> SpliceRefusal {
        let errno = Int32(retval & 0xffff)
        let err = String(cString: strerror(errno))
        switch retval & 0xffff_0000 {
        case UInt32(LOUPE_SPLICE_ERR_NO_DOWNSTREAM): return SpliceRefusal(reason: .noSocket, detail: "the pod's socket was not found (closed?)")
        case UInt32(LOUPE_SPLICE_ERR_NO_UPSTREAM): return SpliceRefusal(reason: .noSocket, detail: "the destination socket was not found (closed?)")
        case UInt32(LOUPE_SPLICE_ERR_INSERT_DOWNSTREAM), UInt32(LOUPE_SPLICE_ERR_INSERT_UPSTREAM):
            let reason: SpliceRefusal.Reason = switch errno {
            case EBUSY: .busy
            case E2BIG, ENOMEM, ENOSPC: .mapFull
            case EOPNOTSUPP: .socketState // not ESTABLISHED any more (closing), or not TCP
            default: .insert
            }
            return SpliceRefusal(reason: reason, detail: "sockhash insert: \(err)")
        default: return SpliceRefusal(reason: .request, detail: "malformed request (\(retval))")
        }
    }

    /// Bytes the kernel forwarded from the socket `cookie` to its peer since it was spliced.
    public func forwardedBytes(from cookie: UInt64) -> UInt64 {
        var k = cookie
        var v = loupe_splice_peer()
        return bpf_map_lookup_elem(pairs.fd, &k, &v) == 0 ? v.bytes : 0
    }

    /// Forgets a pair (closing its sockets removes them from the SOCKHASH by itself).
    public func remove(_ a: UInt64, _ b: UInt64) {
        for c in [a, b] {
            pairs.delete(c)
            sockets.delete(c)
        }
    }

    /// For `loupe status`.
    public func status() -> [String: UInt64] {
        [
            "paired_sockets": UInt64(pairs.keys(UInt64.self).count),
            "kernel_unpaired_skbs": counters.perCPUSum(index: UInt32(LOUPE_SPLICE_CNT_UNPAIRED.rawValue)),
            "kernel_peer_gone_skbs": counters.perCPUSum(index: UInt32(LOUPE_SPLICE_CNT_PEER_GONE.rawValue)),
            "kernel_repeated_skbs": counters.perCPUSum(index: UInt32(LOUPE_SPLICE_CNT_REPEATED.rawValue)),
            "kernel_trimmed_skbs": counters.perCPUSum(index: UInt32(LOUPE_SPLICE_CNT_TRIMMED.rawValue)),
            "kernel_untrimmed_skbs": counters.perCPUSum(index: UInt32(LOUPE_SPLICE_CNT_UNTRIMMED.rawValue)),
        ]
    }

    public func close(unpin: Bool) {
        _ = bpf_prog_detach2(verdictProgram, sockets.fd, BPF_SK_SKB_STREAM_VERDICT)
        if unpin { object.unpinAll() }
        object.close()
    }
}
