import ArgumentParser
import Foundation
import GRPCCore
import LoupeAPI
import LoupeFlow
import LoupeProcess
import SwiftProtobuf
import Synchronization

/// `loupe observe`: the flow log from the agent's Hubble API (`observer.Observer/GetFlows`), with
/// `hubble observe`'s flags and filters.
struct ObserveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "observe",
        abstract: "Print flows recorded by the agent (like `hubble observe`).")

    enum Output: String, ExpressibleByArgument, CaseIterable { case compact, json, jsonpb, table, dict }

    @OptionGroup var connection: ServerOptions
    @Flag(name: [.short, .long], help: "Keep printing new flows.") var follow = false
    @Option(help: "The newest N matching flows (default 20; 0 with --follow).") var last: UInt64?
    @Option(help: "The oldest N matching flows stored (not with --follow).") var first: UInt64?
    @Flag(help: "Every matching flow stored.") var all = false
    @Option(help: "Flows since this time: RFC 3339 (2026-12-02T15:04:05Z) or a duration ago (5m, 1h30m).") var since: String?
    @Option(help: "Flows until this time: RFC 3339 or a duration ago.") var until: String?
    @Option(name: [.short, .long], help: "Output: compact, dict, json, jsonpb, table.") var output: Output = .compact

    @Option(help: "Flows from or to this namespace.") var namespace: [String] = []
    @Option(help: "Flows from this namespace.") var fromNamespace: [String] = []
    @Option(help: "Flows to this namespace.") var toNamespace: [String] = []
    @Option(help: "Flows from or to this pod ([namespace/]pod-name prefix).") var pod: [String] = []
    @Option(help: "Flows from this pod (the flow's source).") var fromPod: [String] = []
    @Option(help: "Flows to this pod (the flow's destination).") var toPod: [String] = []
    @Option(help: "Flows from or to this IP or CIDR.") var ip: [String] = []
    @Option(help: "Flows from this IP or CIDR.") var fromIp: [String] = []
    @Option(help: "Flows to this IP or CIDR.") var toIp: [String] = []
    @Option(help: "Flows from or to this port.") var port: [String] = []
    @Option(help: "Flows from this port.") var fromPort: [String] = []
    @Option(help: "Flows to this port.") var toPort: [String] = []
    @Option(help: "Flows from or to this DNS name (wildcards: *.example.test).") var fqdn: [String] = []
    @Option(help: "Flows from this DNS name.") var fromFqdn: [String] = []
    @Option(help: "Flows to this DNS name.") var toFqdn: [String] = []
    @Option(help: "Flows from or to endpoints with these labels (a label selector: app=xwing,org in (empire)).") var label: [String] = []
    @Option(help: "Flows from endpoints with these labels.") var fromLabel: [String] = []
    @Option(help: "Flows to endpoints with these labels.") var toLabel: [String] = []
    @Option(help: "Flows from or to this workload ([KIND/]NAME, e.g. Deployment/web).") var workload: [String] = []
    @Option(help: "Flows from this workload ([KIND/]NAME).") var fromWorkload: [String] = []
    @Option(help: "Flows to this workload ([KIND/]NAME).") var toWorkload: [String] = []
    @Option(help: "Flows from or to this security identity.") var identity: [UInt32] = []
    @Option(help: "Flows from this security identity.") var fromIdentity: [UInt32] = []
    @Option(help: "Flows to this security identity.") var toIdentity: [UInt32] = []
    @Option(help: "Protocol: tcp, udp, http, dns, grpc, …") var `protocol`: [String] = []
    @Option(help: "Verdict: FORWARDED, DROPPED, ERROR, AUDIT.") var verdict: [String] = []
    @Option(name: [.short, .customLong("type")], help: "Event type: l7, drop, trace, trace:to-proxy, policy-verdict, … (or a number[:sub-type]).")
    var type: [String] = []
    @Option(help: "Traffic direction: ingress or egress.") var trafficDirection: [String] = []
    @Option(help: "HTTP status code, or a prefix like 5+.") var httpStatus: [String] = []
    @Option(help: "HTTP method.") var httpMethod: [String] = []
    @Option(help: "HTTP path regular expression.") var httpPath: [String] = []
    @Option(help: "HTTP URL regular expression.") var httpUrl: [String] = []
    @Option(help: "Node name pattern (loupe-*).") var nodeName: [String] = []
    @Option(help: "Flow UUID.") var uuid: [String] = []
    @Option(help: "DNS response code: a number or NOERROR, SERVFAIL, NXDOMAIN, REFUSED, … (evaluated by this command).")
    var dnsRcode: [String] = []
    @Option(help: "gRPC status of a response: a number or OK, NOT_FOUND, PERMISSION_DENIED, … (evaluated by this command).")
    var grpcStatus: [String] = []
    @Option(help: "Read flows from this exported file (JSON lines, e.g. the agent's --export-file) instead of the agent; prints all matching unless --last/--first.")
    var file: String?

    /// The flags as the shared query (`ObserveQuery`), so `loupe ui`'s `/api/flows` asks the
    /// same question for the same names.
    var query: ObserveQuery {
        var q = ObserveQuery()
        q.filters = [
            "namespace": namespace, "from-namespace": fromNamespace, "to-namespace": toNamespace,
            "pod": pod, "from-pod": fromPod, "to-pod": toPod, "ip": ip, "from-ip": fromIp, "to-ip": toIp,
            "port": port, "from-port": fromPort, "to-port": toPort, "fqdn": fqdn, "from-fqdn": fromFqdn, "to-fqdn": toFqdn,
            "label": label, "from-label": fromLabel, "to-label": toLabel,
            "identity": identity.map(String.init), "from-identity": fromIdentity.map(String.init), "to-identity": toIdentity.map(String.init),
            "workload": workload, "from-workload": fromWorkload, "to-workload": toWorkload,
            "protocol": `protocol`, "verdict": verdict, "type": type, "traffic-direction": trafficDirection,
            "http-status": httpStatus, "http-method": httpMethod, "http-path": httpPath, "http-url": httpUrl,
            "node-name": nodeName, "uuid": uuid, "dns-rcode": dnsRcode, "grpc-status": grpcStatus,
        ].filter { !$0.value.isEmpty }
        q.follow = follow
        q.last = last
        q.first = first
        q.all = all
        q.since = since
        q.until = until
        return q
    }

    func run() async throws {
        let query = self.query
        let filters: FlowFilterSet
        let extra: FlowFilter // Loupe's own filters Hubble's FlowFilter has no field for
        let request: Observer_GetFlowsRequest
        do {
            extra = try query.clientSideFilter()
            request = try query.request()
            filters = try FlowFilterSet(whitelist: request.whitelist, blacklist: [])
        } catch let e as FlowFilterMatcher.Invalid {
            throw ValidationError(e.description)
        } catch {
            throw ValidationError("\(error)")
        }
        StandardOutput.lineBuffered()
        if output == .table { print(FlowEncoding.tableHeader) }
        if let file { return try printFile(file, filters: filters, extra: extra) }

        let output = self.output
        let extraFilter = extra
        let holds = query.clientSideKeep != nil
        do {
            let options = connection.callOptions
            let lost = try await connection.withClient { client in
                try await Observer_Observer.Client(wrapping: client).getFlows(request, options: options) { response in
                    var lost: UInt64 = 0
                    var held: [FlowRecord] = []
                    for try await message in response.messages {
                        switch message.responseTypes {
                        case .flow(let f)?:
                            let record = FlowRecord(flow: Flow(f))
                            guard extraFilter.matches(record.flow) else { continue }
                            if holds {
                                held.append(record)
                                if query.isComplete(held: held.count) { break }
                            } else {
                                Self.show(record, as: output)
                            }
                        case .lostEvents(let l)?:
                            // The agent dropped flows for this stream (it read too slowly): said where it happened.
                            lost += l.numEventsLost
                            if output == .json || output == .jsonpb {
                                print(FlowEncoding.lostEventsLine(count: l.numEventsLost, nodeName: message.nodeName))
                            } else {
                                print("EVENTS LOST: OBSERVER_EVENTS_QUEUE \(l.numEventsLost)")
                            }
                        case .nodeStatus(let s)?:
                            FileHandle.standardError.write(Data("loupe observe: node status \(s.stateChange): \(s.nodeNames.joined(separator: ", ")) \(s.message)\n".utf8))
                        case nil:
                            break
                        }
                    }
                    for r in query.chosen(from: held) { Self.show(r, as: output) }
                    return lost
                }
            }
            if lost > 0 {
                FileHandle.standardError.write(Data("loupe observe: \(lost) flows were lost for this stream (it read slower than flows arrived)\n".utf8))
            }
        } catch let e as RPCError where e.code == .invalidArgument {
            FileHandle.standardError.write(Data("loupe observe: \(connection.explain(e))\n".utf8))
            throw ExitCode(2)
        } catch {
            FileHandle.standardError.write(Data("loupe observe: \(connection.explain(error))\n".utf8))
            throw ExitCode(1)
        }
    }

    static func show(_ r: FlowRecord, as output: Output) {
        switch output {
        case .json, .jsonpb: print(FlowEncoding.jsonLine(r))
        case .table: print(FlowEncoding.tableRow(r.flow))
        case .compact: print(FlowEncoding.compact(r.flow))
        case .dict:
            if dictBlocks.add(1, ordering: .relaxed).oldValue > 0 { print(FlowEncoding.dictSeparator) }
            print(FlowEncoding.dict(r.flow))
        }
    }

    /// Blocks printed so far with `-o dict` (a separator goes between blocks).
    static let dictBlocks = Atomic<Int>(0)

    /// `--file`: an exported file read offline with the same filters; a line that is not a flow
    /// is named (file:line) and counted, never skipped silently.
    private func printFile(_ path: String, filters: FlowFilterSet, extra: FlowFilter) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            FileHandle.standardError.write(Data("loupe observe: cannot read \(path)\n".utf8))
            throw ExitCode(1)
        }
        var matching: [(String, FlowRecord)] = []
        var bad = 0
        let since = try self.since.map { try ObserveQuery.timestamp($0, name: "--since") }
        let until = try self.until.map { try ObserveQuery.timestamp($0, name: "--until") }
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
            let line = String(line)
            if FlowEncoding.lostEvents(jsonLine: line) != nil { continue }
            do {
                let r = try FlowEncoding.decode(jsonLine: line)
                let m = Flow_Flow(r.flow)
                if let since, (m.time.seconds, m.time.nanos) < (since.seconds, since.nanos) { continue }
                if let until, (m.time.seconds, m.time.nanos) > (until.seconds, until.nanos) { continue }
                if filters.matches(m) && extra.matches(r.flow) { matching.append((line, r)) }
            } catch {
                bad += 1
                FileHandle.standardError.write(Data("loupe observe: \(path):\(i + 1): not a flow record (\(error))\n".utf8))
            }
        }
        let chosen = first.map { Array(matching.prefix(Int($0))) } ?? Array(matching.suffix(last.map(Int.init) ?? matching.count))
        for (line, r) in chosen {
            switch output {
            case .json, .jsonpb: print(line)
            default: Self.show(r, as: output)
            }
        }
        if bad > 0 { throw ExitCode(3) }
    }
}
