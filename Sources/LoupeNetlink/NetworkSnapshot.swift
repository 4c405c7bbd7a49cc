/// What rtnetlink says about this netns at one moment: links, main-table routes, IP neighbours
/// and the bridge forwarding database. Plain values, so the interface resolution on top of it
/// is a pure function (`PodInterfaceResolver`).
public struct NetworkSnapshot: Sendable, Equatable {
    public struct Link: Sendable, Equatable {
        public var ifindex: Int32
        public var name: String
        public var kind: String
        public var master: Int32
        public var mac: [UInt8]
        public var isUp: Bool
        public var isBridge: Bool { kind == "bridge" }

        public init(ifindex: Int32, name: String, kind: String, master: Int32 = 0, mac: [UInt8] = [], isUp: Bool = true) {
            self.ifindex = ifindex
            self.name = name
            self.kind = kind
            self.master = master
            self.mac = mac
            self.isUp = isUp
        }
    }

    public struct Route: Sendable, Equatable {
        /// 4 or 16 bytes.
        public var destination: [UInt8]
        public var prefixLength: Int
        public var oif: Int32
        public var isUnicast: Bool
        public var hasGateway: Bool

        public init(destination: [UInt8], prefixLength: Int, oif: Int32, isUnicast: Bool = true, hasGateway: Bool = false) {
            self.destination = destination
            self.prefixLength = prefixLength
            self.oif = oif
            self.isUnicast = isUnicast
            self.hasGateway = hasGateway
        }
    }

    /// An IP neighbour (address → MAC on a link).
    public struct Neighbour: Sendable, Equatable {
        public var address: [UInt8]
        public var mac: [UInt8]
        public var ifindex: Int32
        /// Reachable, stale, permanent, …: a MAC that can be used (not incomplete or failed).
        public var isUsable: Bool

        public init(address: [UInt8], mac: [UInt8], ifindex: Int32, isUsable: Bool = true) {
            self.address = address
            self.mac = mac
            self.ifindex = ifindex
            self.isUsable = isUsable
        }
    }

    /// A bridge FDB entry: MAC learned (or configured) on `port` of `bridge`.
    public struct FDBEntry: Sendable, Equatable {
        public var mac: [UInt8]
        public var port: Int32
        public var bridge: Int32

        public init(mac: [UInt8], port: Int32, bridge: Int32) {
            self.mac = mac
            self.port = port
            self.bridge = bridge
        }
    }

    public var links: [Int32: Link]
    public var routes: [Route]
    public var neighbours: [Neighbour]
    public var fdb: [FDBEntry]

    public init(links: [Link] = [], routes: [Route] = [], neighbours: [Neighbour] = [], fdb: [FDBEntry] = []) {
        self.links = Dictionary(links.map { ($0.ifindex, $0) }, uniquingKeysWith: { a, _ in a })
        self.routes = routes
        self.neighbours = neighbours
        self.fdb = fdb
    }
}

/// Where a local pod's traffic enters the node: the interface to attach the tc program to.
public enum PodAttachment: Sendable, Equatable {
    /// Routed CNIs (Cilium `lxc*`, Calico `cali*`, ptp): the host route to the pod's address
    /// goes through its veth.
    case routed(ifindex: Int32, name: String)
    /// Bridged CNIs (flannel, the `bridge` plugin): the pod's veth is a port of `bridge`; its
    /// packets reach the node's stack only through the bridge (`bridgeIndex`), addressed to its
    /// MAC (`bridgeMAC`).
    case bridged(ifindex: Int32, name: String, bridge: String, bridgeIndex: Int32, bridgeMAC: [UInt8])

    public var ifindex: Int32 {
        switch self {
        case .routed(let i, _), .bridged(let i, _, _, _, _): return i
        }
    }

    public var name: String {
        switch self {
        case .routed(_, let n), .bridged(_, let n, _, _, _): return n
        }
    }
}

/// Why a pod address has no attachment (yet).
public enum PodInterfaceProblem: Error, Sendable, Equatable, CustomStringConvertible {
    case notAnAddress(String)
    case noRoute(String)
    case viaGateway(String, link: String)
    case notAPodLink(String, link: String, kind: String)
    /// The route goes to a bridge but the node has no neighbour entry for the address yet:
    /// resolution (ARP/ND) on `bridge` is due.
    case neighbourUnknown(String, bridge: Int32, bridgeName: String)
    case notInFDB(String, bridge: String)

    public var description: String {
        switch self {
        case .notAnAddress(let ip): return "\(ip) is not an IP address"
        case .noRoute(let ip): return "no route to \(ip) in this netns"
        case .viaGateway(let ip, let link): return "\(ip) is reached through a gateway on \(link): not a pod of this node"
        case .notAPodLink(let ip, let link, let kind): return "the route to \(ip) goes via \(link) (\(kind.isEmpty ? "no kind" : kind)), not a pod's veth or a bridge"
        case .neighbourUnknown(let ip, _, let bridge): return "no neighbour entry for \(ip) on bridge \(bridge) yet (resolving)"
        case .notInFDB(let ip, let bridge): return "the MAC of \(ip) is not in bridge \(bridge)'s forwarding database"
        }
    }
}

/// Finds the node-side interface of a pod address in a `NetworkSnapshot`, on any CNI shape:
/// the longest-prefix main-table route to the address names a veth (routed) or a bridge; on a
/// bridge, the neighbour entry gives the pod's MAC and the FDB the port it sits behind.
public enum PodInterfaceResolver {
    public static func resolve(_ ip: String, in net: NetworkSnapshot) -> Result<PodAttachment, PodInterfaceProblem> {
        guard let address = IPAddressBytes.parse(ip) else { return .failure(.notAnAddress(ip)) }
        var best: NetworkSnapshot.Route?
        for r in net.routes where r.isUnicast && r.oif != 0 && r.destination.count == address.count {
            guard matches(address, r.destination, r.prefixLength) else { continue }
            if best == nil || r.prefixLength > best!.prefixLength { best = r }
        }
        guard let route = best, let link = net.links[route.oif] else { return .failure(.noRoute(ip)) }
        if route.hasGateway { return .failure(.viaGateway(ip, link: link.name)) }
        if link.isBridge {
            guard let neighbour = net.neighbours.first(where: { $0.ifindex == link.ifindex && $0.address == address && $0.isUsable && $0.mac.count == 6 }) else {
                return .failure(.neighbourUnknown(ip, bridge: link.ifindex, bridgeName: link.name))
            }
            guard let entry = net.fdb.first(where: { $0.mac == neighbour.mac && $0.bridge == link.ifindex && $0.port != link.ifindex }),
                  let port = net.links[entry.port] else {
                return .failure(.notInFDB(ip, bridge: link.name))
            }
            return .success(.bridged(ifindex: port.ifindex, name: port.name, bridge: link.name, bridgeIndex: link.ifindex, bridgeMAC: link.mac))
        }
        guard link.kind == "veth" else { return .failure(.notAPodLink(ip, link: link.name, kind: link.kind)) }
        return .success(.routed(ifindex: link.ifindex, name: link.name))
    }

    static func matches(_ a: [UInt8], _ prefix: [UInt8], _ length: Int) -> Bool {
        var bits = length
        for i in 0..<a.count {
            if bits <= 0 { return true }
            let mask: UInt8 = bits >= 8 ? 0xff : ~(0xff >> UInt8(bits))
            if a[i] & mask != prefix[i] & mask { return false }
            bits -= 8
        }
        return true
    }
}

/// IPv4 (4 bytes) or IPv6 (16 bytes) text ↔ bytes.
public enum IPAddressBytes {
    public static func parse(_ text: String) -> [UInt8]? {
        #if canImport(Glibc)
        if text.contains(":") {
            var a = in6_addr()
            guard inet_pton(AF_INET6, text, &a) == 1 else { return nil }
            return withUnsafeBytes(of: a) { Array($0) }
        }
        var a = in_addr()
        guard inet_pton(AF_INET, text, &a) == 1 else { return nil }
        return withUnsafeBytes(of: a) { Array($0) }
        #else
        return nil
        #endif
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// The node's uplinks: where replies from destinations beyond this node's pods come in
/// (`--upstream-source pod` steers them back to the proxy there). Every interface that is up,
/// not loopback, and the way out of a main-table unicast route, except the pods' own
/// interfaces, bridges and bridge ports (the CNI's local plumbing). `--uplink` names replace
/// the guess; a name that is not there is reported.
public enum UplinkResolver {
    public static func resolve(in net: NetworkSnapshot, pods: [PodAttachment], names: [String] = []) -> (uplinks: [PodAttachment], missing: [String]) {
        if !names.isEmpty {
            var found: [PodAttachment] = [], missing: [String] = []
            for name in names {
                if let link = net.links.values.first(where: { $0.name == name }) {
                    found.append(.routed(ifindex: link.ifindex, name: link.name))
                } else {
                    missing.append(name)
                }
            }
            return (found, missing)
        }
        let podIndexes = Set(pods.map(\.ifindex))
        var out: Set<Int32> = []
        for r in net.routes where r.isUnicast && r.oif != 0 && !podIndexes.contains(r.oif) && !out.contains(r.oif) {
            guard let link = net.links[r.oif], link.isUp, link.name != "lo", link.kind != "bridge", link.master == 0 else { continue }
            out.insert(r.oif)
        }
        return (out.sorted().compactMap { i in net.links[i].map { .routed(ifindex: i, name: $0.name) } }, [])
    }
}
