import ArgumentParser
import Foundation
import LoupeBPF
import LoupeLab
import LoupeProcess
import LoupeProxy

/// `loupe lab up|down|exec`: the netns lab that stands in for a node with pods.
struct LabCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab", abstract: "Build, enter and remove the netns lab.",
        subcommands: [Up.self, Down.self, Exec.self])

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create (or update) the lab from an inventory file.")
        @Option(name: [.short, .customLong("file")], help: "Inventory: v1 Namespace, v1 Pod, loupe.io/v1alpha1 LabHost.")
        var file: String
        @Option(help: "The node's CNI shape: routed (a veth and a host route per pod, as Cilium, Calico, ptp) or bridged (pod veths on a cni0 bridge, as flannel). A lab of the other shape is rebuilt.")
        var cni: String = LabCNI.routed.rawValue

        func run() throws {
            try requireRoot()
            guard let shape = LabCNI(rawValue: cni) else {
                throw ValidationError("--cni \"\(cni)\": expected routed or bridged")
            }
            do {
                try Lab(cni: shape).up(file: file, prepare: LabTrust.ensure)
            } catch {
                FileHandle.standardError.write(Data("loupe lab up: \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
    }

    struct Down: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop the lab's processes and remove everything it made.")
        func run() throws {
            try requireRoot()
            try Lab().down()
            // The lab's agent pins its maps here; a crashed agent leaves them behind.
            BPFFilesystem.removePins(in: Datapath.defaultPinRoot)
            // And the other nodes' agents here (a lab of several nodes).
            for dir in (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/bpf")) ?? [] where dir.hasPrefix(LabNetwork.nodeNamePrefix) {
                BPFFilesystem.removePins(in: "/sys/fs/bpf/" + dir)
            }
        }
    }

    struct Exec: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a command inside a pod's netns (NAMESPACE/POD), a node's (`node`: the first; `node:NAME`) or the world's.")
        @Argument(help: "NAMESPACE/POD, node, node:NAME or world.") var target: String
        @Argument(parsing: .captureForPassthrough, help: "The command (after --).") var command: [String] = []

        func run() throws {
            var cmd = command
            if cmd.first == "--" { cmd.removeFirst() }
            guard !cmd.isEmpty else { throw ValidationError("missing command: loupe lab exec \(target) -- CMD…") }
            let argv: [String]
            do { argv = try Lab().execArgv(target: target, command: cmd) } catch {
                FileHandle.standardError.write(Data("loupe lab exec: \(error)\n".utf8))
                throw ExitCode(1)
            }
            execvpOrFail(argv)
        }
    }
}

func requireRoot() throws {
    if geteuid() != 0 {
        FileHandle.standardError.write(Data("loupe: this command needs root (network namespaces, BPF)\n".utf8))
        throw ExitCode(1)
    }
}

/// Replaces this process with `argv` (`ChildProcess.exec`: signal mask emptied, ignored signals
/// reset — the async command's thread would otherwise hand its blocked signals on).
func execvpOrFail(_ argv: [String]) -> Never {
    do {
        try ChildProcess.exec(argv)
    } catch {
        FileHandle.standardError.write(Data("loupe: \(error)\n".utf8))
        exit(127)
    }
}

/// The lab's node CA: made by `loupe lab up` when missing (and removed by `lab down` with the
/// rest of the lab's state), with the trust bundle pods that opt into HTTPS interception get.
enum LabTrust {
    static let systemBundle = "/etc/ssl/certs/ca-certificates.crt"

    static func ensure() throws {
        let dir = LabNetwork.caDirectory
        if !FileManager.default.fileExists(atPath: NodeCA.paths(dir).certificate) {
            try NodeCA.create(nodeName: "loupe-node").write(directory: dir)
        }
        let system = (try? String(contentsOfFile: systemBundle, encoding: .utf8)) ?? ""
        let ca = try String(contentsOfFile: NodeCA.paths(dir).certificate, encoding: .utf8)
        try (system + (system.hasSuffix("\n") || system.isEmpty ? "" : "\n") + ca)
            // Not `atomically`: Foundation on Linux leaves its TemporaryDirectory.* behind in /tmp.
            .write(toFile: LabNetwork.trustBundle, atomically: false, encoding: .utf8)
    }
}
