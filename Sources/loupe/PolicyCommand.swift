import ArgumentParser
import Foundation
import LoupeLab
import LoupePolicy

/// `loupe policy validate|apply|delete`: CiliumNetworkPolicy files for the agent's policy directory.
struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Check and install CiliumNetworkPolicy files.",
        subcommands: [Validate.self, Apply.self, Delete.self])

    /// The lab agent's policy directory (the agent's `--policy-dir` default with `--lab`).
    static let labDirectory = LabNetwork.stateDirectory + "/policies"

    struct Validate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a one-line summary per policy, or every error with file, line and field (exit 1).")
        @Argument(help: "Policy files.") var files: [String]

        func run() throws {
            var failed = false
            for file in files {
                guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                    FileHandle.standardError.write(Data("\(file): cannot read\n".utf8))
                    failed = true
                    continue
                }
                let r = PolicyParser.parse(text, file: file)
                for e in r.errors { FileHandle.standardError.write(Data("\(e)\n".utf8)) }
                failed = failed || !r.errors.isEmpty
                for p in r.policies { print(PolicyCommand.summary(p)) }
            }
            if failed { throw ExitCode(1) }
        }
    }

    struct Apply: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate FILE and copy it into the policy directory (the agent picks it up within a second).")
        @Option(name: [.short, .customLong("file")], help: "Policy file.") var file: String
        @Option(help: "The agent's policy directory.") var policyDir: String = PolicyCommand.labDirectory

        func run() throws {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ValidationError("\(file): cannot read")
            }
            let r = PolicyParser.parse(text, file: file)
            if !r.errors.isEmpty {
                for e in r.errors { FileHandle.standardError.write(Data("\(e)\n".utf8)) }
                throw ExitCode(1)
            }
            try FileManager.default.createDirectory(atPath: policyDir, withIntermediateDirectories: true)
            let target = policyDir + "/" + URL(fileURLWithPath: file).lastPathComponent
            let tmp = policyDir + "/.tmp-" + URL(fileURLWithPath: file).lastPathComponent
            try text.write(toFile: tmp, atomically: false, encoding: .utf8)
            guard rename(tmp, target) == 0 else { throw ValidationError("cannot write \(target)") }
            for p in r.policies { print("applied: \(PolicyCommand.summary(p))") }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a file from the policy directory.")
        @Argument(help: "File name in the policy directory.") var name: String
        @Option(help: "The agent's policy directory.") var policyDir: String = PolicyCommand.labDirectory

        func run() throws {
            let target = policyDir + "/" + URL(fileURLWithPath: name).lastPathComponent
            guard unlink(target) == 0 else { throw ValidationError("cannot remove \(target): \(String(cString: strerror(errno)))") }
            print("deleted: \(target)")
        }
    }

    /// `default/rule1 (CiliumNetworkPolicy): 1 rule; selects {class=deathstar,org=empire}; ingress 80/TCP: 1 HTTP rule`
    static func summary(_ p: CiliumNetworkPolicy) -> String {
        let kind = p.isClusterwide ? "CiliumClusterwideNetworkPolicy" : "CiliumNetworkPolicy"
        let name = p.namespace.map { "\($0)/\(p.name)" } ?? p.name
        var parts: [String] = []
        for r in p.rules {
            let sel = r.endpointSelector.matchLabels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            var d = "selects {\(sel.joined(separator: ","))\(r.endpointSelector.matchExpressions.isEmpty ? "" : " +\(r.endpointSelector.matchExpressions.count) expressions")}"
            for (dir, prs) in [("ingress", r.ingress), ("egress", r.egress)] {
                guard let prs else { continue }
                let ports = prs.flatMap { $0.toPorts ?? [] }
                let l7 = ports.reduce(0) { $0 + ($1.http?.count ?? 0) }
                let portList = ports.flatMap(\.ports).map { "\($0.port == 0 ? "*" : String($0.port))/\($0.l4.rawValue)" }
                d += "; \(dir) \(prs.count) rule\(prs.count == 1 ? "" : "s")"
                if !portList.isEmpty { d += " on \(portList.joined(separator: ","))" }
                if l7 > 0 { d += " with \(l7) HTTP rule\(l7 == 1 ? "" : "s")" }
            }
            parts.append(d)
        }
        return "\(name) (\(kind)): " + parts.joined(separator: " | ")
    }
}
