import Foundation

/// JSON lines and compact text, as `hubble observe -o json` and `hubble observe` print them.
public enum FlowEncoding {
    /// One JSON line (no trailing newline) for `record`.
    public static func jsonLine(_ record: FlowRecord) -> String {
        var w = FlowJSONWriter()
        w.record(record)
        return w.out
    }

    /// The same line as UTF-8 bytes, newline included: what the API streams (no String in between).
    public static func jsonLineBytes(_ record: FlowRecord) -> [UInt8] {
        var w = FlowJSONWriter()
        w.record(record)
        w.raw("\n")
        return w.bytes
    }

    /// A stream's lost-events record, in Hubble's shape:
    /// `{"lost_events":{"source":"OBSERVER_EVENTS_QUEUE","num_events_lost":"12","cpu":null},"node_name":…,"time":…}`.
    public static func lostEventsLine(count: UInt64, nodeName: String) -> String {
        "{\"lost_events\":{\"source\":\"OBSERVER_EVENTS_QUEUE\",\"num_events_lost\":\"\(count)\",\"cpu\":null},"
            + "\"node_name\":\"\(nodeName)\",\"time\":\"\(FlowTime.nowRFC3339())\"}"
    }

    /// The number of a lost-events record, nil when `line` is something else.
    public static func lostEvents(jsonLine line: String) -> UInt64? {
        guard line.hasPrefix("{\"lost_events\""),
              let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let lost = obj["lost_events"] as? [String: Any] else { return nil }
        return (lost["num_events_lost"] as? String).flatMap { UInt64($0) } ?? (lost["num_events_lost"] as? NSNumber)?.uint64Value
    }

    public static func decode(jsonLine: String) throws -> FlowRecord {
        try JSONDecoder().decode(FlowRecord.self, from: Data(jsonLine.utf8))
    }

    /// `Nov 24 22:45:32.123: default/xwing:45240 (ID:26450) -> empire/deathstar:80 (ID:9313) http-request FORWARDED (HTTP/1.1 GET http://…)`
    public static func compact(_ flow: Flow) -> String {
        let ports = flow.l4.ports
        var src = endpoint(flow.source, ip: flow.ip.source, port: ports?.sourcePort)
        var dst = endpoint(flow.destination, ip: flow.ip.destination, port: ports?.destinationPort)
        var arrow = "->"
        if flow.isReply {
            swap(&src, &dst)
            arrow = "<-"
        }
        return "\(FlowTime.compact(flow.time)): \(src) \(arrow) \(dst) \(eventName(flow)) \(flow.verdict.rawValue) (\(flow.summary))"
    }

    /// `hubble observe -o table` style columns.
    public static func tableRow(_ flow: Flow) -> String {
        let ports = flow.l4.ports
        let src = endpoint(flow.source, ip: flow.ip.source, port: ports?.sourcePort)
        let dst = endpoint(flow.destination, ip: flow.ip.destination, port: ports?.destinationPort)
        return [FlowTime.compact(flow.time), flow.nodeName, src, dst, eventName(flow), flow.verdict.rawValue, flow.summary]
            .joined(separator: "\t")
    }

    public static let tableHeader = ["TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"].joined(separator: "\t")

    /// `hubble observe -o dict`: one block per flow (source and destination as the flow has
    /// them); blocks are separated by a `------------` line, which the caller prints between them.
    public static func dict(_ flow: Flow) -> String {
        let ports = flow.l4.ports
        func side(_ e: Endpoint, _ ip: String, _ port: Int?) -> String {
            let portSuffix = port.map { ":\($0)" } ?? ""
            if let ns = e.namespace, let pod = e.podName { return "\(ns)/\(pod)\(portSuffix)" }
            return (ip.contains(":") ? "[\(ip)]" : ip) + portSuffix
        }
        return """
              TIMESTAMP: \(FlowTime.compact(flow.time))
                 SOURCE: \(side(flow.source, flow.ip.source, ports?.sourcePort))
            DESTINATION: \(side(flow.destination, flow.ip.destination, ports?.destinationPort))
                   TYPE: \(eventName(flow))
                VERDICT: \(flow.verdict.rawValue)
                SUMMARY: \(flow.summary)
            """
    }

    public static let dictSeparator = "------------"

    static func eventName(_ flow: Flow) -> String {
        if let l7 = flow.l7 {
            let proto = l7.http != nil ? "http" : l7.dns != nil ? "dns" : "l7"
            // Hubble names the DNS observation source after the type: `dns-request proxy`.
            let source = l7.dns.map { $0.observationSource.isEmpty ? "" : " \($0.observationSource)" } ?? ""
            switch l7.type {
            case .request: return "\(proto)-request\(source)"
            case .response: return "\(proto)-response\(source)"
            case .sample: return "\(proto)-sample\(source)"
            }
        }
        if flow.verdict == .dropped && flow.dropReasonDesc == .policyDenied { return "Policy denied" }
        return "to-proxy"
    }

    static func endpoint(_ e: Endpoint, ip: String, port: Int?) -> String {
        let portSuffix = port.map { ":\($0)" } ?? ""
        if let ns = e.namespace, let pod = e.podName {
            return "\(ns)/\(pod)\(portSuffix) (ID:\(e.identity))"
        }
        let host = ip.contains(":") ? "[\(ip)]" : ip
        return e.identity == 2 ? "\(host)\(portSuffix) (world)" : "\(host)\(portSuffix) (ID:\(e.identity))"
    }
}
