import ArgumentParser
import Foundation
import GRPCCore
import LoupeAPI

/// `loupe status`: the agent's counters (datapath outcomes, proxy connections, flows, lost
/// events), from `loupe.v1.Agent/Status` on the agent's Hubble API.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show the agent's counters.")

    @OptionGroup var connection: ServerOptions
    @Option(name: [.short, .long], help: "Output: text or json.") var output: String = "text"

    func run() async throws {
        let reply: Loupe_V1_StatusResponse
        do {
            let options = connection.unaryOptions
            reply = try await connection.withClient { client in
                try await Loupe_V1_Agent.Client(wrapping: client).status(.init(), options: options)
            }
        } catch {
            FileHandle.standardError.write(Data("loupe status: \(connection.explain(error))\n".utf8))
            throw ExitCode(1)
        }
        // The JSON shape `loupe status -o json` has always printed.
        let obj: [String: Any] = [
            "node_name": reply.nodeName,
            "version": reply.version,
            "uptime_ns": reply.uptimeNs,
            "datapath": reply.datapath,
            "proxy": reply.proxy,
            "splice": reply.splice,
            "flows": ["total": reply.flows.total, "capacity": reply.flows.capacity, "subscribers": reply.flows.subscribers],
            "lost_events": reply.lostEvents,
            "source": reply.source,
            "endpoints": reply.endpoints.map { e -> [String: Any] in
                var d: [String: Any] = ["pod": e.pod, "shape": e.shape]
                if !e.interface.isEmpty { d["interface"] = e.interface }
                if !e.problem.isEmpty { d["problem"] = e.problem }
                return d
            },
            "kubernetes": reply.kubernetes.mapValues { r -> [String: Any] in
                ["synced": r.synced, "absent": r.absent, "objects": r.objects, "resource_version": r.resourceVersion,
                 "watch_errors": r.watchErrors, "relists": r.relists, "last_error": r.lastError]
            },
            "rejected_policies": reply.rejectedPolicies,
        ]
        if output == "json" {
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        print("Node: \(reply.nodeName) (Loupe \(reply.version)); pods from \(reply.source)")
        if !reply.kubernetes.isEmpty {
            print("kubernetes:")
            for (name, r) in reply.kubernetes.sorted(by: { $0.key < $1.key }) {
                let state = r.absent ? "not served (CRD absent)" : r.synced ? "synced" : "NOT SYNCED (last good state in force)"
                print("  \(name): \(state), \(r.objects) objects at \(r.resourceVersion), \(r.watchErrors) watch errors"
                      + (r.lastError.isEmpty ? "" : "; last error: \(r.lastError)"))
            }
        }
        for r in reply.rejectedPolicies { print("policy rejected: \(r)") }
        print("endpoints:")
        if reply.endpoints.isEmpty { print("  (none)") }
        for e in reply.endpoints {
            print("  \(e.pod): " + (e.interface.isEmpty ? "" : "\(e.interface) ") + e.shape + (e.problem.isEmpty ? "" : " — \(e.problem)"))
        }
        for section in ["datapath", "proxy", "splice", "flows", "lost_events"] {
            print("\(section):")
            let values = obj[section] as? [String: Any] ?? [:]
            if values.isEmpty { print("  (none)") }
            for k in values.keys.sorted() { print("  \(k): \(values[k]!)") }
        }
    }
}
