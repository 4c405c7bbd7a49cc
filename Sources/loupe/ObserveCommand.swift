import ArgumentParser
import Foundation
import LoupeFlow
import LoupeProcess

/// `loupe observe`: the flow log, with `hubble observe`'s flags.
struct ObserveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "observe",
        abstract: "Print flows recorded by the agent (like `hubble observe`).")

    enum Output: String, ExpressibleByArgument, CaseIterable { case compact, json, jsonpb, table, dict }

    @Flag(name: [.short, .long], help: "Keep printing new flows.") var follow = false
    @Option(help: "Print the last N matching flows first (default 20; 0 with --follow).") var last: Int?
    @Option(name: [.short, .long], help: "Output: compact, json, table.") var output: Output = .compact
    @Option(help: "Agent socket.") var server: String = defaultServerPath
    @Option(help: "Flows from or to this namespace.") var namespace: [String] = []
    @Option(help: "Flows from or to this pod ([namespace/]pod-name prefix).") var pod: [String] = []
    @Option(help: "Flows from this pod (the client).") var fromPod: [String] = []
    @Option(help: "Flows to this pod (the server).") var toPod: [String] = []
    @Option(help: "Protocol: http, grpc, dns, tcp, udp.") var `protocol`: [String] = []
    @Option(help: "Verdict: FORWARDED, DROPPED, ERROR, AUDIT.") var verdict: [String] = []
    @Option(help: "HTTP status code, or a prefix like 5+.") var httpStatus: [String] = []
    @Option(help: "HTTP method.") var httpMethod: [String] = []
    @Option(help: "HTTP path regular expression.") var httpPath: [String] = []
    @Option(help: "DNS response code: a number or NOERROR, SERVFAIL, NXDOMAIN, REFUSED, …") var dnsRcode: [String] = []

    @Option(help: "gRPC status of a response: a number or OK, NOT_FOUND, PERMISSION_DENIED, …") var grpcStatus: [String] = []
    @Option(help: "Read flows from this exported file (JSON lines, e.g. the agent's --export-file) instead of the agent; prints all matching unless --last.")
    var file: String?

    func run() throws {
        var filter = FlowFilter()
        filter.namespaces = namespace
        filter.pods = pod
        filter.fromPods = fromPod
        filter.toPods = toPod
        filter.protocols = `protocol`
        filter.httpStatuses = httpStatus
        filter.httpMethods = httpMethod
        filter.httpPaths = httpPath
        filter.dnsRCodes = dnsRcode
        filter.grpcStatuses = grpcStatus
        do {
            filter.verdicts = try FlowFilter(dictionary: verdict.isEmpty ? [:] : ["verdict": verdict]).verdicts
            try filter.prepare()
        } catch {
            throw ValidationError("\(error)")
        }
        let request: [String: Any] = ["flows": ["last": last ?? (follow ? 0 : 20), "follow": follow, "filter": filter.asDictionary]]
        if output == .table { print(FlowEncoding.tableHeader) }
        StandardOutput.lineBuffered()
        var failure: String?
        var undecodable = 0
        var lost: UInt64 = 0
        if let file { return try printFile(file, filter: filter) }
        do {
            try APIClient(path: server).request(request) { line in
                if line.hasPrefix("{\"error\"") {
                    failure = line
                    return false
                }
                if let n = FlowEncoding.lostEvents(jsonLine: line) {
                    // The agent dropped flows for this stream (it read too slowly): said where it happened.
                    lost += n
                    if output == .json || output == .jsonpb { print(line) } else { print("EVENTS LOST: OBSERVER_EVENTS_QUEUE \(n)") }
                    return true
                }
                if output == .json || output == .jsonpb {
                    print(line)
                    return true
                }
                do {
                    let r = try FlowEncoding.decode(jsonLine: line)
                    print(output == .table ? FlowEncoding.tableRow(r.flow) : FlowEncoding.compact(r.flow))
                } catch {
                    // Never drop a flow silently: say which line could not be shown.
                    undecodable += 1
                    FileHandle.standardError.write(Data("loupe observe: cannot decode flow line (\(error)): \(line.prefix(200))\n".utf8))
                }
                return true
            }
        } catch {
            FileHandle.standardError.write(Data("loupe observe: \(error)\n".utf8))
            throw ExitCode(1)
        }
        if lost > 0 {
            FileHandle.standardError.write(Data("loupe observe: \(lost) flows were lost for this stream (it read slower than flows arrived)\n".utf8))
        }
        if undecodable > 0 {
            FileHandle.standardError.write(Data("loupe observe: \(undecodable) flows could not be decoded\n".utf8))
            throw ExitCode(3)
        }
        if let failure {
            FileHandle.standardError.write(Data("loupe observe: agent refused the request: \(failure)\n".utf8))
            throw ExitCode(2)
        }
    }

    /// `--file`: an exported file read offline with the same filters; a line that is not a flow
    /// is named (file:line) and counted, never skipped silently.
    private func printFile(_ path: String, filter: FlowFilter) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            FileHandle.standardError.write(Data("loupe observe: cannot read \(path)\n".utf8))
            throw ExitCode(1)
        }
        var matching: [(String, FlowRecord)] = []
        var bad = 0
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
            let line = String(line)
            if FlowEncoding.lostEvents(jsonLine: line) != nil { continue }
            do {
                let r = try FlowEncoding.decode(jsonLine: line)
                if filter.matches(r.flow) { matching.append((line, r)) }
            } catch {
                bad += 1
                FileHandle.standardError.write(Data("loupe observe: \(path):\(i + 1): not a flow record (\(error))\n".utf8))
            }
        }
        for (line, r) in matching.suffix(last ?? matching.count) {
            switch output {
            case .json, .jsonpb: print(line)
            case .table: print(FlowEncoding.tableRow(r.flow))
            default: print(FlowEncoding.compact(r.flow))
            }
        }
        if bad > 0 { throw ExitCode(3) }
    }
}
