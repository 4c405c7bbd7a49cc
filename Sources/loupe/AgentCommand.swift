import ArgumentParser
import Foundation
import Logging
import LoupeAgent
import LoupeProxy
import LoupeFlow
import LoupeLab
import LoupeProcess

/// `loupe agent`: datapath + proxy + local API on this node (or in the lab's node netns).
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "agent", abstract: "Run the node agent.")

    @Flag(help: "Run inside the lab's node netns on the lab's resolved inventory.") var lab = false
    @Option(help: "With --lab: the lab node to run on, in a lab of several nodes (default loupe-node); also the default --node-name, and its Hubble socket is /run/loupe/NODE/hubble.sock, its pins /sys/fs/bpf/NODE.")
    var labNode: String = LabNetwork.nodeNetns
    @Option(help: "Inventory file (Kubernetes YAML) to follow.") var inventory: String?
    @Flag(help: "Follow the Kubernetes API (Namespaces, Pods, CiliumNetworkPolicies) instead of an inventory file: in-cluster (service account) or --kubeconfig.")
    var kubernetes = false
    @Option(help: "With --kubernetes: kubeconfig file (its current context) instead of the in-cluster service account.")
    var kubeconfig: String?
    @Option(help: "With --kubernetes: seconds each watch asks the API server to run before it is re-opened (jittered up to 2×).")
    var kubernetesWatchTimeout: Int = 300
    @Option(help: "Directory of CiliumNetworkPolicy files to enforce (default /etc/loupe/policies; with --lab /run/loupe/lab/policies).")
    var policyDir: String?
    @Option(help: "Compiled tc program (default: bpf/.output/tc_from_pod.bpf.o here or beside the binary, else /usr/lib/loupe/bpf/tc_from_pod.bpf.o).") var bpfObject: String?
    @Option(help: "Transparent proxy port.") var proxyPort: Int = 15001
    @Option(help: "Transparent DNS (UDP) port.") var dnsPort: Int = 15053
    @Option(help: "DNS upstream timeout, milliseconds (then SERVFAIL).") var dnsTimeoutMs: Int = 5000
    @Option(help: "Source address of the proxy's upstream connections: pod (to pods, the client pod's own, IP_TRANSPARENT, the datapath steering replies back on the pods' veths and the node's uplinks; to anything else the node's) or node.")
    var upstreamSource: String = "pod"
    @Option(help: "An uplink of the node, where clients on other nodes come in (local pods' Ingress rules apply) and remote destinations' replies arrive (repeatable; default: every interface a route leaves by, besides the pods' veths and bridges).")
    var uplink: [String] = []
    @Option(help: "Hubble API unix socket (default /var/run/loupe/hubble.sock; with --lab /run/loupe/hubble.sock).")
    var hubbleSocket: String?
    @Option(help: "Hubble API TCP address HOST:PORT (\":4244\" = every address, in the agent's netns); \"none\" turns it off.")
    var hubbleListenAddress: String = ":4244"
    @Option(help: "Hubble API TLS certificate (PEM) for the TCP listener.") var hubbleTlsCertFile: String?
    @Option(help: "Hubble API TLS private key (PEM).") var hubbleTlsKeyFile: String?
    @Option(help: "Hubble API: client certificates must chain to these CAs (PEM; mTLS). Repeatable or comma-separated.")
    var hubbleTlsClientCaFiles: [String] = []
    @Option(help: "This node's name: flows' node_name, and with --kubernetes the pods attached are those with spec.nodeName equal to it (default $NODE_NAME, else loupe-node).")
    var nodeName: String?
    @Option(help: "Proxy event-loop threads (default: one per core).") var threads: Int?
    @Option(help: "Largest HTTP header block accepted, bytes.") var maxHeaderBytes: Int = 64 * 1024
    @Flag(inversion: .prefixedNo, help: "Intercept HTTP/2 (h2c) per stream (flows, policy); --no-intercept-http2 relays it opaque.")
    var interceptHttp2 = true
    @Option(help: "HTTP/2: concurrent streams per connection (beyond: REFUSED_STREAM).") var http2MaxConcurrentStreams: Int = 100
    @Option(help: "HTTP/2: largest header list, bytes (beyond: GOAWAY).") var http2MaxHeaderListBytes: Int = 16 * 1024
    @Option(help: "HTTP/2: HPACK dynamic table size a peer may use, bytes.") var http2HpackTableBytes: Int = 4096
    @Option(help: "HTTP/2: CONTINUATION frames allowed after one HEADERS frame.") var http2MaxContinuationFrames: Int = 5
    @Option(help: "HTTP/2: stream resets a peer may send per 30 s (rapid reset; beyond: GOAWAY).") var http2MaxResets: Int = 200
    @Option(help: "Node CA directory (ca.pem, ca.key; `loupe ca init`) for HTTPS interception (default /etc/loupe/ca; with --lab the lab's).")
    var caDir: String?
    @Option(help: "PEM bundle trusted for HTTPS destinations besides the system trust store.") var upstreamCaBundle: String?
    @Option(help: "HTTPS interception: client connections (offering h2, same source, destination and name) one HTTP/2 connection to the destination carries at most; 1: one upstream connection each.")
    var upstreamSharing: Int = 16
    @Flag(help: "Steer traffic to --proxy-port but run no proxy there (another transparent proxy listens; used by the benchmarks).")
    var datapathOnly = false
    @Flag(inversion: .prefixedNo, help: "Hand opaque connections (raw TCP, TLS after its hello, tunnels) to the kernel's sockmap splice; --no-splice keeps them in the userspace relay.")
    var splice = true
    @Flag(help: "Test switch: refuse every splice as if the kernel had (counted as splice_fallback_injected).")
    var spliceInjectFailure = false
    @Option(help: "Prometheus metrics address HOST:PORT (GET /metrics), in the agent's netns; \"none\" turns them off.")
    var metricsAddress: String = "127.0.0.1:9965"
    @Option(help: "Context labels of the Hubble metrics, comma-separated: source_namespace, source_pod, source_workload, destination_namespace, destination_pod, destination_workload, traffic_direction.")
    var metricsLabelsContext: String = "source_namespace,source_workload,destination_namespace,destination_workload"
    @Option(help: "Export flows to this file as JSON lines (`hubble observe -o json` records).") var exportFile: String?
    @Option(help: "Rotate the export file at this size, MiB.") var exportFileMaxSizeMb: Int = 10
    @Option(help: "Rotated export files kept (FILE.1 is the newest).") var exportFileMaxBackups: Int = 5
    @Option(help: "Export only flows matching this filter, written as `loupe observe` flags (e.g. \"--namespace shop --protocol http\"); repeat to allow several.")
    var exportAllow: [String] = []
    @Option(help: "Never export flows matching this filter (`loupe observe` flags); repeatable.") var exportDeny: [String] = []
    @Flag(help: "Redact URL query values in flows (names kept).") var redactHttpUrlquery = false
    @Flag(inversion: .prefixedNo, help: "Remove user:password@ from URLs in flows.") var redactHttpUserInfo = true
    @Option(help: "Only these HTTP headers keep their values in flows (comma-separated names).") var redactHttpHeadersAllow: String?
    @Option(help: "These HTTP headers' values are redacted in flows, besides Authorization, Proxy-Authorization, Cookie, Set-Cookie (comma-separated).")
    var redactHttpHeadersDeny: String?
    @Option(help: "Flows kept in memory for `loupe observe --last` (Hubble's event buffer; about 1.2 KB each).")
    var eventBufferCapacity: Int = 65_536
    @Option(help: "Benchmark switch: once a follower (`loupe observe -f`) is attached, record this many synthetic HTTP flows through the flow pipeline and log the rate.")
    var syntheticFlows: Int?
    @Option(help: "With --synthetic-flows: flows per second (0 = as fast as the pipeline takes them).") var syntheticFlowRate: Int = 0
    @Option(help: "With --synthetic-flows: spread them over this many made-up workloads (50 per namespace) instead of two pods.")
    var syntheticWorkloads: Int = 0
    @Option(help: "With --synthetic-workloads: this many distinct client → server pairs.") var syntheticEdges: Int = 0
    @Flag(help: "Log at debug level.") var debug = false

    func run() async throws {
        try requireRoot()
        if lab && !inNetns(labNode) {
            // Re-enter ourselves in the node netns before any thread exists: every socket,
            // netlink call and tc attachment of the agent then happens there.
            guard labNode.hasPrefix(LabNetwork.nodeNamePrefix), FileManager.default.fileExists(atPath: "/var/run/netns/\(labNode)") else {
                let what = labNode == LabNetwork.nodeNetns ? "the lab is not up (run `loupe lab up -f FILE`)" : "no lab node \(labNode) (see `v1 Node` in the lab's inventory)"
                FileHandle.standardError.write(Data("loupe agent --lab: \(what)\n".utf8))
                throw ExitCode(1)
            }
            var argv = ["nsenter", "--net=/var/run/netns/\(labNode)", "--", selfExecutable()]
            argv += Array(CommandLine.arguments.dropFirst())
            execvpOrFail(argv)
        }
        raiseFileLimit()
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = debug ? .debug : .info
            return h
        }
        var cfg = AgentConfiguration()
        cfg.inventoryPath = inventory ?? LabNetwork.resolvedInventoryPath
        cfg.bpfObjectPath = bpfObject ?? defaultBPFObject()
        cfg.policyDirectory = policyDir ?? (lab ? PolicyCommand.labDirectory : cfg.policyDirectory)
        cfg.hubble.socketPath = hubbleSocket ?? (lab ? LabNetwork.hubbleSocket(node: labNode) : "/var/run/loupe/hubble.sock")
        if lab { cfg.pinRoot = LabNetwork.pinRoot(node: labNode) }
        cfg.hubble.tlsCertFile = hubbleTlsCertFile
        cfg.hubble.tlsKeyFile = hubbleTlsKeyFile
        cfg.hubble.tlsClientCAFiles = hubbleTlsClientCaFiles.flatMap { $0.split(separator: ",").map(String.init) }
        cfg.proxy.port = proxyPort
        cfg.proxy.dnsPort = dnsPort
        cfg.proxy.dnsTimeoutMilliseconds = dnsTimeoutMs
        guard let source = UpstreamSource(rawValue: upstreamSource) else {
            FileHandle.standardError.write(Data("loupe agent: --upstream-source \"\(upstreamSource)\": expected pod or node\n".utf8))
            throw ExitCode(2)
        }
        cfg.proxy.upstreamSource = source
        cfg.uplinks = uplink
        cfg.proxy.nodeName = nodeName ?? (lab ? labNode : ProcessInfo.processInfo.environment["NODE_NAME"].flatMap { $0.isEmpty ? nil : $0 } ?? "loupe-node")
        if let threads { cfg.proxy.threads = threads }
        cfg.proxy.maxHeaderBytes = maxHeaderBytes
        cfg.proxy.interceptHTTP2 = interceptHttp2
        cfg.datapathOnly = datapathOnly
        cfg.proxy.splice = splice
        cfg.proxy.redaction.urlQuery = redactHttpUrlquery
        cfg.proxy.redaction.userInfo = redactHttpUserInfo
        func names(_ list: String?) -> Set<String> {
            Set((list ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.filter { !$0.isEmpty })
        }
        cfg.proxy.redaction.headersAllow = names(redactHttpHeadersAllow)
        cfg.proxy.redaction.headersDeny.formUnion(names(redactHttpHeadersDeny))
        do {
            cfg.metricsAddress = try Self.parseAddress(metricsAddress, flag: "--metrics-address")
            cfg.hubble.listenAddress = try Self.parseAddress(hubbleListenAddress, flag: "--hubble-listen-address", emptyHost: "")
            if (hubbleTlsCertFile == nil) != (hubbleTlsKeyFile == nil) {
                throw ValidationError("--hubble-tls-cert-file and --hubble-tls-key-file go together")
            }
            if hubbleTlsCertFile == nil && !cfg.hubble.tlsClientCAFiles.isEmpty {
                throw ValidationError("--hubble-tls-client-ca-files needs --hubble-tls-cert-file and --hubble-tls-key-file")
            }
            cfg.metricsContext = try MetricsContext.parse(metricsLabelsContext)
            if let exportFile {
                guard exportFileMaxSizeMb > 0, exportFileMaxBackups >= 0 else {
                    throw ValidationError("--export-file-max-size-mb must be > 0 and --export-file-max-backups >= 0")
                }
                var export = FlowExportConfiguration(path: exportFile)
                export.maxSizeBytes = exportFileMaxSizeMb << 20
                export.maxBackups = exportFileMaxBackups
                export.allow = try exportAllow.map { try FlowFilter(flags: $0) }
                export.deny = try exportDeny.map { try FlowFilter(flags: $0) }
                cfg.flowExport = export
            }
        } catch {
            FileHandle.standardError.write(Data("loupe agent: \(error)\n".utf8))
            throw ExitCode(2)
        }
        if kubernetes {
            do {
                let config = try kubeconfig.map { try KubeConfig.load(file: $0) } ?? KubeConfig.inCluster()
                var k8s = KubernetesConfiguration(config: config)
                guard kubernetesWatchTimeout > 0 else { throw ValidationError("--kubernetes-watch-timeout must be > 0") }
                k8s.timing.watchTimeoutSeconds = kubernetesWatchTimeout
                cfg.kubernetes = k8s
            } catch {
                FileHandle.standardError.write(Data("loupe agent: \(error)\n".utf8))
                throw ExitCode(2)
            }
        } else if kubeconfig != nil {
            FileHandle.standardError.write(Data("loupe agent: --kubeconfig needs --kubernetes\n".utf8))
            throw ExitCode(2)
        }
        cfg.proxy.spliceInjectFailure = spliceInjectFailure
        guard eventBufferCapacity > 0 else {
            FileHandle.standardError.write(Data("loupe agent: --event-buffer-capacity must be > 0\n".utf8))
            throw ExitCode(2)
        }
        cfg.flowCapacity = eventBufferCapacity
        if let syntheticFlows {
            guard syntheticFlows > 0, syntheticFlowRate >= 0 else {
                FileHandle.standardError.write(Data("loupe agent: --synthetic-flows must be > 0 and --synthetic-flow-rate >= 0\n".utf8))
                throw ExitCode(2)
            }
            var synthetic = SyntheticFlowConfiguration(count: syntheticFlows)
            synthetic.rate = syntheticFlowRate
            synthetic.workloads = syntheticWorkloads
            synthetic.edges = syntheticEdges > 0 ? syntheticEdges : syntheticWorkloads
            cfg.syntheticFlows = synthetic
        }
        cfg.proxy.caDirectory = caDir ?? (lab ? LabNetwork.caDirectory : defaultCADirectory)
        cfg.proxy.upstreamCABundle = upstreamCaBundle
        guard upstreamSharing >= 1 else {
            FileHandle.standardError.write(Data("loupe agent: --upstream-sharing must be at least 1 (got \(upstreamSharing))\n".utf8))
            throw ExitCode(2)
        }
        cfg.proxy.upstreamSharing = upstreamSharing
        cfg.proxy.http2.maxConcurrentStreams = http2MaxConcurrentStreams
        cfg.proxy.http2.maxHeaderListBytes = http2MaxHeaderListBytes
        cfg.proxy.http2.hpackTableBytes = http2HpackTableBytes
        cfg.proxy.http2.maxContinuationFrames = http2MaxContinuationFrames
        cfg.proxy.http2.maxResetsPerWindow = http2MaxResets
        let logger = Logger(label: "loupe.agent")
        Allocator.purgeInBackground()
        do {
            try await Agent(configuration: cfg, logger: logger).run()
        } catch {
            logger.error("agent stopped: \(error)")
            throw ExitCode(1)
        }
    }

    /// `HOST:PORT`, `[V6]:PORT` or `:PORT` (host `emptyHost`); `none` → nil.
    static func parseAddress(_ text: String, flag: String, emptyHost: String = "0.0.0.0") throws -> (host: String, port: Int)? {
        if text == "none" { return nil }
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
            throw ValidationError("\(flag) \"\(text)\": expected HOST:PORT (e.g. 127.0.0.1:9965), :PORT or none")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host.isEmpty ? emptyHost : host, port)
    }

    /// Two sockets per proxied connection: the default soft limit (1024) would cap the proxy at
    /// ~500 connections, so raise it to the hard limit.
    private func raiseFileLimit() {
        var rl = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl) == 0, rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl)
        }
    }

    private func inNetns(_ name: String) -> Bool {
        var a = stat(), b = stat()
        guard stat("/proc/self/ns/net", &a) == 0, stat("/var/run/netns/\(name)", &b) == 0 else { return false }
        return a.st_ino == b.st_ino && a.st_dev == b.st_dev
    }

    private func selfExecutable() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    /// `LOUPE_BPF_OBJECT`, else `bpf/.output/` in the current directory, else beside the checkout
    /// the binary was built in (`.build/<config>/loupe` → `bpf/.output/`).
    private func defaultBPFObject() -> String {
        if let env = ProcessInfo.processInfo.environment["LOUPE_BPF_OBJECT"] { return env }
        let rel = "bpf/.output/tc_from_pod.bpf.o"
        if FileManager.default.fileExists(atPath: rel) { return rel }
        var dir = URL(fileURLWithPath: selfExecutable()).deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent(rel).path
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        // Where the image puts it (deploy/image).
        let installed = "/usr/lib/loupe/bpf/tc_from_pod.bpf.o"
        return FileManager.default.fileExists(atPath: installed) ? installed : rel
    }
}
