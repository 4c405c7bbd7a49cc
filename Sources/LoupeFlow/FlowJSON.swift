/// Writes a flow record as one JSON line with Hubble's field order (protojson prints fields in
/// declaration order, and people diff and grep these lines): `{"flow":{"time":…,"uuid":…,
/// "verdict":…,…,"Summary":…},"node_name":…,"time":…}`. Empty optional fields are omitted,
/// as protojson does.
struct FlowJSONWriter {
    private(set) var out = ""

    init() { out.reserveCapacity(1024) }

    mutating func record(_ r: FlowRecord) {
        out += "{\"flow\":"
        flow(r.flow)
        out += ",\"node_name\":"
        string(r.nodeName)
        out += ",\"time\":"
        string(r.time)
        out += "}"
    }

    private mutating func flow(_ f: Flow) {
        var o = ObjectWriter()
        o.field("time", &out) { $0.string(f.time) }
        o.field("uuid", &out) { $0.string(f.uuid) }
        o.field("verdict", &out) { $0.string(f.verdict.rawValue) }
        if let d = f.dropReasonDesc { o.field("drop_reason_desc", &out) { $0.string(d) } }
        o.field("IP", &out) { w in
            var p = ObjectWriter()
            p.field("source", &w.out) { $0.string(f.ip.source) }
            p.field("destination", &w.out) { $0.string(f.ip.destination) }
            p.field("ipVersion", &w.out) { $0.string(f.ip.ipVersion) }
            p.close(&w.out)
        }
        o.field("l4", &out) { w in
            var p = ObjectWriter()
            if let t = f.l4.tcp { p.field("TCP", &w.out) { $0.ports(t) } }
            if let u = f.l4.udp { p.field("UDP", &w.out) { $0.ports(u) } }
            p.close(&w.out)
        }
        o.field("source", &out) { $0.endpoint(f.source) }
        o.field("destination", &out) { $0.endpoint(f.destination) }
        o.field("Type", &out) { $0.string(f.type.rawValue) }
        o.field("node_name", &out) { $0.string(f.nodeName) }
        if let names = f.sourceNames, !names.isEmpty { o.field("source_names", &out) { $0.strings(names) } }
        if let names = f.destinationNames, !names.isEmpty { o.field("destination_names", &out) { $0.strings(names) } }
        if let l7 = f.l7 {
            o.field("l7", &out) { w in
                var p = ObjectWriter()
                p.field("type", &w.out) { $0.string(l7.type.rawValue) }
                if let l = l7.latencyNs { p.field("latency_ns", &w.out) { $0.string(l) } }
                if let h = l7.http { p.field("http", &w.out) { $0.http(h) } }
                if let d = l7.dns { p.field("dns", &w.out) { $0.dns(d) } }
                p.close(&w.out)
            }
            // Hubble's L7 event type (MessageTypeAccessLog).
            o.field("event_type", &out) { $0.out += "{\"type\":129}" }
        }
        o.field("traffic_direction", &out) { $0.string(f.trafficDirection.rawValue) }
        o.field("is_reply", &out) { $0.out += f.isReply ? "true" : "false" }
        o.field("Summary", &out) { $0.string(f.summary) }
        o.close(&out)
    }

    private mutating func ports(_ p: Layer4.Ports) {
        out += "{\"source_port\":\(p.sourcePort),\"destination_port\":\(p.destinationPort)}"
    }

    private mutating func endpoint(_ e: Endpoint) {
        var o = ObjectWriter()
        if let id = e.id { o.field("ID", &out) { $0.out += String(id) } }
        o.field("identity", &out) { $0.out += String(e.identity) }
        if let ns = e.namespace { o.field("namespace", &out) { $0.string(ns) } }
        o.field("labels", &out) { $0.strings(e.labels) }
        if let p = e.podName { o.field("pod_name", &out) { $0.string(p) } }
        if let ws = e.workloads, !ws.isEmpty {
            o.field("workloads", &out) { $0.pairs(ws, "name", "kind") { ($0.name, $0.kind) } }
        }
        o.close(&out)
    }

    private mutating func http(_ h: HTTP) {
        var o = ObjectWriter()
        if let c = h.code { o.field("code", &out) { $0.out += String(c) } }
        if !h.method.isEmpty { o.field("method", &out) { $0.string(h.method) } }
        if !h.url.isEmpty { o.field("url", &out) { $0.string(h.url) } }
        o.field("protocol", &out) { $0.string(h.protocol) }
        if !h.headers.isEmpty {
            o.field("headers", &out) { $0.pairs(h.headers, "key", "value") { ($0.key, $0.value) } }
        }
        o.close(&out)
    }

    private mutating func dns(_ d: DNS) {
        var o = ObjectWriter()
        o.field("query", &out) { $0.string(d.query) }
        if !d.ips.isEmpty { o.field("ips", &out) { $0.strings(d.ips) } }
        if d.ttl != 0 { o.field("ttl", &out) { $0.out += String(d.ttl) } }
        if !d.cnames.isEmpty { o.field("cnames", &out) { $0.strings(d.cnames) } }
        if !d.observationSource.isEmpty { o.field("observation_source", &out) { $0.string(d.observationSource) } }
        if d.rcode != 0 { o.field("rcode", &out) { $0.out += String(d.rcode) } }
        if !d.qtypes.isEmpty { o.field("qtypes", &out) { $0.strings(d.qtypes) } }
        if !d.rrtypes.isEmpty { o.field("rrtypes", &out) { $0.strings(d.rrtypes) } }
        o.close(&out)
    }

    /// `[{"first":…,"second":…},…]`: workloads and headers.
    private mutating func pairs<T>(_ items: [T], _ first: String, _ second: String, _ fields: (T) -> (String, String)) {
        out += "["
        for (i, item) in items.enumerated() {
            let (a, b) = fields(item)
            out += i > 0 ? ",{\"" : "{\""
            out += first + "\":"
            string(a)
            out += ",\"" + second + "\":"
            string(b)
            out += "}"
        }
        out += "]"
    }

    private mutating func strings(_ list: [String]) {
        out += "["
        for (i, s) in list.enumerated() {
            if i > 0 { out += "," }
            string(s)
        }
        out += "]"
    }

    mutating func string(_ s: String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20:
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(u)
            }
        }
        out += "\""
    }

    /// Commas between fields of one object.
    struct ObjectWriter {
        private var count = 0
        mutating func field(_ name: String, _ out: inout String, _ value: (inout FlowJSONWriter) -> Void) {
            out += count == 0 ? "{\"" : ",\""
            out += name
            out += "\":"
            count += 1
            var w = FlowJSONWriter()
            w.out = ""
            value(&w)
            out += w.out
        }
        func close(_ out: inout String) { out += count == 0 ? "{}" : "}" }
    }
}
