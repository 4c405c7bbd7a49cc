import Foundation
import Logging
import LoupeNetlink

/// The node routing that makes an assigned packet reach the proxy socket: packets marked
/// 0x200/0xf00 by the tc program look up table 2004, whose default route is local.
/// (Cilium's numbers.) Installed over rtnetlink for IPv4 and IPv6 in the agent's netns,
/// removed on shutdown.
struct RoutingRules {
    let logger: Logger
    static let table: UInt32 = 2004
    static let mark: UInt32 = 0x200
    static let mask: UInt32 = 0xf00
    static let priority: UInt32 = 100

    func install() throws {
        remove() // idempotent: a crashed agent may have left them
        for ipv6 in [false, true] {
            try Netlink.addRule(ipv6: ipv6, mark: Self.mark, mask: Self.mask, table: Self.table, priority: Self.priority)
            try Netlink.replaceLocalDefaultRoute(ipv6: ipv6, table: Self.table)
        }
    }

    func remove() {
        for ipv6 in [false, true] {
            while Netlink.deleteRule(ipv6: ipv6, mark: Self.mark, mask: Self.mask, table: Self.table) {}
            Netlink.deleteLocalDefaultRoute(ipv6: ipv6, table: Self.table)
        }
    }
}

public struct AgentError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}
