import CLoupeNetlink
#if canImport(Glibc)
import Glibc
#endif

public struct NetlinkError: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var errno: Int32
    public var description: String { "\(operation): \(String(cString: strerror(errno)))" }
    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }
}

/// rtnetlink in this netns (through the CLoupeNetlink shim): the dumps behind
/// `NetworkSnapshot`, the proxy's policy-routing rule and local route, neighbour probes.
public enum Netlink {
    public static func snapshot() throws -> NetworkSnapshot {
        let links = try dump("links", loupe_nl_link()) { loupe_nl_links($0, $1) }.map { l in
            var l = l
            return NetworkSnapshot.Link(ifindex: l.ifindex, name: cString(&l.name), kind: cString(&l.kind), master: l.master,
                                        mac: withUnsafeBytes(of: l.mac) { Array($0) }, isUp: l.is_up != 0)
        }
        var routes: [NetworkSnapshot.Route] = []
        for family in [AF_INET, AF_INET6] {
            let width = family == AF_INET ? 4 : 16
            routes += try dump("routes", loupe_nl_route()) { loupe_nl_routes(family, $0, $1) }.map { r in
                NetworkSnapshot.Route(destination: Array(withUnsafeBytes(of: r.dst) { Array($0) }.prefix(width)), prefixLength: Int(r.dst_len),
                                      oif: r.oif, isUnicast: r.type == 1 /* RTN_UNICAST */, hasGateway: r.has_gateway != 0)
            }
        }
        var neighbours: [NetworkSnapshot.Neighbour] = []
        for family in [AF_INET, AF_INET6] {
            let width = family == AF_INET ? 4 : 16
            neighbours += try dump("neighbours", loupe_nl_neigh()) { loupe_nl_neighbours(family, $0, $1) }
                .filter { $0.has_mac != 0 }
                .map { n in
                    // NUD_INCOMPLETE 0x01, NUD_FAILED 0x20, NUD_NOARP 0x40 without a MAC is useless.
                    NetworkSnapshot.Neighbour(address: Array(withUnsafeBytes(of: n.addr) { Array($0) }.prefix(width)),
                                              mac: withUnsafeBytes(of: n.mac) { Array($0) }, ifindex: n.ifindex,
                                              isUsable: n.state & 0x21 == 0)
                }
        }
        let fdb = try dump("bridge fdb", loupe_nl_neigh()) { loupe_nl_neighbours(7 /* AF_BRIDGE */, $0, $1) }
            .filter { $0.has_mac != 0 && $0.master != 0 }
            .map { NetworkSnapshot.FDBEntry(mac: withUnsafeBytes(of: $0.mac) { Array($0) }, port: $0.ifindex, bridge: $0.master) }
        return NetworkSnapshot(links: links, routes: routes, neighbours: neighbours, fdb: fdb)
    }

    /// `ip rule add fwmark MARK/MASK lookup TABLE pref PRIORITY` (IPv4 or IPv6).
    public static func addRule(ipv6: Bool, mark: UInt32, mask: UInt32, table: UInt32, priority: UInt32) throws {
        let rc = loupe_nl_rule(1, ipv6 ? AF_INET6 : AF_INET, mark, mask, table, priority)
        if rc < 0 { throw NetlinkError("add rule fwmark \(mark)/\(mask) lookup \(table)", errno: -rc) }
    }

    /// Deletes one matching rule; false when there is none left.
    @discardableResult
    public static func deleteRule(ipv6: Bool, mark: UInt32, mask: UInt32, table: UInt32) -> Bool {
        loupe_nl_rule(0, ipv6 ? AF_INET6 : AF_INET, mark, mask, table, 0) == 0
    }

    /// `ip route replace local default dev lo table TABLE`.
    public static func replaceLocalDefaultRoute(ipv6: Bool, table: UInt32) throws {
        let rc = loupe_nl_local_default_route(1, ipv6 ? AF_INET6 : AF_INET, table, Int32(if_nametoindex("lo")))
        if rc < 0 { throw NetlinkError("add local default route to table \(table)", errno: -rc) }
    }

    public static func deleteLocalDefaultRoute(ipv6: Bool, table: UInt32) {
        _ = loupe_nl_local_default_route(0, ipv6 ? AF_INET6 : AF_INET, table, Int32(if_nametoindex("lo")))
    }

    /// Starts ARP/ND for `address` on `ifindex` (the kernel's NTF_USE), so a bridged pod that
    /// has not talked to the node yet gets a neighbour entry.
    public static func probeNeighbour(_ address: [UInt8], ifindex: Int32) {
        _ = address.withUnsafeBufferPointer { loupe_nl_neigh_probe(address.count == 4 ? AF_INET : AF_INET6, $0.baseAddress, ifindex) }
    }

    private static func dump<T>(_ what: String, _ zero: T, _ call: (UnsafeMutablePointer<T>, Int32) -> Int32) throws -> [T] {
        var capacity = 256
        while true {
            var buffer = [T](repeating: zero, count: capacity)
            let n = buffer.withUnsafeMutableBufferPointer { call($0.baseAddress!, Int32(capacity)) }
            if n < 0 { throw NetlinkError("dump \(what)", errno: -n) }
            if Int(n) <= capacity { return Array(buffer.prefix(Int(n))) }
            capacity = Int(n) + 64
        }
    }

    private static func cString<T>(_ tuple: inout T) -> String {
        withUnsafeBytes(of: &tuple) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}

/// A socket subscribed to link, neighbour and route changes: `changed()` says whether anything
/// happened since the last call (without blocking).
public final class NetlinkMonitor: @unchecked Sendable {
    private let fd: Int32

    public init() throws {
        let fd = loupe_nl_monitor_open()
        if fd < 0 { throw NetlinkError("subscribe to link/neighbour/route changes", errno: -fd) }
        self.fd = fd
    }

    deinit { close(fd) }

    public func changed() -> Bool { loupe_nl_monitor_drain(fd) != 0 }
}
