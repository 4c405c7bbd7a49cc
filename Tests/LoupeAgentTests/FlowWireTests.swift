import LoupeAPI
import LoupeFlow
import SwiftProtobuf
import Testing

/// `FlowWire` writes GetFlowsResponse bytes without SwiftProtobuf: they must decode to the very
/// message the generated code builds from the same flow (`Flow_Flow(flow)`), for every shape of
/// flow the agent records.
@Suite struct FlowWireTests {
    static let client = Endpoint(id: 1234, identity: 26_450, namespace: "default",
                                 labels: ["k8s:app=xwing", "k8s:io.kubernetes.pod.namespace=default"], podName: "xwing",
                                 workloads: [.init(name: "xwing", kind: "Deployment")])
    static let server = Endpoint(id: nil, identity: 2, namespace: nil, labels: ["reserved:world"], podName: nil)

    static func flow(_ l7: Layer7?, verdict: Verdict = .forwarded, drop: DropReason? = nil, reply: Bool = false,
                     ipv6: Bool = false, udp: Bool = false, names: [String]? = nil, summary: String = "s") -> Flow {
        let ports = Layer4.Ports(sourcePort: 45_240, destinationPort: udp ? 53 : 80)
        return Flow(time: "2026-12-03T07:45:32.123456789Z", uuid: "0b3c9a57-5c0e-4f59-9d5e-7d4ef1f2a001", verdict: verdict,
                    dropReasonDesc: drop,
                    ip: ipv6 ? IPInfo(source: "2001:db8:18::10", destination: "2001:db8:19::10") : IPInfo(source: "198.18.0.10", destination: "198.19.0.10"),
                    l4: udp ? Layer4(udp: ports) : Layer4(tcp: ports), source: client, destination: server,
                    type: l7 == nil ? .l3l4 : .l7, nodeName: "node-1", destinationNames: names, l7: l7, isReply: reply,
                    trafficDirection: reply ? .ingress : .egress, summary: summary, sourceNames: reply ? names : nil)
    }

    static let flows: [Flow] = [
        flow(Layer7(type: .request, http: HTTP(method: "GET", url: "http://deathstar/v1/request-landing", protocol: "HTTP/1.1",
                                               headers: [.init(key: "User-Agent", value: "curl/8"), .init(key: "x-empty", value: "")]))),
        flow(Layer7(type: .response, latencyNs: 1_234_567, http: HTTP(code: 200, method: "GET", url: "http://deathstar/",
                                                                      protocol: "HTTP/2", headers: [])), reply: true, names: ["deathstar.test"]),
        flow(Layer7(type: .response, latencyNs: 10, http: HTTP(code: 403, method: "PUT", url: "http://d/exhaust-port", protocol: "HTTP/1.1",
                                                               headers: [])), verdict: .dropped, drop: .policyDenied, reply: true),
        flow(Layer7(type: .request, dns: DNS(query: "api.example.test.", qtypes: ["A"])), udp: true),
        flow(Layer7(type: .response, latencyNs: 99, dns: DNS(query: "api.example.test.", ips: ["198.19.0.14", "2001:db8:19::14"], ttl: 300,
                                                             cnames: ["x.example.test."], rcode: 3, qtypes: ["AAAA"], rrtypes: ["AAAA", "CNAME"])),
             reply: true, ipv6: true, udp: true),
        flow(nil, summary: "TCP Flags: SYN"),
        flow(nil, verdict: .dropped, drop: .policyDenied, summary: "policy denied"),
        flow(nil, verdict: .error, summary: String(repeating: "long summary, ", count: 40)),
    ]

    @Test func bytesDecodeToTheMessageTheGeneratedCodeBuilds() throws {
        for f in Self.flows {
            let record = FlowRecord(flow: f)
            let time = try #require(f.timestamp)
            let decoded = try Observer_GetFlowsResponse(serializedBytes: FlowWire.getFlowsResponse(record, time: time, nodeName: "node-1"))
            var expected = Observer_GetFlowsResponse()
            expected.flow = Flow_Flow(f)
            expected.nodeName = "node-1"
            expected.time = expected.flow.time
            #expect(decoded == expected, "\(f.summary)")
            // Field order and lengths as SwiftProtobuf writes them: byte for byte the same.
            #expect(try FlowWire.getFlowsResponse(record, time: time, nodeName: "node-1") == expected.serializedBytes() as [UInt8])
        }
    }
}
