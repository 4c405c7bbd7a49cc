import ArgumentParser
import Foundation
import Logging
import LoupeAPI
import LoupeProcess
import LoupeUI
import NIOSSL
import ServiceLifecycle

/// `loupe ui`: a service map and a live flow table over any Hubble API (a Loupe agent, Hubble
/// Relay, a Cilium agent), aggregated on the server and served to a browser.
struct UICommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ui",
        abstract: "Serve a service map and live flow table of every namespace (a Hubble API client: Loupe, Relay or Cilium).")

    @OptionGroup var connection: ServerOptions
    @Option(help: "Address to serve the page on: HOST:PORT or [V6]:PORT (anything but loopback needs --auth-token-file or --listen-tls-*).")
    var listen: String = "127.0.0.1:12000"
    @Option(help: "File holding the token every request must carry (Authorization: Bearer, or the cookie set by /?token=…).")
    var authTokenFile: String?
    @Option(help: "Serve HTTPS: certificate chain (PEM).") var listenTlsCertFile: String?
    @Option(help: "Serve HTTPS: private key (PEM).") var listenTlsKeyFile: String?
    @Option(help: "Flows to read from the server's history at start (Hubble UI reads 10000).") var history: UInt64 = 10_000

    func run() async throws {
        var cfg = UIConfiguration()
        cfg.history = history
        do {
            (cfg.host, cfg.port) = try Self.hostPort(listen)
            if let file = authTokenFile {
                guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw ValidationError("--auth-token-file \(file): cannot read it") }
                let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
                guard token.count >= 16, !token.contains(where: { $0.isWhitespace || $0 == ";" || $0 == "," }) else {
                    throw ValidationError("--auth-token-file \(file): the token must be at least 16 characters, without spaces, ';' or ','")
                }
                cfg.authToken = token
            }
            switch (listenTlsCertFile, listenTlsKeyFile) {
            case (nil, nil): break
            case let (cert?, key?):
                do {
                    cfg.tls = TLSConfiguration.makeServerConfiguration(
                        certificateChain: try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) },
                        privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
                } catch {
                    throw ValidationError("--listen-tls-cert-file/--listen-tls-key-file: \(error)")
                }
            default: throw ValidationError("--listen-tls-cert-file and --listen-tls-key-file go together")
            }
            if !UIConfiguration.isLoopback(cfg.host) && cfg.authToken == nil && cfg.tls == nil {
                throw ValidationError("--listen \(listen) is not a loopback address: anyone who reaches it would read every flow; pass --auth-token-file FILE or --listen-tls-cert-file/--listen-tls-key-file")
            }
            _ = try connection.target()
        }

        StandardOutput.lineBuffered()
        var logger = Logger(label: "loupe-ui")
        logger.logLevel = .info
        let connection = self.connection
        let endpoint = HubbleEndpoint(name: connection.server, makeTransport: { try connection.makeTransport() })
        // A server that answers but is not a Hubble API is a mistake to report now; one that is
        // not there yet is waited for (the page says so).
        do {
            try await endpoint.probe()
        } catch {
            let problem = HubbleEndpoint.problem(error, server: connection.server)
            if problem.notHubble {
                FileHandle.standardError.write(Data("loupe ui: \(problem.message)\n".utf8))
                throw ExitCode(1)
            }
            logger.warning("\(problem.message); serving the page anyway and retrying")
        }

        let follower = FlowFollower(endpoint: endpoint, history: cfg.history, logger: logger)
        let scheme = cfg.tls == nil ? "http" : "https"
        let token = cfg.authToken
        let app = try UIServer.application(configuration: cfg, follower: follower, endpoint: endpoint, logger: logger) { address in
            var url = "\(scheme)://\(address)/"
            if let token { url += "?token=\(token)" }
            print("loupe ui: \(url) (flows from \(connection.server))")
        }
        // Shutdown runs in reverse: the follower stops first and ends the live streams, then the
        // web server drains.
        let group = ServiceGroup(configuration: .init(services: [app, follower], gracefulShutdownSignals: [.sigterm, .sigint],
                                                      logger: logger))
        try await group.run()
    }

    /// `HOST:PORT`, `[V6]:PORT` (port 0: any free port).
    static func hostPort(_ text: String) throws -> (String, Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("--listen \"\(text)\": expected HOST:PORT or [V6]:PORT")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw ValidationError("--listen \"\(text)\": the host is missing") }
        return (host, port)
    }
}
