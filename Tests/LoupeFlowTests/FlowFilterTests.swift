import LoupeFlow
import Testing

@Suite struct FlowFilterTests {
    func filter(_ d: [String: [String]]) throws -> FlowFilter { try FlowFilter(dictionary: d) }

    @Test func httpStatusExactAndPrefix() throws {
        let ok = sampleFlow(reply: true, code: 200), forbidden = sampleFlow(reply: true, code: 403), err = sampleFlow(reply: true, code: 503)
        #expect(try filter(["http-status": ["403"]]).matches(forbidden))
        #expect(try !filter(["http-status": ["403"]]).matches(ok))
        #expect(try filter(["http-status": ["5+"]]).matches(err))
        #expect(try !filter(["http-status": ["5+"]]).matches(forbidden))
        #expect(try !filter(["http-status": ["2+"]]).matches(sampleFlow())) // requests carry no code
    }

    @Test func fromAndToPodFollowTheClientAndServerOnReplies() throws {
        let request = sampleFlow(), response = sampleFlow(reply: true, code: 200)
        let from = try filter(["from-pod": ["default/xwing"]])
        #expect(from.matches(request) && from.matches(response))
        let to = try filter(["to-pod": ["empire/deathstar"]])
        #expect(to.matches(request) && to.matches(response))
        #expect(try !filter(["from-pod": ["empire/deathstar"]]).matches(response))
        // A bare pod name means the default namespace, as in hubble.
        #expect(try filter(["pod": ["xwing"]]).matches(request))
        #expect(try !filter(["pod": ["deathstar"]]).matches(request))
    }

    @Test func namespaceVerdictMethodPathProtocol() throws {
        let f = sampleFlow(verdict: .dropped, path: "/v1/exhaust-port")
        #expect(try filter(["namespace": ["empire"]]).matches(f))
        #expect(try !filter(["namespace": ["kube-system"]]).matches(f))
        #expect(try filter(["verdict": ["dropped"]]).matches(f))
        #expect(try !filter(["verdict": ["FORWARDED"]]).matches(f))
        #expect(try filter(["http-method": ["post"]]).matches(f))
        #expect(try filter(["http-path": ["^/v1/exhaust"]]).matches(f))
        #expect(try !filter(["http-path": ["^/v2"]]).matches(f))
        #expect(try filter(["protocol": ["http"]]).matches(f))
        #expect(try filter(["protocol": ["tcp"]]).matches(f))
        #expect(try !filter(["protocol": ["udp"]]).matches(f))
    }

    @Test func badValuesAreRejectedWithTheFlagNamed() {
        #expect(throws: FlowFilter.FilterError.self) { try filter(["http-path": ["(unclosed"]]) }
        #expect(throws: FlowFilter.FilterError.self) { try filter(["http-status": ["abc"]]) }
        #expect(throws: FlowFilter.FilterError.self) { try filter(["verdict": ["MAYBE"]]) }
        do {
            _ = try filter(["http-status": ["4x"]])
        } catch {
            #expect("\(error)".contains("--http-status \"4x\""))
        }
    }

    @Test func grpcProtocolAndStatusFilters() throws {
        var call = sampleFlow(reply: true, code: 200)
        call.l7?.http?.headers = [.init(key: "content-type", value: "application/grpc"), .init(key: "grpc-status", value: "5")]
        let plain = sampleFlow(reply: true, code: 200)
        #expect(try filter(["protocol": ["grpc"]]).matches(call))
        #expect(try !filter(["protocol": ["grpc"]]).matches(plain))
        #expect(try filter(["protocol": ["http"]]).matches(call))
        #expect(try filter(["grpc-status": ["NOT_FOUND"]]).matches(call))
        #expect(try filter(["grpc-status": ["5"]]).matches(call))
        #expect(try !filter(["grpc-status": ["OK"]]).matches(call))
        #expect(try !filter(["grpc-status": ["0"]]).matches(plain))
        #expect(throws: FlowFilter.FilterError.self) { try filter(["grpc-status": ["NOT_A_STATUS"]]) }
        #expect(throws: FlowFilter.FilterError.self) { try filter(["protocol": ["gopher"]]) }
    }
}

@Suite struct FlowStoreTests {
    @Test func keepsTheNewestFlowsUpToCapacity() {
        let store = FlowStore(capacity: 3)
        for i in 0..<5 { var f = sampleFlow(); f.uuid = "\(i)"; store.append(f) }
        #expect(store.last(10).map(\.flow.uuid) == ["2", "3", "4"])
        #expect(store.last(2).map(\.flow.uuid) == ["3", "4"])
        #expect(store.totalFlows == 5)
    }

    @Test func lastNMatchingScansBackwards() {
        let store = FlowStore(capacity: 10)
        for i in 0..<6 { var f = sampleFlow(verdict: i % 2 == 0 ? .forwarded : .dropped); f.uuid = "\(i)"; store.append(f) }
        #expect(store.last(2, matching: { $0.verdict == .dropped }).map(\.flow.uuid) == ["3", "5"])
    }

    @Test func subscribersSeeEveryFlowAfterTheirBacklog() {
        let store = FlowStore(capacity: 10)
        store.append(sampleFlow())
        let seen = Box()
        let (id, backlog) = store.subscribe(last: 5) { seen.add($0.flow.uuid) }
        #expect(backlog.count == 1)
        var f = sampleFlow(); f.uuid = "live"
        store.append(f)
        store.unsubscribe(id)
        store.append(sampleFlow())
        #expect(seen.values == ["live"])
        store.countLost(source: "observer", 3)
        #expect(store.lostEvents == ["observer": 3])
    }
}

final class Box: @unchecked Sendable {
    private(set) var values: [String] = []
    func add(_ v: String) { values.append(v) }

}
