import ArgumentParser
import Foundation

/// `loupe status`: the agent's counters (datapath outcomes, proxy connections, flows, lost events).
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show the agent's counters.")

    @Option(help: "Agent socket.") var server: String = defaultServerPath
    @Option(name: [.short, .long], help: "Output: text or json.") var output: String = "text"

    func run() throws {
        var reply: String?
        do {
            try APIClient(path: server).request(["status": [String: Any]()]) { line in
                reply = line
                return false
            }
        } catch {
            FileHandle.standardError.write(Data("loupe status: \(error)\n".utf8))
            throw ExitCode(1)
        }
        guard let reply, let obj = try? JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any] else {
            FileHandle.standardError.write(Data("loupe status: no answer from the agent\n".utf8))
            throw ExitCode(1)
        }
        if output == "json" {
            print(reply)
            return
        }
        print("Node: \(obj["node_name"] ?? "?")")
        for section in ["datapath", "proxy", "splice", "flows", "lost_events"] {
            print("\(section):")
            let values = obj[section] as? [String: Any] ?? [:]
            if values.isEmpty { print("  (none)") }
            for k in values.keys.sorted() { print("  \(k): \(values[k]!)") }
        }
    }
}
