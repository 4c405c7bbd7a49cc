import ArgumentParser
import Foundation
import LoupeProxy

/// `loupe ca init`: the node CA that signs the leaves of HTTPS interception.
struct CACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca", abstract: "The node CA for HTTPS interception.", subcommands: [Init.self])

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the node CA (ca.pem, and ca.key with mode 0600) unless it exists; print how pods trust it.")

        @Option(help: "Directory of ca.pem and ca.key.") var dir: String = defaultCADirectory
        @Option(help: "Node name in the CA's subject.") var nodeName: String = "loupe-node"
        @Flag(help: "Replace an existing CA (leaves signed by the old one stop being trusted).") var force = false

        func run() throws {
            let (certPath, keyPath) = NodeCA.paths(dir)
            let ca: NodeCA
            let existed = FileManager.default.fileExists(atPath: certPath) && !force
            do {
                if existed {
                    ca = try NodeCA.load(directory: dir)
                } else {
                    ca = try NodeCA.create(nodeName: nodeName)
                    try ca.write(directory: dir)
                }
            } catch {
                FileHandle.standardError.write(Data("loupe ca init: \(error)\n".utf8))
                throw ExitCode(1)
            }
            print("\(existed ? "existing" : "created") node CA: \(certPath) (key \(keyPath), mode 0600)")
            print("subject: \(ca.certificate.subject); valid until \(ca.certificate.notValidAfter)")
            print("""
                Pods that opt into interception (<Egress/443/TCP/HTTPS>) must trust this CA:
                  Debian/Ubuntu image: copy \(certPath) to /usr/local/share/ca-certificates/loupe-node-ca.crt
                                       and run update-ca-certificates
                  one client:          curl --cacert \(certPath) …, SSL_CERT_FILE=\(certPath), NODE_EXTRA_CA_CERTS=…
                Anyone with \(keyPath) can impersonate any server to those pods: keep it on the node.
                """)
        }
    }
}

/// Where the agent and `loupe ca init` keep the node CA by default.
let defaultCADirectory = "/etc/loupe/ca"
