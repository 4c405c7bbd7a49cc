import LoupeFlow
import SwiftProtobuf

/// Loupe's flow model ↔ Hubble's `flow.Flow` message. The agent sends flows this way over the
/// Hubble API; `loupe observe` turns them back to print them with the same printers as the
/// export file. The fields set are the ones Loupe's JSON writes (FlowJSONWriter), with the same
/// event types: L7 records are type 129, policy drops type 1 / sub-type = drop code, the rest
/// trace events (type 4) at TO_PROXY.
extension Flow_Flow {
    public init(_ f: LoupeFlow.Flow) {
        self.init()
        if let t = f.timestamp { time = .init(seconds: Int64(t.seconds), nanos: Int32(t.nanoseconds)) }
        uuid = f.uuid
        verdict = Flow_Verdict(f.verdict)
        ip = .with {
            $0.source = f.ip.source
            $0.destination = f.ip.destination
            $0.ipVersion = f.ip.ipVersion == "IPv6" ? .ipv6 : .ipv4
        }
        if let t = f.l4.tcp {
            l4.protocol = .tcp(.with { $0.sourcePort = UInt32(t.sourcePort); $0.destinationPort = UInt32(t.destinationPort) })
        } else if let u = f.l4.udp {
            l4.protocol = .udp(.with { $0.sourcePort = UInt32(u.sourcePort); $0.destinationPort = UInt32(u.destinationPort) })
        }
        source = Flow_Endpoint(f.source)
        destination = Flow_Endpoint(f.destination)
        type = f.type == .l7 ? .l7 : .l3L4
        nodeName = f.nodeName
        sourceNames = f.sourceNames ?? []
        destinationNames = f.destinationNames ?? []
        if let l7 = f.l7 {
            self.l7 = Flow_Layer7(l7)
            eventType = .with { $0.type = 129 }
        } else if f.verdict == .dropped, let d = f.dropReasonDesc {
            eventType = .with { $0.type = 1; $0.subType = Int32(d.code) }
        } else {
            eventType = .with { $0.type = 4; $0.subType = 1 }
            traceObservationPoint = .toProxy
        }
        if let d = f.dropReasonDesc {
            if f.l7 == nil { dropReason = UInt32(d.code) }
            dropReasonDesc = Flow_DropReason(rawValue: d.code) ?? .unknown
        }
        trafficDirection = f.trafficDirection == .ingress ? .ingress : .egress
        isReply = .init(f.isReply)
        summary = f.summary
    }
}

extension Flow_Verdict {
    init(_ v: LoupeFlow.Verdict) {
        switch v {
        case .forwarded: self = .forwarded
        case .dropped: self = .dropped
        case .error: self = .error
        case .audit: self = .audit
        }
    }
}

extension Flow_Endpoint {
    init(_ e: LoupeFlow.Endpoint) {
        self.init()
        if let id = e.id { self.id = id }
        identity = e.identity
        namespace = e.namespace ?? ""
        labels = e.labels
        podName = e.podName ?? ""
        workloads = (e.workloads ?? []).map { w in .with { $0.name = w.name; $0.kind = w.kind } }
    }
}

extension Flow_Layer7 {
    init(_ l7: LoupeFlow.Layer7) {
        self.init()
        switch l7.type {
        case .request: type = .request
        case .response: type = .response
        case .sample: type = .sample
        }
        latencyNs = l7.latencyNanos
        if let h = l7.http {
            record = .http(.with {
                $0.code = UInt32(h.code ?? 0)
                $0.method = h.method
                $0.url = h.url
                $0.protocol = h.protocol
                $0.headers = h.headers.map { hd in .with { $0.key = hd.key; $0.value = hd.value } }
            })
        } else if let d = l7.dns {
            record = .dns(.with {
                $0.query = d.query
                $0.ips = d.ips
                $0.ttl = d.ttl
                $0.cnames = d.cnames
                $0.observationSource = d.observationSource
                $0.rcode = d.rcode
                $0.qtypes = d.qtypes
                $0.rrtypes = d.rrtypes
            })
        }
    }
}

extension LoupeFlow.Flow {
    /// A Hubble flow as Loupe's model (what `loupe observe` prints). Fields Loupe's model has no
    /// place for (ethernet, services, policies, …) are not carried: Loupe's agent never sets them.
    public init(_ m: Flow_Flow) {
        let verdict: LoupeFlow.Verdict = switch m.verdict {
        case .dropped: .dropped
        case .error: .error
        case .audit: .audit
        default: .forwarded
        }
        var l4 = LoupeFlow.Layer4()
        switch m.l4.protocol {
        case .tcp(let t): l4.tcp = .init(sourcePort: Int(t.sourcePort), destinationPort: Int(t.destinationPort))
        case .udp(let u): l4.udp = .init(sourcePort: Int(u.sourcePort), destinationPort: Int(u.destinationPort))
        default: break
        }
        var l7: LoupeFlow.Layer7?
        if m.hasL7 {
            let kind: LoupeFlow.Layer7.Kind = switch m.l7.type {
            case .response: .response
            case .sample: .sample
            default: .request
            }
            var layer = LoupeFlow.Layer7(type: kind, latencyNs: m.l7.latencyNs)
            switch m.l7.record {
            case .http(let h):
                layer.http = LoupeFlow.HTTP(code: h.code == 0 ? nil : Int(h.code), method: h.method, url: h.url, protocol: h.protocol,
                                            headers: h.headers.map { .init(key: $0.key, value: $0.value) })
            case .dns(let d):
                layer.dns = LoupeFlow.DNS(query: d.query, ips: d.ips, ttl: d.ttl, cnames: d.cnames, observationSource: d.observationSource,
                                          rcode: d.rcode, qtypes: d.qtypes, rrtypes: d.rrtypes)
            default: break
            }
            l7 = layer
        }
        var ip = LoupeFlow.IPInfo(source: m.ip.source, destination: m.ip.destination)
        ip.ipVersion = m.ip.ipVersion == .ipv6 ? "IPv6" : "IPv4"
        self.init(time: FlowTime.rfc3339(seconds: Int(m.time.seconds), nanoseconds: Int(m.time.nanos)),
                  uuid: m.uuid, verdict: verdict,
                  dropReasonDesc: m.dropReasonDesc == .policyDenied ? .policyDenied : nil,
                  ip: ip, l4: l4, source: LoupeFlow.Endpoint(m.source), destination: LoupeFlow.Endpoint(m.destination),
                  type: m.type == .l7 ? .l7 : .l3l4, nodeName: m.nodeName,
                  destinationNames: m.destinationNames.isEmpty ? nil : m.destinationNames, l7: l7,
                  isReply: m.isReply.value, trafficDirection: m.trafficDirection == .ingress ? .ingress : .egress,
                  summary: m.summary, sourceNames: m.sourceNames.isEmpty ? nil : m.sourceNames)
    }
}

extension LoupeFlow.Endpoint {
    init(_ m: Flow_Endpoint) {
        self.init(id: m.id == 0 ? nil : m.id, identity: m.identity, namespace: m.namespace.isEmpty ? nil : m.namespace,
                  labels: m.labels, podName: m.podName.isEmpty ? nil : m.podName,
                  workloads: m.workloads.isEmpty ? nil : m.workloads.map { .init(name: $0.name, kind: $0.kind) })
    }
}

extension Google_Protobuf_Timestamp {
    /// RFC 3339 text as Loupe's flows carry it.
    public var rfc3339: String { FlowTime.rfc3339(seconds: Int(seconds), nanoseconds: Int(nanos)) }
}
