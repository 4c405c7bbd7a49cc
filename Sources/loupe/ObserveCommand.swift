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

    func run() async throws {
        let whitelist: [Flow_FlowFilter]
        let filters: FlowFilterSet
        var extra = FlowFilter() // Loupe's own filters Hubble's FlowFilter has no field for
        extra.dnsRCodes = dnsRcode
        extra.grpcStatuses = grpcStatus
        let request: Observer_GetFlowsRequest
        do {
            try extra.prepare()
            whitelist = try buildWhitelist()
            filters = try FlowFilterSet(whitelist: whitelist, blacklist: [])
            request = try buildRequest(whitelist: whitelist, clientSideFilters: !dnsRcode.isEmpty || !grpcStatus.isEmpty)
        } catch let e as FlowFilterMatcher.Invalid {
            throw ValidationError(e.description)
        } catch let e as ValidationError {
            throw e
        } catch {
            throw ValidationError("\(error)")
        }
        StandardOutput.lineBuffered()
        if output == .table { print(FlowEncoding.tableHeader) }
        if let file { return try printFile(file, filters: filters, extra: extra) }

        let output = self.output
        let extraFilter = extra
        let clientSide = !dnsRcode.isEmpty || !grpcStatus.isEmpty
        let keep: Int? = clientSide && !follow ? (first.map(Int.init) ?? (all || since != nil || until != nil ? nil : Int(last ?? 20))) : nil
        let fromOldest = first != nil
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
                            if keep != nil {
                                held.append(record)
                                if fromOldest, let keep, held.count >= keep { break }
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
                    if let keep {
                        for r in (fromOldest ? Array(held.prefix(keep)) : Array(held.suffix(keep))) { Self.show(r, as: output) }
                    } else if !held.isEmpty {
                        for r in held { Self.show(r, as: output) }
                    }
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

    func buildRequest(whitelist: [Flow_FlowFilter], clientSideFilters: Bool) throws -> Observer_GetFlowsRequest {
        if first != nil && follow { throw ValidationError("--first cannot be combined with --follow") }
        if first != nil && last != nil { throw ValidationError("--first and --last go one at a time") }
        var r = Observer_GetFlowsRequest()
        r.follow = follow
        r.whitelist = whitelist
        if let since { r.since = try Self.timestamp(since, flag: "--since") }
        if let until { r.until = try Self.timestamp(until, flag: "--until") }
        if let first {
            r.first = true
            r.number = clientSideFilters ? 0 : first
        } else if all {
            r.number = UInt64.max
        } else if let last {
            r.number = clientSideFilters && !follow ? 0 : last
        } else if !follow && since == nil && until == nil {
            r.number = clientSideFilters ? 0 : 20
        }
        return r
    }

    /// Hubble's CLI shape: the either-side flags (--pod, --ip, …) make two filters, one with them
    /// as the source and one as the destination; --from-*/--to-* and the rest go into both.
    func buildWhitelist() throws -> [Flow_FlowFilter] {
        var base = Flow_FlowFilter()
        func pods(_ pods: [String], _ namespaces: [String]) -> [String] {
            if pods.isEmpty { return namespaces.map { "\($0)/" } }
            if namespaces.isEmpty { return pods }
            return pods.flatMap { p in p.contains("/") ? [p] : namespaces.map { "\($0)/\(p)" } }
        }
        let from = Endpoints(pods: pods(fromPod, fromNamespace), ips: fromIp, ports: fromPort, fqdns: fromFqdn,
                             labels: fromLabel, identities: fromIdentity)
        let to = Endpoints(pods: pods(toPod, toNamespace), ips: toIp, ports: toPort, fqdns: toFqdn,
                           labels: toLabel, identities: toIdentity)
        from.add(asSource: true, to: &base)
        to.add(asSource: false, to: &base)
        base.protocol = `protocol`
        base.verdict = try verdict.map { v in
            guard let x = Flow_Verdict.named(v.uppercased()) else {
                throw ValidationError("--verdict \"\(v)\": expected FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED or TRANSLATED")
            }
            return x
        }
        base.eventType = try type.map(Self.eventType)
        base.trafficDirection = try trafficDirection.map { d in
            switch d.lowercased() {
            case "ingress": return .ingress
            case "egress": return .egress
            default: throw ValidationError("--traffic-direction \"\(d)\": expected ingress or egress")
            }
        }
        base.httpStatusCode = httpStatus
        base.httpMethod = httpMethod
        base.httpPath = httpPath
        base.httpURL = httpUrl
        base.nodeName = nodeName
        base.uuid = uuid

        let either = Endpoints(pods: pods(pod, namespace), ips: ip, ports: port, fqdns: fqdn, labels: label, identities: identity)
        if either.isEmpty { return base == Flow_FlowFilter() ? [] : [base] }
        var a = base, b = base
        either.add(asSource: true, to: &a)
        either.add(asSource: false, to: &b)
        return [a, b]
    }

    /// The endpoint selectors of one side (--from-*, --to-*) or of either side (--pod, --ip, …).
    struct Endpoints {
        var pods: [String], ips: [String], ports: [String], fqdns: [String], labels: [String], identities: [UInt32]

        var isEmpty: Bool {
            pods.isEmpty && ips.isEmpty && ports.isEmpty && fqdns.isEmpty && labels.isEmpty && identities.isEmpty
        }

        /// Adds them to `f` as its source_* or destination_* fields.
        func add(asSource: Bool, to f: inout Flow_FlowFilter) {
            if asSource {
                f.sourcePod += pods; f.sourceIp += ips; f.sourcePort += ports
                f.sourceFqdn += fqdns; f.sourceLabel += labels; f.sourceIdentity += identities
            } else {
                f.destinationPod += pods; f.destinationIp += ips; f.destinationPort += ports
                f.destinationFqdn += fqdns; f.destinationLabel += labels; f.destinationIdentity += identities
            }
        }
    }

    /// `-t TYPE[:SUBTYPE]` as Hubble's CLI reads it (Cilium's monitor message types).
    static func eventType(_ spec: String) throws -> Flow_EventTypeFilter {
        let types: [String: Int32] = ["drop": 1, "debug": 2, "capture": 3, "trace": 4, "policy-verdict": 5,
                                      "recorder": 6, "trace-sock": 7, "l7": 129, "agent": 130]
        let traceSubtypes: [String: Int32] = ["to-endpoint": 0, "to-proxy": 1, "to-host": 2, "to-stack": 3, "to-overlay": 4,
                                              "from-endpoint": 5, "from-proxy": 6, "from-host": 7, "from-stack": 8,
                                              "from-overlay": 9, "from-network": 10, "to-network": 11]
        let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
        guard let t = types[parts[0].lowercased()] ?? Int32(parts[0]) else {
            throw ValidationError("--type \"\(spec)\": expected one of \(types.keys.sorted().joined(separator: ", ")) or a number")
        }
        var f = Flow_EventTypeFilter()
        f.type = t
        if parts.count == 2 {
            guard let sub = (t == 4 ? traceSubtypes[parts[1].lowercased()] : nil) ?? Int32(parts[1]) else {
                throw ValidationError("--type \"\(spec)\": unknown sub-type \"\(parts[1])\"")
            }
            f.matchSubType = true
            f.subType = sub
        }
        return f
    }

    /// RFC 3339 (UTC, `Z`) or a duration before now (`90s`, `5m`, `1h30m`).
    static func timestamp(_ text: String, flag: String) throws -> Google_Protobuf_Timestamp {
        if let t = FlowTime.parse(text) { return .init(seconds: Int64(t.seconds), nanos: Int32(t.nanoseconds)) }
        var seconds = 0.0, number = "", matched = false
        var chars = Substring(text)
        while let c = chars.first {
            if c.isNumber || c == "." {
                number.append(c)
                chars = chars.dropFirst()
                continue
            }
            let units: [(String, Double)] = [("ms", 0.001), ("us", 0.000001), ("ns", 0.000000001), ("h", 3600), ("m", 60), ("s", 1)]
            guard let (u, scale) = units.first(where: { chars.hasPrefix($0.0) }), let n = Double(number) else {
                throw ValidationError("\(flag) \"\(text)\": expected RFC 3339 (2026-12-02T15:04:05Z) or a duration like 5m")
            }
            seconds += n * scale
            number = ""
            matched = true
            chars = chars.dropFirst(u.count)
        }
        guard matched, number.isEmpty else {
            throw ValidationError("\(flag) \"\(text)\": expected RFC 3339 (2026-12-02T15:04:05Z) or a duration like 5m")
        }
        return Google_Protobuf_Timestamp(date: Date().addingTimeInterval(-seconds))
    }

    /// `--file`: an exported file read offline with the same filters; a line that is not a flow
    /// is named (file:line) and counted, never skipped silently.
    private func printFile(_ path: String, filters: FlowFilterSet, extra: FlowFilter) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            FileHandle.standardError.write(Data("loupe observe: cannot read \(path)\n".utf8))
            throw ExitCode(1)
        }
        var matching: [(String, FlowRecord)] = []
        var bad = 0
        let since = try self.since.map { try Self.timestamp($0, flag: "--since") }
        let until = try self.until.map { try Self.timestamp($0, flag: "--until") }
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

extension Flow_Verdict {
    static func named(_ name: String) -> Flow_Verdict? {
        ["FORWARDED": .forwarded, "DROPPED": .dropped, "ERROR": .error, "AUDIT": .audit,
         "REDIRECTED": .redirected, "TRACED": .traced, "TRANSLATED": .translated][name]
    }
}
