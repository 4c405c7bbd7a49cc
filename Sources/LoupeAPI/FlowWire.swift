import LoupeFlow

/// `observer.GetFlowsResponse{flow, node_name, time}` in protobuf's wire format, written
/// straight from Loupe's flow: the bytes decode to exactly the message `Flow_Flow(flow)`
/// builds (a unit test holds the two together), without building it. A follower's stream is
/// every flow the node records; SwiftProtobuf spent ≈ 13 µs a flow on it (the message built
/// field by field, then every nested message sized once per level above it), which held the
/// follower to a fifth of the flows the agent recorded.
public enum FlowWire {
    /// One GetFlowsResponse carrying `record`'s flow; `time` is the flow's `timestamp`
    /// (nil: unset in the flow, zero in the response).
    public static func getFlowsResponse(_ record: FlowRecord, time: (seconds: Int, nanoseconds: Int)?,
                                        nodeName: String) -> [UInt8] {
        var w = ProtoWriter()
        w.bytes.reserveCapacity(640)
        w.message(1) { w in flow(record.flow, time: time, into: &w) }
        w.string(1000, nodeName)
        w.message(1001) { w in timestamp(time ?? (0, 0), into: &w) }
        return w.bytes
    }

    /// The fields `Flow_Flow.init(_:)` sets, in field-number order.
    static func flow(_ f: Flow, time: (seconds: Int, nanoseconds: Int)?, into w: inout ProtoWriter) {
        if let time { w.message(1) { w in timestamp(time, into: &w) } }
        w.uint(2, UInt64(Flow_Verdict(f.verdict).rawValue))
        if let d = f.dropReasonDesc, f.l7 == nil { w.uint(3, UInt64(d.code)) }
        w.message(5) { w in
            w.string(1, f.ip.source)
            w.string(2, f.ip.destination)
            w.uint(3, f.ip.ipVersion == "IPv6" ? 2 : 1)
        }
        if let ports = f.l4.tcp ?? f.l4.udp {
            w.message(6) { w in
                w.message(f.l4.tcp != nil ? 1 : 2) { w in
                    w.uint(1, UInt64(UInt32(truncatingIfNeeded: ports.sourcePort)))
                    w.uint(2, UInt64(UInt32(truncatingIfNeeded: ports.destinationPort)))
                }
            }
        }
        w.message(8) { w in endpoint(f.source, into: &w) }
        w.message(9) { w in endpoint(f.destination, into: &w) }
        w.uint(10, UInt64((f.type == .l7 ? Flow_FlowType.l7 : .l3L4).rawValue))
        w.string(11, f.nodeName)
        for name in f.sourceNames ?? [] { w.string(13, name, always: true) }
        for name in f.destinationNames ?? [] { w.string(14, name, always: true) }
        if let l7 = f.l7 { w.message(15) { w in layer7(l7, into: &w) } }
        // event_type: L7 records 129; policy drops 1 / the drop code; the rest trace events at TO_PROXY.
        let (event, subType, toProxy): (UInt64, UInt64, Bool) =
            if f.l7 != nil { (129, 0, false) }
            else if f.verdict == .dropped, let d = f.dropReasonDesc { (1, UInt64(d.code), false) }
            else { (4, 1, true) }
        w.message(19) { w in
            w.uint(1, event)
            w.uint(2, subType)
        }
        w.uint(22, UInt64((f.trafficDirection == .ingress ? Flow_TrafficDirection.ingress : .egress).rawValue))
        if toProxy { w.uint(24, UInt64(Flow_TraceObservationPoint.toProxy.rawValue)) }
        if let d = f.dropReasonDesc { w.uint(25, UInt64((Flow_DropReason(rawValue: d.code) ?? .unknown).rawValue)) }
        w.message(26) { w in w.uint(1, f.isReply ? 1 : 0) }
        w.string(34, f.uuid)
        w.string(100_000, f.summary)
    }

    static func timestamp(_ t: (seconds: Int, nanoseconds: Int), into w: inout ProtoWriter) {
        w.uint(1, UInt64(bitPattern: Int64(t.seconds)))
        w.uint(2, UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: t.nanoseconds))))
    }

    static func endpoint(_ e: Endpoint, into w: inout ProtoWriter) {
        w.uint(1, UInt64(e.id ?? 0))
        w.uint(2, UInt64(e.identity))
        w.string(3, e.namespace ?? "")
        for label in e.labels { w.string(4, label, always: true) }
        w.string(5, e.podName ?? "")
        for workload in e.workloads ?? [] {
            w.message(6) { w in
                w.string(1, workload.name)
                w.string(2, workload.kind)
            }
        }
    }

    static func layer7(_ l7: Layer7, into w: inout ProtoWriter) {
        let type: Flow_L7FlowType = switch l7.type {
        case .request: .request
        case .response: .response
        case .sample: .sample
        }
        w.uint(1, UInt64(type.rawValue))
        w.uint(2, l7.latencyNanos)
        if let h = l7.http {
            w.message(101) { w in
                w.uint(1, UInt64(UInt32(truncatingIfNeeded: h.code ?? 0)))
                w.string(2, h.method)
                w.string(3, h.url)
                w.string(4, h.protocol)
                for header in h.headers {
                    w.message(5) { w in
                        w.string(1, header.key)
                        w.string(2, header.value)
                    }
                }
            }
        } else if let d = l7.dns {
            w.message(100) { w in
                w.string(1, d.query)
                for ip in d.ips { w.string(2, ip, always: true) }
                w.uint(3, UInt64(d.ttl))
                for name in d.cnames { w.string(4, name, always: true) }
                w.string(5, d.observationSource)
                w.uint(6, UInt64(d.rcode))
                for t in d.qtypes { w.string(7, t, always: true) }
                for t in d.rrtypes { w.string(8, t, always: true) }
            }
        }
    }
}

/// Protobuf's wire format, proto3 style: a zero number or an empty string is not written.
/// A nested message's length is reserved as one byte and widened afterwards when the message
/// came out longer than 127 bytes (one move of its bytes, instead of sizing it first).
struct ProtoWriter {
    var bytes: [UInt8] = []

    mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    /// Wire types: 0 varint, 2 length-delimited.
    mutating func tag(_ field: Int, _ wireType: UInt64) { varint(UInt64(field) << 3 | wireType) }

    mutating func uint(_ field: Int, _ value: UInt64) {
        guard value != 0 else { return }
        tag(field, 0)
        varint(value)
    }

    /// `always`: an element of a repeated field, written even when empty.
    mutating func string(_ field: Int, _ value: String, always: Bool = false) {
        var value = value
        guard always || !value.isEmpty else { return }
        tag(field, 2)
        value.withUTF8 { utf8 in
            varint(UInt64(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }

    /// A nested message, written even when it has no fields (a set message field).
    mutating func message(_ field: Int, _ body: (inout ProtoWriter) -> Void) {
        tag(field, 2)
        let mark = bytes.count
        bytes.append(0)
        body(&self)
        let length = bytes.count - mark - 1
        if length < 0x80 {
            bytes[mark] = UInt8(length)
            return
        }
        var prefix = ProtoWriter()
        prefix.varint(UInt64(length))
        bytes.replaceSubrange(mark..<(mark + 1), with: prefix.bytes)
    }
}
