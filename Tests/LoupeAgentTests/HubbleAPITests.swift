import Foundation
import GRPCCore
import GRPCInProcessTransport
@testable import LoupeAgent
import Logging
import LoupeAPI
import LoupeFlow
import LoupePolicy
import LoupeProxy
import Testing

/// The Hubble API's services over grpc-swift's in-process transport (the real gRPC call path,
/// serialisation included; the e2e suite drives them with Python grpcio and the hubble CLI).
@Suite struct HubbleAPITests {
    func flow(_ n: Int, second: Int = 0, ns: String = "a") -> Flow {
        Flow(time: "2026-11-24T22:45:\(second < 10 ? "0" : "")\(second).000000000Z", uuid: "u\(n)", verdict: .forwarded,
             ip: IPInfo(source: "198.18.0.10", destination: "198.18.0.11"),
             l4: Layer4(tcp: .init(sourcePort: 1, destinationPort: 80)),
             source: Endpoint(id: 1, identity: 300, namespace: ns, labels: ["k8s:app=p"], podName: "p"),
             destination: Endpoint(id: 2, identity: 301, namespace: "b", labels: [], podName: "q"),
             type: .l7, nodeName: "n", l7: Layer7(type: .request, latencyNs: 0, http: HTTP(method: "GET", url: "http://q/\(n)", protocol: "HTTP/1.1", headers: [])),
             isReply: false, trafficDirection: .egress, summary: "HTTP/1.1 GET http://q/\(n)")
    }

    func withObserver<T: Sendable>(capacity: Int = 100,
                                   _ body: (ProxyEnvironment, Observer_Observer.Client<InProcessTransport.Client>) async throws -> T) async throws -> T {
        let env = ProxyEnvironment(inventory: Inventory(), flows: FlowStore(capacity: capacity), configuration: ProxyConfiguration())
        let node = HubbleNode(name: "n", version: "test", address: "127.0.0.1:4244")
        let transport = InProcessTransport()
        let service = ObserverService(environment: env, node: node, followers: Followers(),
                                      peers: PeerDirectory(environment: env, selfNode: node, hubblePort: nil, probing: false, logger: Logger(label: "test")))
        return try await withGRPCServer(transport: transport.server, services: [ObserverRoutes(service: service)]) { _ in
            try await withGRPCClient(transport: transport.client) { client in
                try await body(env, Observer_Observer.Client(wrapping: client))
            }
        }
    }

    func uuids(_ observer: Observer_Observer.Client<InProcessTransport.Client>, _ request: Observer_GetFlowsRequest) async throws -> [String] {
        try await observer.getFlows(request) { response in
            var out: [String] = []
            for try await m in response.messages { if case .flow(let f)? = m.responseTypes { out.append(f.uuid) } }
            return out
        }
    }

    @Test func lastFirstAndFiltersHaveHubbleSemantics() async throws {
        try await withObserver { env, observer in
            for i in 0..<10 { env.record(flow(i, second: i, ns: i % 2 == 0 ? "even" : "odd")) }
            let got1 = try await uuids(observer, .with { $0.number = 3 })
            #expect(got1 == ["u7", "u8", "u9"])
            let got2 = try await uuids(observer, .with { $0.number = 2; $0.first = true })
            #expect(got2 == ["u0", "u1"])
            // Whitelist: any filter; all fields of one filter; blacklist: none.
            let even = Flow_FlowFilter.with { $0.sourcePod = ["even/"] }
            let got3 = try await uuids(observer, .with { $0.number = 2; $0.whitelist = [even] })
            #expect(got3 == ["u6", "u8"])
            let path = Flow_FlowFilter.with { $0.sourcePod = ["even/p"]; $0.httpPath = ["^/[0-4]$"] }
            let got4 = try await uuids(observer, .with { $0.whitelist = [path] })
            #expect(got4 == ["u0", "u2", "u4"])
            let got5 = try await uuids(observer, .with { $0.whitelist = [path]; $0.blacklist = [.with { $0.uuid = ["u2"] }] })
            #expect(got5 == ["u0", "u4"])
            // since/until bound the time (inclusive).
            let window = try await uuids(observer, .with {
                $0.since = .init(seconds: Int64(FlowTime.parse("2026-11-24T22:45:03Z")!.seconds), nanos: 0)
                $0.until = .init(seconds: Int64(FlowTime.parse("2026-11-24T22:45:05Z")!.seconds), nanos: 0)
            })
            #expect(window == ["u3", "u4", "u5"])
        }
    }

    @Test func badRequestsAreInvalidArgumentNamingTheField() async throws {
        try await withObserver { _, observer in
            await #expect(throws: RPCError.self) { try await uuids(observer, .with { $0.first = true; $0.follow = true }) }
            do {
                _ = try await uuids(observer, .with { $0.whitelist = [.with { $0.experimental.celExpression = ["true"] }] })
                Issue.record("a CEL filter was accepted")
            } catch let e as RPCError {
                #expect(e.code == .invalidArgument)
                #expect(e.message.contains("experimental.cel_expression"))
            }
            do {
                _ = try await uuids(observer, .with { $0.whitelist = [.with { $0.sourceIp = ["198.18.0.0/99"] }] })
                Issue.record("a bad CIDR was accepted")
            } catch let e as RPCError {
                #expect(e.code == .invalidArgument && e.message.contains("source_ip"))
            }
        }
    }

    @Test func aFollowerGetsTheBacklogThenNewFlows() async throws {
        try await withObserver { env, observer in
            env.record(flow(0))
            let seen = try await observer.getFlows(.with { $0.number = 1; $0.follow = true }) { response in
                var seen: [String] = []
                var iterator = response.messages.makeAsyncIterator()
                env.record(flow(1))
                env.record(flow(2))
                while seen.count < 3, let m = try await iterator.next() {
                    if case .flow(let f)? = m.responseTypes { seen.append(f.uuid) }
                }
                return seen
            }
            #expect(seen == ["u0", "u1", "u2"])
        }
    }

    /// A follower's queue (the stalled-reader case end to end is in the e2e suite: in-process,
    /// the transport buffers whatever the server writes).
    @Test func aFullFollowerQueueCountsWhatItDropsAndSaysSoEvenAfterTheLastFlow() async {
        let q = FollowerQueue<Int>(limit: 3)
        var signals = q.signals.makeAsyncIterator()
        #expect(q.push(1) && q.push(2) && q.push(3))
        #expect(!q.push(4) && !q.push(5))
        _ = await signals.next()
        let first = q.take()
        #expect(first.items == [1, 2, 3] && first.lost == 2)
        #expect(q.take().items.isEmpty && q.take().lost == 0)
        // A loss on its own (the queue refilled, then overflowed) still wakes the reader.
        for i in 0..<4 { q.push(i) }
        _ = await signals.next()
        #expect(q.take().lost == 1)
        q.finish()
        #expect(await signals.next() == nil)
    }

    @Test func serverStatusNodesAndNamespaces() async throws {
        try await withObserver(capacity: 4) { env, observer in
            let now = FlowTime.nowRFC3339()
            for i in 0..<6 {
                var f = flow(i, ns: "ns\(i % 2)")
                f.time = now
                env.record(f)
            }
            let status = try await observer.serverStatus(.init())
            #expect(status.numFlows == 4 && status.maxFlows == 4 && status.seenFlows == 6 && status.version == "test")
            let nodes = try await observer.getNodes(.init()).nodes
            #expect(nodes.map(\.name) == ["n"] && nodes[0].state == .nodeConnected && nodes[0].address == "127.0.0.1:4244")
            let namespaces = try await observer.getNamespaces(.init()).namespaces.map(\.namespace)
            #expect(namespaces == ["b", "ns0", "ns1"])
        }
    }

    @Test func flowsSurviveTheTripThroughHubblesMessage() {
        var f = flow(1)
        f.dropReasonDesc = .policyDenied
        f.verdict = .dropped
        f.l7 = nil
        f.type = .l3l4
        let m = Flow_Flow(f)
        #expect(m.eventType.type == 1 && m.eventType.subType == 133 && m.dropReason == 133 && m.dropReasonDesc == .policyDenied)
        #expect(Flow(m) == f)
        let l7 = flow(2)
        #expect(Flow(Flow_Flow(l7)) == l7)
        #expect(Flow_Flow(l7).eventType.type == 129)
    }

    /// Hubble's peers: this node first with its own address, the inventory's other nodes at
    /// InternalIP (IPv4 first) and the Hubble port, TLS names in Cilium's scheme.
    @Test func peersAreTheInventorysNodes() {
        var me = HubbleNode(name: "a", version: "test", address: "10.0.0.1:4244")
        let nodes = [ClusterNode(name: "a", addresses: ["10.0.0.1"]), ClusterNode(name: "b", addresses: ["fd00::2", "10.0.0.2"]),
                     ClusterNode(name: "c.x", addresses: ["fd00::3"]), ClusterNode(name: "d")]
        #expect(PeerDirectory.peers(nodes: nodes, selfNode: me, port: 4244).map { "\($0.name) \($0.address)" }
                == ["a 10.0.0.1:4244", "b 10.0.0.2:4244", "c.x [fd00::3]:4244"])
        #expect(PeerDirectory.peers(nodes: [], selfNode: me, port: nil).map(\.name) == ["a"])
        me.tlsServerName = "a.default.hubble-grpc.cilium.io"
        #expect(PeerDirectory.peers(nodes: nodes, selfNode: me, port: 4244).compactMap(\.tlsServerName)
                == ["a.default.hubble-grpc.cilium.io", "b.default.hubble-grpc.cilium.io", "c-x.default.hubble-grpc.cilium.io"])
    }
}
