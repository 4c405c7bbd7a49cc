import Foundation
@testable import LoupeAgent
import LoupeFlow
import LoupePolicy
import LoupeProxy
import NIOCore
import NIOEmbedded
import Testing

@Suite struct FlowAPITests {
    func flow(_ n: Int) -> Flow {
        Flow(time: "2026-11-24T22:45:32.000000000Z", uuid: "u\(n)", verdict: .forwarded,
             ip: IPInfo(source: "198.18.0.10", destination: "198.18.0.11"),
             l4: Layer4(tcp: .init(sourcePort: 1, destinationPort: 80)),
             source: Endpoint(id: 1, identity: 300, namespace: "a", labels: [], podName: "p"),
             destination: Endpoint(id: 2, identity: 301, namespace: "b", labels: [], podName: "q"),
             type: .l7, nodeName: "n", l7: Layer7(type: .request, latencyNs: 0, http: HTTP(method: "GET", url: "http://q/\(n)", protocol: "HTTP/1.1", headers: [])),
             isReply: false, trafficDirection: .egress, summary: "HTTP/1.1 GET http://q/\(n)")
    }

    func makeAPI() throws -> (EmbeddedChannel, ProxyEnvironment) {
        let env = ProxyEnvironment(inventory: Inventory(), flows: FlowStore(capacity: 100), configuration: ProxyConfiguration())
        let channel = EmbeddedChannel(handler: APIConnectionHandler(environment: env, datapathCounters: { [:] }))
        try channel.connect(to: SocketAddress(unixDomainSocketPath: "/run/loupe/test.sock")).wait() // active, as a real client
        return (channel, env)
    }

    func lines(_ channel: EmbeddedChannel) throws -> [String] {
        var out: [String] = []
        while let buf = try channel.readOutbound(as: ByteBuffer.self) {
            out += String(buffer: buf).split(separator: "\n").map(String.init)
        }
        return out
    }

    @Test func lastNMatchingThenClose() throws {
        let (channel, env) = try makeAPI()
        for i in 0..<10 { env.record(flow(i)) }
        try channel.writeInbound(ByteBuffer(string: #"{"flows":{"last":3,"follow":false,"filter":{"http-path":["^/[0-7]$"]}}}"#))
        let got = try lines(channel).map { try FlowEncoding.decode(jsonLine: $0).flow.uuid }
        #expect(got == ["u5", "u6", "u7"])
    }

    @Test func followStreamsNewFlows() throws {
        let (channel, env) = try makeAPI()
        env.record(flow(0))
        try channel.writeInbound(ByteBuffer(string: #"{"flows":{"last":1,"follow":true}}"#))
        env.record(flow(1))
        env.record(flow(2))
        (channel.eventLoop as! EmbeddedEventLoop).run()
        let got = try lines(channel).map { try FlowEncoding.decode(jsonLine: $0).flow.uuid }
        #expect(got == ["u0", "u1", "u2"])
    }

    @Test func aFollowerThatCannotKeepUpLosesFlowsCountedNotBuffered() throws {
        let (channel, env) = try makeAPI()
        try channel.writeInbound(ByteBuffer(string: #"{"flows":{"last":0,"follow":true}}"#))
        channel.isWritable = false
        let extra = 25
        for i in 0..<(APIConnectionHandler.queueLimit + extra) { env.record(flow(i)) }
        (channel.eventLoop as! EmbeddedEventLoop).run()
        #expect(try lines(channel).isEmpty)
        #expect(env.flows.lostEvents == ["observer": UInt64(extra)])
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        // The stream says what it lost, where it lost it, then carries on.
        let out = try lines(channel)
        #expect(out.count == APIConnectionHandler.queueLimit + 1)
        #expect(FlowEncoding.lostEvents(jsonLine: out[0]) == UInt64(extra))
    }

    @Test func badRequestsGetAnError() throws {
        let (channel, _) = try makeAPI()
        try channel.writeInbound(ByteBuffer(string: "not json"))
        #expect(try lines(channel).first?.contains("error") == true)
        let (c2, _) = try makeAPI()
        try c2.writeInbound(ByteBuffer(string: #"{"flows":{"filter":{"verdict":["MAYBE"]}}}"#))
        #expect(try lines(c2).first?.contains("--verdict") == true)
    }
}
