/// Writes a flow record as one JSON line with Hubble's field order (protojson prints fields in
/// declaration order, and people diff and grep these lines): `{"flow":{"time":…,"uuid":…,
/// "verdict":…,…,"Summary":…},"node_name":…,"time":…}`. Empty optional fields are omitted,
/// as protojson does.
struct FlowJSONWriter {
    /// UTF-8 bytes; one buffer for the whole line (the flow pipeline encodes every flow once
    /// per consumer, so this runs at the agent's full flow rate).
    private(set) var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(1536) }

    var out: String { String(decoding: bytes, as: UTF8.self) }

    mutating func record(_ r: FlowRecord) {
        raw("{\"flow\":")
        flow(r.flow)
        raw(",\"node_name\":")
        string(r.nodeName)
        raw(",\"time\":")
        string(r.time)
        raw("}")
    }

    private mutating func flow(_ f: Flow) {
        var o = ObjectWriter()
        o.field("time", &self) { $0.string(f.time) }
        o.field("uuid", &self) { $0.string(f.uuid) }
        o.field("verdict", &self) { $0.string(f.verdict.rawValue) }
        // Fields go in flow.proto's declaration order, as protojson prints them.
        if let d = f.dropReasonDesc, f.l7 == nil { o.field("drop_reason", &self) { $0.number(d.code) } }
        o.field("IP", &self) { w in
            var p = ObjectWriter()
            p.field("source", &w) { $0.string(f.ip.source) }
            p.field("destination", &w) { $0.string(f.ip.destination) }
            p.field("ipVersion", &w) { $0.string(f.ip.ipVersion) }
            p.close(&w)
        }
        o.field("l4", &self) { w in
            var p = ObjectWriter()
            if let t = f.l4.tcp { p.field("TCP", &w) { $0.ports(t) } }
            if let u = f.l4.udp { p.field("UDP", &w) { $0.ports(u) } }
            p.close(&w)
        }
        o.field("source", &self) { $0.endpoint(f.source) }
        o.field("destination", &self) { $0.endpoint(f.destination) }
        o.field("Type", &self) { $0.string(f.type.rawValue) }
        o.field("node_name", &self) { $0.string(f.nodeName) }
        if let names = f.sourceNames, !names.isEmpty { o.field("source_names", &self) { $0.strings(names) } }
        if let names = f.destinationNames, !names.isEmpty { o.field("destination_names", &self) { $0.strings(names) } }
        if let l7 = f.l7 {
            o.field("l7", &self) { w in
                var p = ObjectWriter()
                p.field("type", &w) { $0.string(l7.type.rawValue) }
                if let l = l7.latencyNs { p.field("latency_ns", &w) { $0.string(l) } }
                if let h = l7.http { p.field("http", &w) { $0.http(h) } }
                if let d = l7.dns { p.field("dns", &w) { $0.dns(d) } }
                p.close(&w)
            }
            // Hubble's L7 event type (MessageTypeAccessLog).
            o.field("event_type", &self) { $0.raw("{\"type\":129}") }
        } else if f.verdict == .dropped, let d = f.dropReasonDesc {
            // A drop event (MessageTypeDrop) whose sub-type is the reason: Hubble prints
            // "Policy denied DROPPED", as for Cilium's own policy drops.
            o.field("event_type", &self) { w in
                w.raw("{\"type\":1,\"sub_type\":")
                w.number(d.code)
                w.raw("}")
            }
        } else {
            // A trace event (MessageTypeTrace) at the proxy: the connection reached Loupe's proxy.
            o.field("event_type", &self) { $0.raw("{\"type\":4,\"sub_type\":1}") }
        }
        o.field("traffic_direction", &self) { $0.string(f.trafficDirection.rawValue) }
        if f.l7 == nil && f.verdict != .dropped { o.field("trace_observation_point", &self) { $0.string("TO_PROXY") } }
        if let d = f.dropReasonDesc { o.field("drop_reason_desc", &self) { $0.string(d.rawValue) } }
        o.field("is_reply", &self) { $0.raw(f.isReply ? "true" : "false") }
        o.field("Summary", &self) { $0.string(f.summary) }
        o.close(&self)
    }

    private mutating func ports(_ p: Layer4.Ports) {
        raw("{\"source_port\":")
        number(p.sourcePort)
        raw(",\"destination_port\":")
        number(p.destinationPort)
        raw("}")
    }

    private mutating func endpoint(_ e: Endpoint) {
        var o = ObjectWriter()
        if let id = e.id { o.field("ID", &self) { $0.number(Int(id)) } }
        o.field("identity", &self) { $0.number(Int(e.identity)) }
        if let ns = e.namespace { o.field("namespace", &self) { $0.string(ns) } }
        o.field("labels", &self) { $0.strings(e.labels) }
        if let p = e.podName { o.field("pod_name", &self) { $0.string(p) } }
        if let ws = e.workloads, !ws.isEmpty {
            o.field("workloads", &self) { $0.pairs(ws, "name", "kind") { ($0.name, $0.kind) } }
        }
        o.close(&self)
    }

    private mutating func http(_ h: HTTP) {
        var o = ObjectWriter()
        if let c = h.code { o.field("code", &self) { $0.number(Int(c)) } }
        if !h.method.isEmpty { o.field("method", &self) { $0.string(h.method) } }
        if !h.url.isEmpty { o.field("url", &self) { $0.string(h.url) } }
        o.field("protocol", &self) { $0.string(h.protocol) }
        if !h.headers.isEmpty {
            o.field("headers", &self) { $0.pairs(h.headers, "key", "value") { ($0.key, $0.value) } }
        }
        o.close(&self)
    }

    private mutating func dns(_ d: DNS) {
        var o = ObjectWriter()
        o.field("query", &self) { $0.string(d.query) }
        if !d.ips.isEmpty { o.field("ips", &self) { $0.strings(d.ips) } }
        if d.ttl != 0 { o.field("ttl", &self) { $0.number(Int(d.ttl)) } }
        if !d.cnames.isEmpty { o.field("cnames", &self) { $0.strings(d.cnames) } }
        if !d.observationSource.isEmpty { o.field("observation_source", &self) { $0.string(d.observationSource) } }
        if d.rcode != 0 { o.field("rcode", &self) { $0.number(Int(d.rcode)) } }
        if !d.qtypes.isEmpty { o.field("qtypes", &self) { $0.strings(d.qtypes) } }
        if !d.rrtypes.isEmpty { o.field("rrtypes", &self) { $0.strings(d.rrtypes) } }
        o.close(&self)
    }

    /// `[{"first":…,"second":…},…]`: workloads and headers.
    private mutating func pairs<T>(_ items: [T], _ first: StaticString, _ second: StaticString, _ fields: (T) -> (String, String)) {
        raw("[")
        for (i, item) in items.enumerated() {
            let (a, b) = fields(item)
            raw(i > 0 ? ",{\"" : "{\"")
            raw(first)
            raw("\":")
            string(a)
            raw(",\"")
            raw(second)
            raw("\":")
            string(b)
            raw("}")
        }
        raw("]")
    }

    private mutating func strings(_ list: [String]) {
        raw("[")
        for (i, s) in list.enumerated() {
            if i > 0 { raw(",") }
            string(s)
        }
        raw("]")
    }

    /// Text that needs no escaping (the writer's own punctuation and field names).
    mutating func raw(_ s: StaticString) {
        s.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    mutating func number(_ v: Int) {
        var s = String(v)
        s.withUTF8 { bytes.append(contentsOf: $0) }
    }

    /// A JSON string: bytes that need no escape are copied as they are (the common case, in bulk).
    mutating func string(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { utf8 in
            var start = 0
            for (i, b) in utf8.enumerated() where b < 0x20 || b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") {
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<i]))
                escape(b)
                start = i + 1
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start...]))
        }
        bytes.append(UInt8(ascii: "\""))
    }

    private mutating func escape(_ b: UInt8) {
        switch b {
        case UInt8(ascii: "\""): raw("\\\"")
        case UInt8(ascii: "\\"): raw("\\\\")
        case UInt8(ascii: "\n"): raw("\\n")
        case UInt8(ascii: "\r"): raw("\\r")
        case UInt8(ascii: "\t"): raw("\\t")
        default:
            raw("\\u00")
            bytes.append(Self.hex[Int(b >> 4)])
            bytes.append(Self.hex[Int(b & 0xF)])
        }
    }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    /// Commas between fields of one object.
    struct ObjectWriter {
        private var count = 0
        mutating func field(_ name: StaticString, _ w: inout FlowJSONWriter, _ value: (inout FlowJSONWriter) -> Void) {
            w.raw(count == 0 ? "{\"" : ",\"")
            w.raw(name)
            w.raw("\":")
            count += 1
            value(&w)
        }
        func close(_ w: inout FlowJSONWriter) { w.raw(count == 0 ? "{}" : "}") }
    }
}
