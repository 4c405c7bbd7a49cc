import Foundation
import Logging
import LoupeProcess

/// The node routing that makes an assigned packet reach the proxy socket: packets marked
/// 0x200/0xf00 by the tc program look up table 2004, whose default route is local.
/// (Cilium's numbers.) Installed for IPv4 and IPv6 in the agent's netns, removed on shutdown.
struct RoutingRules {
    let logger: Logger
    static let table = "2004"
    static let mark = "0x200/0xf00"

    func install() throws {
        remove() // idempotent: a crashed agent may have left them
        try ip(["-4", "rule", "add", "fwmark", Self.mark, "lookup", Self.table, "pref", "100"])
        try ip(["-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", Self.table])
        try ip(["-6", "rule", "add", "fwmark", Self.mark, "lookup", Self.table, "pref", "100"])
        try ip(["-6", "route", "replace", "local", "::/0", "dev", "lo", "table", Self.table])
    }

    func remove() {
        for fam in ["-4", "-6"] {
            while (try? ip([fam, "rule", "del", "fwmark", Self.mark, "lookup", Self.table])) != nil {}
            _ = try? ip([fam, "route", "flush", "table", Self.table])
        }
    }

    private func ip(_ args: [String]) throws {
        let r = try ChildProcess.run(["ip"] + args)
        if r.status != 0 {
            throw AgentError("ip \(args.joined(separator: " ")): \(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }
}

public struct AgentError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}
