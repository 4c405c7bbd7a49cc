import LoupeFlow
@testable import LoupeProxy
import Testing

@Suite struct HTTP1StateMachineTests {
    typealias SM = HTTP1Intercept.StateMachine

    @Test func pipelinedResponsesPairWithRequestsInOrder() {
        var sm = SM()
        _ = sm.requestHead(method: "GET", uri: "/a", host: "web", fallbackAuthority: "x", version: "HTTP/1.1", upgrade: false, nowNanos: 100)
        _ = sm.requestHead(method: "POST", uri: "/b", host: "web", fallbackAuthority: "x", version: "HTTP/1.1", upgrade: false, nowNanos: 200)
        guard case .forward(let first, let latency1, 200) = sm.responseHead(code: 200, nowNanos: 1_100) else { Issue.record("no pair"); return }
        #expect(first.url == "http://web/a")
        #expect(latency1 == 1_000)
        guard case .forward(let second, let latency2, 404) = sm.responseHead(code: 404, nowNanos: 1_200) else { Issue.record("no pair"); return }
        #expect(second.method == "POST" && second.url == "http://web/b")
        #expect(latency2 == 1_000)
        #expect(sm.outstanding == 0)
        #expect(sm.responseHead(code: 200, nowNanos: 1) == .unsolicited(code: 200))
    }

    @Test func informationalResponsesKeepTheRequestWaiting() {
        var sm = SM()
        _ = sm.requestHead(method: "PUT", uri: "/big", host: nil, fallbackAuthority: "198.18.0.11:8080", version: "HTTP/1.1", upgrade: false, nowNanos: 0)
        #expect(sm.responseHead(code: 100, nowNanos: 5) == .informational(code: 100))
        guard case .forward(let e, _, 201) = sm.responseHead(code: 201, nowNanos: 9) else { Issue.record("no final"); return }
        #expect(e.url == "http://198.18.0.11:8080/big") // no Host header: the original destination
    }

    @Test func upgradeAndConnectTunnelOnlyWhenAccepted() {
        var sm = SM()
        _ = sm.requestHead(method: "GET", uri: "/ws", host: "h", fallbackAuthority: "x", version: "HTTP/1.1", upgrade: true, nowNanos: 0)
        guard case .forwardThenTunnel = sm.responseHead(code: 101, nowNanos: 1) else { Issue.record("101 must tunnel"); return }
        _ = sm.requestHead(method: "GET", uri: "/ws", host: "h", fallbackAuthority: "x", version: "HTTP/1.1", upgrade: true, nowNanos: 0)
        guard case .forward = sm.responseHead(code: 400, nowNanos: 1) else { Issue.record("refused upgrade stays HTTP"); return }
        _ = sm.requestHead(method: "CONNECT", uri: "db:5432", host: nil, fallbackAuthority: "x", version: "HTTP/1.1", upgrade: false, nowNanos: 0)
        guard case .forwardThenTunnel(let e, _, 200) = sm.responseHead(code: 200, nowNanos: 1) else { Issue.record("CONNECT 200 must tunnel"); return }
        #expect(e.url == "http://db:5432")
    }

    @Test func absoluteFormTargetIsKept() {
        var sm = SM()
        guard case .forward(let e) = sm.requestHead(method: "GET", uri: "http://api.example.test/x?y=1", host: "ignored", fallbackAuthority: "x",
                                                     version: "HTTP/1.1", upgrade: false, nowNanos: 0) else { return }
        #expect(e.url == "http://api.example.test/x?y=1")
    }
}

@Suite struct RedactionTests {
    func flow(url: String, headers: [(String, String)]) -> Flow {
        Flow(time: "t", uuid: "u", verdict: .forwarded, ip: IPInfo(source: "a", destination: "b"),
             l4: Layer4(tcp: .init(sourcePort: 1, destinationPort: 80)),
             source: Endpoint(id: 1, identity: 300, namespace: "a", labels: [], podName: "p"),
             destination: Endpoint(id: 2, identity: 301, namespace: "b", labels: [], podName: "q"), type: .l7, nodeName: "n",
             l7: Layer7(type: .request, latencyNs: 0, http: HTTP(method: "GET", url: url, protocol: "HTTP/1.1",
                                                                 headers: headers.map { HTTP.Header(key: $0.0, value: $0.1) })),
             isReply: false, trafficDirection: .egress, summary: "HTTP/1.1 GET \(url)")
    }

    @Test func credentialHeadersAndUserInfoAreRedactedByDefaultInHeadersURLAndSummary() {
        var f = flow(url: "http://user:pw@web/path@x?q=1",
                     headers: [("Authorization", "Bearer x"), ("cookie", "a=b"), ("Set-Cookie", "s"), ("Proxy-Authorization", "p"), ("Accept", "*/*")])
        Redaction().apply(&f)
        #expect(f.l7?.http?.headers.map(\.value) == ["HUBBLE_REDACTED", "HUBBLE_REDACTED", "HUBBLE_REDACTED", "HUBBLE_REDACTED", "*/*"])
        #expect(f.l7?.http?.url == "http://web/path@x?q=1")
        #expect(f.summary == "HTTP/1.1 GET http://web/path@x?q=1")
        #expect(Redaction().url("http://web/a") == "http://web/a")
    }

    @Test func queryRedactionAndHeaderListsAreOptions() {
        var r = Redaction()
        r.urlQuery = true
        #expect(r.url("http://web/a?token=s3cr3t&x=1#frag") == "http://web/a?token=HUBBLE_REDACTED&x=HUBBLE_REDACTED#frag")
        r.headersAllow = ["accept"]
        var f = flow(url: "http://web/a", headers: [("Accept", "*/*"), ("X-Api-Key", "k"), ("Authorization", "b")])
        r.apply(&f)
        #expect(f.l7?.http?.headers.map(\.value) == ["*/*", "HUBBLE_REDACTED", "HUBBLE_REDACTED"])
        var d = Redaction()
        d.headersDeny.insert("x-api-key")
        var g = flow(url: "http://web/a", headers: [("X-Api-Key", "k"), ("Accept", "*/*")])
        d.apply(&g)
        #expect(g.l7?.http?.headers.map(\.value) == ["HUBBLE_REDACTED", "*/*"])
    }
}

@Suite struct HTTP1DeniedRequestTests {
    typealias SM = HTTP1Intercept.StateMachine

    func head(_ sm: inout SM, _ path: String, denied: Bool) -> SM.RequestAction {
        sm.requestHead(method: "GET", uri: path, host: "h", fallbackAuthority: "x", version: "HTTP/1.1", upgrade: false, nowNanos: 0, denied: denied)
    }

    @Test func aDeniedRequestWithNothingAheadIsAnsweredAtOnce() {
        var sm = SM()
        guard case .respondLocally(let e) = head(&sm, "/no", denied: true) else { Issue.record("expected a local answer"); return }
        #expect(e.denied && sm.outstanding == 0)
        guard case .forward = head(&sm, "/yes", denied: false) else { Issue.record("the connection must stay usable"); return }
    }

    @Test func aDeniedPipelinedRequestWaitsForTheResponsesAheadOfIt() {
        var sm = SM()
        _ = head(&sm, "/a", denied: false)
        guard case .holdLocalResponse = head(&sm, "/b", denied: true) else { Issue.record("must wait for /a"); return }
        _ = head(&sm, "/c", denied: false)
        guard case .forward(let a, _, _) = sm.responseHead(code: 200, nowNanos: 1) else { Issue.record("a"); return }
        #expect(a.url == "http://h/a")
        #expect(sm.responseEnd().map(\.url) == ["http://h/b"])
        guard case .forward(let c, _, _) = sm.responseHead(code: 200, nowNanos: 2) else { Issue.record("c"); return }
        #expect(c.url == "http://h/c")
        #expect(sm.responseEnd().isEmpty && sm.outstanding == 0)
    }
}

@Suite struct FQDNCacheTests {
    @Test func namesExpireAfterTheirTTLAndLatestAnswerComesFirst() {
        let cache = FQDNCache()
        cache.learn(client: "198.18.0.10", names: ["api.example.test"], addresses: ["198.19.0.11"], ttl: 300, now: 1000)
        cache.learn(client: "198.18.0.10", names: ["edge.example.test", "api.example.test"], addresses: ["198.19.0.11"], ttl: 300, now: 1001)
        #expect(cache.names(client: "198.18.0.10", address: "198.19.0.11", now: 1002) == ["edge.example.test", "api.example.test"])
        #expect(cache.names(client: "198.18.0.99", address: "198.19.0.11", now: 1002).isEmpty, "per pod")
        #expect(cache.names(client: "198.18.0.10", address: "198.19.0.11", now: 1001 + 301).isEmpty)
        cache.learn(client: "p", names: ["short.test"], addresses: ["1.2.3.4"], ttl: 0, now: 0)
        #expect(cache.names(client: "p", address: "1.2.3.4", now: FQDNCache.minimumTTL - 1) == ["short.test"])
    }

    @Test func eachPodKeepsABoundedNumberOfAddresses() {
        let cache = FQDNCache()
        for i in 0..<(FQDNCache.maxEntriesPerPod + 10) {
            cache.learn(client: "p", names: ["n\(i)"], addresses: ["10.0.\(i / 256).\(i % 256)"], ttl: 300, now: 0)
        }
        #expect(cache.names(client: "p", address: "10.0.0.0", now: 1).isEmpty, "the oldest went first")
        #expect(!cache.names(client: "p", address: "10.0.16.9", now: 1).isEmpty)
    }
}
