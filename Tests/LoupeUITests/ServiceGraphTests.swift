import Foundation
import LoupeAPI
import LoupeFlow
import Testing
@testable import LoupeUI

/// Flows as the agent records them, turned into Hubble's messages (what `loupe ui` receives).
enum Flows {
    static func endpoint(_ ns: String?, _ pod: String?, workload: String? = nil, labels: [String] = []) -> Endpoint {
        Endpoint(id: nil, identity: 1, namespace: ns, labels: labels, podName: pod,
                 workloads: workload.map { [Endpoint.Workload(name: $0, kind: "Deployment")] })
    }

    static func http(_ client: Endpoint, _ server: Endpoint, method: String = "GET", url: String, code: Int? = nil,
                     verdict: Verdict = .forwarded, seconds: Int = 1_796_000_000, latencyNs: UInt64 = 2_000_000) -> Flow_Flow {
        let reply = code != nil
        var f = Flow(time: FlowTime.rfc3339(seconds: seconds, nanoseconds: 0), uuid: UUID().uuidString, verdict: verdict,
                     ip: IPInfo(source: "198.18.0.2", destination: "198.18.0.3"),
                     l4: Layer4(tcp: .init(sourcePort: reply ? 80 : 40000, destinationPort: reply ? 40000 : 80)),
                     source: reply ? server : client, destination: reply ? client : server, type: .l7, nodeName: "n",
                     l7: Layer7(type: reply ? .response : .request, latencyNs: reply ? latencyNs : nil,
                                http: HTTP(code: code, method: method, url: url, protocol: "HTTP/1.1", headers: [])),
                     isReply: reply, trafficDirection: .egress, summary: "")
        f.l7?.latencyNs = reply ? String(latencyNs) : nil
        return Flow_Flow(f)
    }

    static func denied(_ client: Endpoint, _ server: Endpoint, seconds: Int = 1_796_000_000) -> Flow_Flow {
        Flow_Flow(Flow(time: FlowTime.rfc3339(seconds: seconds, nanoseconds: 0), uuid: UUID().uuidString, verdict: .dropped,
                       dropReasonDesc: .policyDenied, ip: IPInfo(source: "198.18.0.4", destination: "198.18.0.3"),
                       l4: Layer4(tcp: .init(sourcePort: 41000, destinationPort: 80)), source: client, destination: server,
                       type: .l3l4, nodeName: "n", isReply: false, trafficDirection: .ingress, summary: "denied"))
    }
}

@Suite struct ServiceGraphTests {
    let tie = Flows.endpoint("default", "tiefighter", workload: "tiefighter")
    let xwing = Flows.endpoint("default", "xwing", labels: ["k8s:app=xwing"])
    let deathstar = Flows.endpoint("default", "deathstar-7d9f", workload: "deathstar")

    @Test func starWarsBecomesTwoEdgesWithVerdictsStatusesAndTemplatedEndpoints() {
        var g = ServiceGraph()
        g.add(Flows.http(tie, deathstar, method: "POST", url: "http://ds/v1/request-landing"))
        g.add(Flows.http(tie, deathstar, method: "POST", url: "http://ds/v1/request-landing", code: 200))
        g.add(Flows.http(tie, deathstar, method: "PUT", url: "http://ds/v1/exhaust-port", verdict: .dropped))
        g.add(Flows.http(tie, deathstar, method: "PUT", url: "http://ds/v1/exhaust-port", code: 403, verdict: .dropped))
        g.add(Flows.http(tie, deathstar, url: "http://ds/v1/ships/42?token=s3cret"))
        g.add(Flows.http(tie, deathstar, url: "http://ds/v1/ships/43", code: 200))
        g.add(Flows.denied(xwing, deathstar))
        let s = g.snapshot(GraphQuery())

        #expect(s.nodes.map(\.id) == ["default/deathstar", "default/tiefighter", "default/xwing"])
        let ds = s.nodes.first { $0.id == "default/deathstar" }!
        #expect(ds.access.map { "\($0.port)/\($0.l4)/\($0.l7 ?? "-")" } == ["80/TCP/http"]) // the bare 80/TCP folds into it
        let tieEdge = s.edges.first { $0.source == "default/tiefighter" }!
        #expect(tieEdge.destination == "default/deathstar" && tieEdge.port == 80 && tieEdge.protocol == "http")
        #expect(tieEdge.requests == 3)
        #expect(tieEdge.verdicts == ["FORWARDED": 2, "DROPPED": 1])
        #expect(tieEdge.httpStatus == ["2xx": 2, "4xx": 1])
        #expect(tieEdge.latencyMs != nil && tieEdge.latencyMs!.p50 > 1.5 && tieEdge.latencyMs!.p50 < 2.5)
        let xEdge = s.edges.first { $0.source == "default/xwing" }!
        #expect(xEdge.protocol == "tcp" && xEdge.verdicts == ["DROPPED": 1] && xEdge.requests == 1)

        let eps = s.endpoints["default/deathstar"]!
        let put = eps.first { $0.method == "PUT" }!
        #expect(put.path == "/v1/exhaust-port" && put.requests == 1 && put.statuses == ["403": 1])
        let ships = eps.first { $0.path == "/v1/ships/{id}" }!
        #expect(ships.requests == 1 && ships.statuses == ["200": 1]) // ids collapsed, query dropped
        #expect(!eps.contains { $0.path.contains("s3cret") })
    }

    @Test func namespaceVerdictAndProtocolFiltersPickEdges() throws {
        var g = ServiceGraph()
        let client = Flows.endpoint("shop", "client", workload: "client")
        let web = Flows.endpoint("backend", "web", workload: "web")
        g.add(Flows.http(client, web, url: "http://web/"))
        g.add(Flows.denied(xwing, deathstar))
        let onlyDefault = g.snapshot(try GraphQuery(parameters: [("namespace", "default")]))
        #expect(Set(onlyDefault.nodes.map(\.id)) == ["default/xwing", "default/deathstar"])
        #expect(onlyDefault.namespaces == ["backend", "default", "shop"]) // the picker still lists all
        let dropped = g.snapshot(try GraphQuery(parameters: [("verdict", "dropped")]))
        #expect(dropped.edges.map(\.source) == ["default/xwing"])
        let http = g.snapshot(try GraphQuery(parameters: [("protocol", "http")]))
        #expect(http.edges.map(\.source) == ["shop/client"])
        #expect(throws: ObserveQuery.Invalid.self) { try GraphQuery(parameters: [("verdict", "MAYBE")]) }
        #expect(throws: ObserveQuery.Invalid.self) { try GraphQuery(parameters: [("max-nodes", "0")]) }
        #expect(throws: ObserveQuery.Invalid.self) { try GraphQuery(parameters: [("colour", "red")]) }
    }

    @Test func sinceKeepsWholeMinutesAndOlderSlicesMergeIntoOne() throws {
        var g = ServiceGraph()
        let base = 1_796_000_000 - 1_796_000_000 % 60
        for minute in 0..<(ServiceGraph.sliceCount + 5) {
            g.add(Flows.http(tie, deathstar, url: "http://ds/m\(minute)", seconds: base + minute * 60))
        }
        #expect(g.slices.count == ServiceGraph.sliceCount)
        let all = g.snapshot(GraphQuery())
        #expect(all.edges.first!.requests == ServiceGraph.sliceCount + 5)
        var q = GraphQuery()
        q.since = Int64(base + (ServiceGraph.sliceCount + 2) * 60)
        #expect(g.snapshot(q).edges.first!.requests == 3)
        // A late flow for a minute already merged lands in the older aggregate, not lost.
        g.add(Flows.http(tie, deathstar, url: "http://ds/late", seconds: base))
        #expect(g.snapshot(GraphQuery()).edges.first!.requests == ServiceGraph.sliceCount + 6)
    }

    @Test func busyMapsCollapseIntoMoreCardsAndCountWhatIsNotDrawn() {
        var g = ServiceGraph()
        for i in 0..<50 {
            let c = Flows.endpoint("load", "client-\(i)", workload: "client-\(i)")
            for _ in 0..<(i + 1) { g.add(Flows.http(c, deathstar, url: "http://ds/")) }
        }
        var q = GraphQuery()
        q.maxNodes = 11
        q.maxEdges = 5
        let s = g.snapshot(q)
        let more = s.nodes.first { $0.kind == "more" }!
        // deathstar and the 9 busiest clients are drawn; 41 clients become one card.
        #expect(more.id == "load/+more" && more.hidden == 41 && more.name == "+41 more")
        #expect(s.nodes.count == 11)
        #expect(s.hidden.nodes == 41)
        #expect(s.edges.count == 5 && s.hidden.edges == 5) // 9 kept clients' edges + the "+more" edge
        #expect(s.edges.first!.source == "load/+more") // 41 hidden clients' requests, merged
        #expect(s.nodes.contains { $0.id == "load/client-49" }) // the busiest stay
    }

    @Test func worldIsNamedByDNSAndDNSQueriesAreListedPerClient() {
        var g = ServiceGraph()
        var q = Flow_Flow()
        q.time = .init(seconds: 1_796_000_000, nanos: 0)
        q.source.namespace = "shop"
        q.source.podName = "client-5f6d"
        var w = Flow_Workload()
        w.name = "client"
        q.source.workloads = [w]
        q.destination.labels = ["reserved:world"]
        q.destinationNames = ["api.example.test"]
        q.l4.udp.destinationPort = 53
        q.l7.type = .request
        q.l7.dns.query = "api.example.test."
        g.add(q)
        let s = g.snapshot(GraphQuery())
        #expect(s.nodes.contains { $0.id == "api.example.test" && $0.kind == "world" })
        #expect(s.edges.first!.protocol == "dns" && s.edges.first!.port == 53)
        #expect(s.dnsNames["shop/client"]!.map(\.name) == ["api.example.test."])
    }

    @Test func aResumedStreamIsNotCountedTwiceButLateFlowsCount() {
        struct Unused: Error {}
        let follower = FlowFollower(endpoint: HubbleEndpoint(name: "test", makeTransport: { throw Unused() }), history: 0,
                                    logger: .init(label: "test"))
        let a = Flows.http(tie, deathstar, url: "http://ds/a", seconds: 1_796_000_100)
        let late = Flows.http(tie, deathstar, url: "http://ds/late", seconds: 1_796_000_050) // another node's, merged late
        follower.ingest(a)
        follower.ingest(late)
        follower.ingest(a) // sent again after a reconnect with since = a's time
        #expect(follower.status.flowsSeen == 2)
        #expect(follower.state.withLock { $0.lastTime.seconds } == 1_796_000_100)
        let subscriber = LiveSubscriber(filters: try! FlowFilterSet(whitelist: [], blacklist: []), extra: nil)
        _ = follower.subscribe(subscriber)
        for i in 0..<(LiveSubscriber.capacity + 5) {
            follower.ingest(Flows.http(tie, deathstar, url: "http://ds/\(i)", seconds: 1_796_000_200))
        }
        let (flows, skipped) = subscriber.drain()
        #expect(flows.count == LiveSubscriber.capacity && skipped == 5) // what a page cannot take is counted
    }

    @Test func credentialsAreRedactedAgainBeforeThePageSeesThem() {
        var f = Flow(Flows.http(tie, deathstar, url: "http://user:pw@ds/v1/x"))
        f.l7?.http?.headers = [HTTP.Header(key: "Authorization", value: "Bearer s3cret"), HTTP.Header(key: "X-Ok", value: "1")]
        let shown = UIServer.shown(Flow_Flow(f)).flow
        #expect(shown.l7?.http?.headers.map(\.value) == ["HUBBLE_REDACTED", "1"])
        #expect(shown.l7?.http?.url == "http://ds/v1/x")
    }

    @Test func pathTemplatesCollapseIdsAndBoundWhatAPodChooses() {
        #expect(PathTemplate.of(url: "http://h/v1/users/12345/orders/9f1c2e4a-1b2c-4d5e-8f90-1234567890ab") == "/v1/users/{id}/orders/{id}")
        #expect(PathTemplate.of(url: "/v1/exhaust-port?x=1") == "/v1/exhaust-port")
        #expect(PathTemplate.of(url: "https://h") == "/")
        #expect(PathTemplate.of(url: "/blob/deadbeefcafe1234") == "/blob/{id}")
        #expect(PathTemplate.of(url: "/t/eyJhbGciOiJIUzI1NiJ9abc123") == "/t/{id}")
        #expect(PathTemplate.of(url: "/" + String(repeating: "a", count: 500)).count < 60)
        #expect(PathTemplate.of(url: String(repeating: "/x", count: 100)).hasSuffix("/…"))
    }
}

@Suite struct ObserveQueryTests {
    @Test func urlParametersBuildTheRequestLoupeObserveSends() throws {
        let q = try ObserveQuery(parameters: [("namespace", "default"), ("verdict", "DROPPED"), ("last", "5")])
        var cli = ObserveQuery()
        cli.filters = ["namespace": ["default"], "verdict": ["DROPPED"]]
        cli.last = 5
        #expect(try q.request() == cli.request())
        let r = try q.request()
        #expect(r.number == 5 && r.whitelist.count == 2 && r.whitelist[0].sourcePod == ["default/"])
        #expect(r.whitelist[1].destinationPod == ["default/"] && r.whitelist[1].verdict == [.dropped])
    }

    @Test func workloadFiltersPairWithTheirNamespace() throws {
        let r = try ObserveQuery(parameters: [("namespace", "default"), ("workload", "deathstar")]).request()
        #expect(r.whitelist.count == 2)
        #expect(r.whitelist[0].sourcePod == ["default/"] && r.whitelist[0].sourceWorkload.map(\.name) == ["deathstar"])
        #expect(r.whitelist[1].destinationWorkload.map(\.name) == ["deathstar"])
    }

    @Test func clientSideFiltersKeepTheFirstOrLastN() throws {
        let last = try ObserveQuery(parameters: [("dns-rcode", "NXDOMAIN"), ("last", "2")])
        #expect(last.chosen(from: [1, 2, 3, 4]) == [3, 4] && !last.isComplete(held: 9))
        let first = try ObserveQuery(parameters: [("grpc-status", "NOT_FOUND"), ("first", "2")])
        #expect(first.chosen(from: [1, 2, 3]) == [1, 2] && first.isComplete(held: 2) && !first.isComplete(held: 1))
        let plain = try ObserveQuery(parameters: [("last", "2")]) // the server picks: nothing held back
        #expect(plain.chosen(from: [1, 2, 3]) == [1, 2, 3] && !plain.isComplete(held: 3))
    }

    @Test func badParametersAreNamed() {
        func message(_ p: [(String, String)]) -> String {
            do { _ = try ObserveQuery(parameters: p).request(); return "" } catch { return "\(error)" }
        }
        #expect(message([("bogus", "1")]).hasPrefix("bogus \"1\": unknown filter"))
        #expect(message([("last", "many")]) == "last \"many\": expected a number of flows")
        #expect(message([("verdict", "NOPE")]).hasPrefix("verdict \"NOPE\""))
        #expect(message([("ip", "nope")]).hasPrefix("ip: \"nope\""))
        #expect(message([("to-port", "99999")]).hasPrefix("to-port: \"99999\""))
        #expect(message([("since", "yesterday")]).hasPrefix("since \"yesterday\""))
        #expect(message([("type", "warp")]).hasPrefix("type \"warp\""))
    }
}
