import CLoupeBPF
import Glibc

/// Outcome counters of `loupe_from_pod`, in the order of `enum loupe_counter`.
public enum DatapathCounter: UInt32, CaseIterable, Sendable {
    case unmanaged = 0, notTCP, notSelected, assignedEstablished, assignedListener
    case proxyAbsentPass, proxyAbsentDrop, noSocketPass, assignFailed
    case unparseableDrop, fragmentDrop, fragmentPass, laterFragmentPass, replyAssigned
    case bridgeSocketGone

    /// Metric-style name, e.g. `assigned_listener`.
    public var name: String {
        switch self {
        case .unmanaged: "unmanaged"
        case .notTCP: "not_tcp"
        case .notSelected: "not_selected"
        case .assignedEstablished: "assigned_established"
        case .assignedListener: "assigned_listener"
        case .proxyAbsentPass: "proxy_absent_pass"
        case .proxyAbsentDrop: "proxy_absent_drop"
        case .noSocketPass: "no_socket_pass"
        case .assignFailed: "assign_failed"
        case .unparseableDrop: "unparseable_drop"
        case .fragmentDrop: "fragment_drop"
        case .fragmentPass: "fragment_pass"
        case .laterFragmentPass: "later_fragment_pass"
        case .replyAssigned: "reply_assigned"
        case .bridgeSocketGone: "bridge_socket_gone"
        }
    }
}

/// A redirect rule as the tc program sees it.
public struct RedirectEntry: Hashable, Sendable {
    public enum Match: Hashable, Sendable {
        /// Packets leaving the pod behind `ifindex` to `port` (the pod's Egress rule).
        case egress(ifindex: UInt32)
        /// Packets from any managed pod to `address:port` (the destination pod's Ingress rule).
        case ingress(address: [UInt8])
    }
    public var match: Match
    public var port: UInt16
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    public var l4Protocol: UInt8
    public var proxyPort: UInt16
    public var enforce: Bool

    public init(match: Match, port: UInt16, l4Protocol: UInt8 = UInt8(IPPROTO_TCP), proxyPort: UInt16, enforce: Bool = false) {
        self.match = match
        self.port = port
        self.l4Protocol = l4Protocol
        self.proxyPort = proxyPort
        self.enforce = enforce
    }

    var key: loupe_redirect_key {
        var k = loupe_redirect_key()
        k.port = port
        k.proto = l4Protocol
        switch match {
        case .egress(let ifindex):
            k.ifindex = ifindex
            k.family = 4 // egress rules are installed for both families; see Datapath.setRedirects
        case .ingress(let address):
            k.family = address.count == 4 ? 4 : 6
            withUnsafeMutableBytes(of: &k.addr) { buf in
                for (i, b) in address.prefix(16).enumerated() { buf[i] = b }
            }
        }
        return k
    }

    var value: loupe_redirect_value {
        var v = loupe_redirect_value()
        v.proxy_port = proxyPort
        v.flags = (enforce ? UInt8(LOUPE_REDIRECT_ENFORCE) : 0) | (isIngress ? UInt8(LOUPE_REDIRECT_INGRESS) : 0)
        return v
    }

    var isIngress: Bool { if case .ingress = match { true } else { false } }
}

/// The tc datapath: the `loupe_from_pod` program, its maps, and the veths it is attached to;
/// and `loupe_from_bridge` on the bridges of bridged pods, where a packet their ports hand to
/// the proxy is assigned to its socket. Closing detaches from every interface; pins are
/// removed by `close(unpin: true)`.
public final class Datapath {
    public static let defaultPinRoot = "/sys/fs/bpf/loupe"

    private let object: BPFObject
    private let programFD: Int32
    private let bridgeProgramFD: Int32
    public let endpoints: BPFMap
    public let redirects: BPFMap
    public let counters: BPFMap
    public private(set) var attached: Set<Int32> = []
    /// Bridges `loupe_from_bridge` is attached to.
    public private(set) var attachedBridges: Set<Int32> = []
    /// Veths whose clsact qdisc we created (and so remove on detach).
    private var ownedQdiscs: Set<Int32> = []

    public init(objectPath: String, pinRoot: String = Datapath.defaultPinRoot) throws {
        object = try BPFObject(path: objectPath, pinRoot: pinRoot)
        programFD = try object.programFD("loupe_from_pod")
        bridgeProgramFD = try object.programFD("loupe_from_bridge")
        endpoints = try object.map("loupe_endpoints")
        redirects = try object.map("loupe_redirects")
        counters = try object.map("loupe_counters")
    }

    public var programFileDescriptor: Int32 { programFD }
    public var bridgeProgramFileDescriptor: Int32 { bridgeProgramFD }

    /// Attaches `loupe_from_pod` (or, with `bridge`, `loupe_from_bridge`) at tc ingress.
    public func attach(ifindex: Int32, bridge: Bool = false) throws {
        var created: Int32 = 0
        let rc = loupe_tc_attach_ingress(ifindex, bridge ? bridgeProgramFD : programFD, &created)
        if rc != 0 { throw BPFError("attach tc ingress on ifindex \(ifindex)", errno: rc) }
        if bridge { attachedBridges.insert(ifindex) } else { attached.insert(ifindex) }
        if created != 0 { ownedQdiscs.insert(ifindex) }
    }

    public func detach(ifindex: Int32) {
        _ = loupe_tc_detach_ingress(ifindex, ownedQdiscs.contains(ifindex) ? 1 : 0)
        attached.remove(ifindex)
        attachedBridges.remove(ifindex)
        ownedQdiscs.remove(ifindex)
    }

    /// Makes the endpoint map equal to `wanted` (ifindex → endpoint).
    public func setEndpoints(_ wanted: [UInt32: EndpointEntry]) throws {
        for key in endpoints.keys(UInt32.self) where wanted[key] == nil { endpoints.delete(key) }
        for (ifindex, entry) in wanted {
            var ep = loupe_endpoint()
            ep.id = entry.id
            if entry.steerReplies { ep.flags |= UInt32(LOUPE_ENDPOINT_STEER_REPLIES) }
            if entry.uplink { ep.flags |= UInt32(LOUPE_ENDPOINT_UPLINK) }
            if let bridge = entry.bridge, bridge.mac.count == 6 {
                ep.flags |= UInt32(LOUPE_ENDPOINT_BRIDGED)
                withUnsafeMutableBytes(of: &ep.gateway_mac) { $0.copyBytes(from: bridge.mac) }
                ep.bridge_ifindex = UInt32(bridge.ifindex)
            }
            try endpoints.update(ifindex, ep)
        }
    }

    /// Makes the redirect map equal to `entries`. Egress entries are written for IPv4 and IPv6.
    public func setRedirects(_ entries: [RedirectEntry]) throws {
        var wanted: [(loupe_redirect_key, loupe_redirect_value)] = []
        for e in entries {
            var k = e.key
            wanted.append((k, e.value))
            if case .egress = e.match {
                k.family = 6
                wanted.append((k, e.value))
            }
        }
        let wantedKeys = Set(wanted.map { RedirectKeyBytes($0.0) })
        for key in redirects.keys(loupe_redirect_key.self) where !wantedKeys.contains(RedirectKeyBytes(key)) {
            redirects.delete(key)
        }
        for (k, v) in wanted { try redirects.update(k, v) }
    }

    public func readCounters() -> [DatapathCounter: UInt64] {
        var out: [DatapathCounter: UInt64] = [:]
        for c in DatapathCounter.allCases { out[c] = counters.perCPUSum(index: c.rawValue) }
        return out
    }

    /// Detaches from every veth and closes; with `unpin`, removes the pinned maps too.
    public func close(unpin: Bool) {
        for ifindex in attached.union(attachedBridges) { detach(ifindex: ifindex) }
        if unpin { object.unpinAll() }
        object.close()
    }
}

/// A managed pod's veth: its endpoint id, and for a bridge port the bridge (packets handed to
/// the proxy are re-addressed to its MAC and enter the node through it). Or, with `uplink`,
/// one of the node's uplinks (no redirect rule applies there).
public struct EndpointEntry: Sendable, Equatable {
    public var id: UInt32
    public var bridge: (ifindex: Int32, mac: [UInt8])?
    /// Replies addressed to a pod that belong to a proxy upstream socket bound to that pod's
    /// address (`--upstream-source pod`) are assigned to it.
    public var steerReplies: Bool
    public var uplink: Bool

    public init(id: UInt32, bridge: (ifindex: Int32, mac: [UInt8])? = nil, steerReplies: Bool = false, uplink: Bool = false) {
        self.id = id
        self.bridge = bridge
        self.steerReplies = steerReplies
        self.uplink = uplink
    }

    public static func == (a: EndpointEntry, b: EndpointEntry) -> Bool {
        a.id == b.id && a.bridge?.ifindex == b.bridge?.ifindex && a.bridge?.mac == b.bridge?.mac
            && a.steerReplies == b.steerReplies && a.uplink == b.uplink
    }
}

/// Hashable bytes of a redirect key (the C struct is not Hashable).
struct RedirectKeyBytes: Hashable {
    let bytes: [UInt8]
    init(_ key: loupe_redirect_key) {
        bytes = withUnsafeBytes(of: key) { Array($0) }
    }
}
