import LoupeFlow
import Testing

func sampleFlow(reply: Bool = false, code: Int? = nil, verdict: Verdict = .forwarded, path: String = "/v1/request-landing") -> Flow {
    let xwing = Endpoint(id: 12, identity: 26450, namespace: "default", labels: ["k8s:class=xwing", "k8s:org=alliance"], podName: "xwing")
    let deathstar = Endpoint(id: 34, identity: 9313, namespace: "empire", labels: ["k8s:class=deathstar", "k8s:org=empire"], podName: "deathstar")
    let url = "http://deathstar\(path)"
    return Flow(
        time: "2026-11-24T22:45:32.123456789Z", uuid: "4c1b2f9e-0000-4000-8000-000000000000", verdict: verdict,
        ip: reply ? IPInfo(source: "198.18.0.11", destination: "198.18.0.10") : IPInfo(source: "198.18.0.10", destination: "198.18.0.11"),
        l4: Layer4(tcp: reply ? .init(sourcePort: 80, destinationPort: 45240) : .init(sourcePort: 45240, destinationPort: 80)),
        source: reply ? deathstar : xwing, destination: reply ? xwing : deathstar, type: .l7, nodeName: "loupe-node",
        l7: Layer7(type: reply ? .response : .request, latencyNs: reply ? 3_000_000 : 0,
                   http: HTTP(code: code, method: "POST", url: url, protocol: "HTTP/1.1", headers: [.init(key: "Accept", value: "*/*")])),
        isReply: reply, trafficDirection: .egress,
        summary: reply ? "HTTP/1.1 \(code ?? 0) 3ms (POST \(url))" : "HTTP/1.1 POST \(url)")
}

@Suite struct FlowEncodingTests {
    @Test func jsonLineHasHubbleShapeAndOrder() throws {
        let line = FlowEncoding.jsonLine(FlowRecord(flow: sampleFlow()))
        #expect(line.hasPrefix("{\"flow\":{\"time\":\"2026-11-24T22:45:32.123456789Z\",\"uuid\":"))
        #expect(line.hasSuffix("},\"node_name\":\"loupe-node\",\"time\":\"2026-11-24T22:45:32.123456789Z\"}"))
        #expect(line.contains("\"l4\":{\"TCP\":{\"source_port\":45240,\"destination_port\":80}}"))
        #expect(line.contains("\"source\":{\"ID\":12,\"identity\":26450,\"namespace\":\"default\",\"labels\":[\"k8s:class=xwing\",\"k8s:org=alliance\"],\"pod_name\":\"xwing\"}"))
        // protojson omits zero values: a request has no latency_ns.
        #expect(line.contains("\"l7\":{\"type\":\"REQUEST\",\"http\":{\"method\":\"POST\",\"url\":\"http://deathstar/v1/request-landing\""))
        #expect(line.contains("\"traffic_direction\":\"EGRESS\",\"is_reply\":false,\"Summary\":\"HTTP/1.1 POST http://deathstar/v1/request-landing\"}"))
        #expect(!line.contains("\n"))
    }

    /// What Hubble's printer keys on: an L3/L4 policy drop is a drop event with the reason as
    /// sub-type (it prints "Policy denied DROPPED"); other L3/L4 flows are traces to the proxy.
    @Test func l3l4FlowsCarryHubbleEventTypes() throws {
        var drop = sampleFlow(verdict: .dropped)
        drop.l7 = nil
        drop.type = .l3l4
        drop.dropReasonDesc = .policyDenied
        let line = FlowEncoding.jsonLine(FlowRecord(flow: drop))
        #expect(line.contains("\"verdict\":\"DROPPED\",\"drop_reason\":133,\"IP\":"))
        #expect(line.contains("\"traffic_direction\":\"EGRESS\",\"drop_reason_desc\":\"POLICY_DENIED\",\"is_reply\":false"))
        #expect(line.contains("\"event_type\":{\"type\":1,\"sub_type\":133}"))
        #expect(!line.contains("trace_observation_point"))
        #expect(try FlowEncoding.decode(jsonLine: line).flow == drop)
        var opaque = drop
        opaque.verdict = .forwarded
        opaque.dropReasonDesc = nil
        let forwarded = FlowEncoding.jsonLine(FlowRecord(flow: opaque))
        #expect(forwarded.contains("\"event_type\":{\"type\":4,\"sub_type\":1}"))
        #expect(forwarded.contains("\"trace_observation_point\":\"TO_PROXY\""))
        #expect(!forwarded.contains("drop_reason"))
        let l7 = FlowEncoding.jsonLine(FlowRecord(flow: sampleFlow(verdict: .dropped)))
        #expect(l7.contains("\"event_type\":{\"type\":129}") && !l7.contains("\"drop_reason\":"))
    }

    @Test func jsonRoundTrips() throws {
        for f in [sampleFlow(), sampleFlow(reply: true, code: 200), sampleFlow(verdict: .dropped)] {
            let decoded = try FlowEncoding.decode(jsonLine: FlowEncoding.jsonLine(FlowRecord(flow: f)))
            #expect(decoded.flow == f)
        }
    }

    /// HTTP flows are recorded without a summary: it is said from the HTTP record when read,
    /// as Cilium's proxy says it, redacted with the URL, and a round trip keeps it derived.
    @Test func httpFlowsWithoutASummarySayItFromTheirRecord() throws {
        var request = sampleFlow(), response = sampleFlow(reply: true, code: 404)
        let explicit = (request.summary, response.summary)
        request.summary = ""
        response.summary = ""
        #expect((request.summary, response.summary) == explicit)
        #expect(request.summary == "HTTP/1.1 POST http://deathstar/v1/request-landing")
        #expect(response.summary == "HTTP/1.1 404 3ms (POST http://deathstar/v1/request-landing)")
        for f in [request, response] {
            let line = FlowEncoding.jsonLine(FlowRecord(flow: f))
            #expect(line.contains("\"Summary\":\"\(f.summary)\""))
            #expect(try FlowEncoding.decode(jsonLine: line).flow == f)
        }
        var secret = sampleFlow(path: "/v1?x=1")
        secret.summary = ""
        secret.l7?.http?.url = "http://luke:pw@deathstar/v1?x=1"
        Redaction().apply(&secret)
        #expect(secret.summary == "HTTP/1.1 POST http://deathstar/v1?x=1")
        var dns = sampleFlow()
        dns.l7 = nil
        dns.summary = ""
        #expect(dns.summary == "")
    }

    @Test func dnsFlowsWithoutASummarySayItFromTheirRecord() throws {
        var query = sampleFlow(), answer = sampleFlow(reply: true), nx = sampleFlow(reply: true)
        query.summary = ""
        answer.summary = ""
        nx.summary = ""
        query.l7 = Layer7(type: .request, dns: DNS(query: "api.example.test.", qtypes: ["A", "AAAA"]))
        answer.l7 = Layer7(type: .response, latencyNs: 1_000, dns: DNS(query: "api.example.test.", ips: ["198.19.0.11", "198.19.0.12"],
                                                                      ttl: 300, rcode: 0, qtypes: ["A"], rrtypes: ["A", "A"]))
        nx.l7 = Layer7(type: .response, latencyNs: 1_000, dns: DNS(query: "nx.example.test.", rcode: 3, qtypes: ["A"]))
        #expect(query.summary == "DNS Query api.example.test. A,AAAA")
        #expect(answer.summary == #"DNS Answer "198.19.0.11","198.19.0.12" TTL: 300 (Proxy api.example.test. A)"#)
        #expect(nx.summary == "DNS Answer RCode: Non-Existent Domain TTL: 4294967295 (Proxy nx.example.test. A)")
        for f in [query, answer, nx] {
            let line = FlowEncoding.jsonLine(FlowRecord(flow: f))
            #expect(line.contains("\"Summary\":\"\(f.summary.replacingOccurrences(of: "\"", with: "\\\""))\""))
            #expect(try FlowEncoding.decode(jsonLine: line).flow == f)
        }
        nx.summary = "DNS Answer RCode: Server Failure TTL: 4294967295 (Proxy nx.example.test. A) (upstream did not answer)"
        #expect(nx.summary.hasSuffix("(upstream did not answer)"))
        #expect(DNS.rcodeDescription(5) == "Query Refused" && DNS.rcodeDescription(9) == "RCode 9")
    }

    @Test func stringsAreEscaped() throws {
        var f = sampleFlow()
        f.summary = "quote \" backslash \\ newline \n tab \t bell \u{07}"
        let line = FlowEncoding.jsonLine(FlowRecord(flow: f))
        #expect(line.contains(#"quote \" backslash \\ newline \n tab \t bell \u0007"#))
        #expect(try FlowEncoding.decode(jsonLine: line).flow.summary == f.summary)
    }

    @Test func nonASCIIPassesUnchangedAndTheByteLineIsTheStringLinePlusNewline() throws {
        var f = sampleFlow(path: "/caf\u{e9}/\u{1F680}")
        f.summary = "\u{7f} r\u{e9}sum\u{e9} \r \u{1f}"
        let record = FlowRecord(flow: f)
        let line = FlowEncoding.jsonLine(record)
        #expect(line.contains("http://deathstar/caf\u{e9}/\u{1F680}"))
        #expect(line.contains(#"\r \u001f"#))
        #expect(try FlowEncoding.decode(jsonLine: line).flow == f)
        #expect(FlowEncoding.jsonLineBytes(record) == Array((line + "\n").utf8))
    }

    @Test func compactLineReadsLikeHubbleObserve() {
        #expect(FlowEncoding.compact(sampleFlow()) ==
            "Nov 24 22:45:32.123: default/xwing:45240 (ID:26450) -> empire/deathstar:80 (ID:9313) http-request FORWARDED (HTTP/1.1 POST http://deathstar/v1/request-landing)")
        // A reply prints the client first with an arrow pointing back, as hubble does.
        #expect(FlowEncoding.compact(sampleFlow(reply: true, code: 200)) ==
            "Nov 24 22:45:32.123: default/xwing:45240 (ID:26450) <- empire/deathstar:80 (ID:9313) http-response FORWARDED (HTTP/1.1 200 3ms (POST http://deathstar/v1/request-landing))")
    }

    @Test func dictBlocksAndSingleDigitDaysReadLikeHubbleObserve() {
        var f = sampleFlow(reply: true, code: 200)
        f.time = "2026-12-02T15:53:12.664000000Z"
        // (as the real hubble CLI printed a Loupe flow: the flow's own source first, no IDs)
        #expect(FlowEncoding.dict(f) == """
              TIMESTAMP: Dec  2 15:53:12.664
                 SOURCE: empire/deathstar:80
            DESTINATION: default/xwing:45240
                   TYPE: http-response
                VERDICT: FORWARDED
                SUMMARY: HTTP/1.1 200 3ms (POST http://deathstar/v1/request-landing)
            """)
    }

    @Test func worldPeerIsPrintedByAddress() {
        var f = sampleFlow()
        f.destination = Endpoint(id: nil, identity: 2, namespace: nil, labels: ["reserved:world"], podName: nil)
        f.ip = IPInfo(source: "198.18.0.10", destination: "2001:db8:19::a")
        #expect(FlowEncoding.compact(f).contains("-> [2001:db8:19::a]:80 (world) http-request"))
    }

    @Test func rfc3339HasNanoseconds() {
        #expect(FlowTime.rfc3339(seconds: 0, nanoseconds: 5) == "1970-01-01T00:00:00.000000005Z")
        #expect(FlowTime.rfc3339(seconds: 1_795_560_332, nanoseconds: 123_456_789) == "2026-11-24T22:45:32.123456789Z")
    }
}

@Suite struct FlowUUIDTests {
    @Test func uuidsAreVersion4AndDistinct() {
        let ids = (0..<10_000).map { _ in FlowUUID.make() }
        #expect(Set(ids).count == ids.count)
        for id in ids.prefix(100) {
            let c = Array(id)
            #expect(c.count == 36 && c[8] == "-" && c[13] == "-" && c[18] == "-" && c[23] == "-")
            #expect(c[14] == "4")
            #expect("89ab".contains(c[19]))
        }
    }
}

@Suite struct FlowDecodingTests {
    @Test func emptyFieldsOmittedByTheWriterDecodeAsEmpty() throws {
        var f = sampleFlow()
        f.l7 = Layer7(type: .response, latencyNs: 0, http: HTTP(code: 400, method: "", url: "", protocol: "HTTP/1.1", headers: []))
        let line = FlowEncoding.jsonLine(FlowRecord(flow: f))
        #expect(!line.contains("\"headers\"") && !line.contains("\"method\""))
        #expect(try FlowEncoding.decode(jsonLine: line).flow == f)
    }

    @Test func aMinimalHubbleLineDecodes() throws {
        let line = #"{"flow":{"time":"2026-11-24T22:45:32Z","verdict":"DROPPED","Type":"L3_L4","Summary":"TCP Flags: SYN"},"node_name":"n","time":"2026-11-24T22:45:32Z"}"#
        let r = try FlowEncoding.decode(jsonLine: line)
        #expect(r.flow.verdict == .dropped && r.flow.isReply == false && r.flow.summary == "TCP Flags: SYN")
    }
}

@Suite struct FlowTimeNowTests {
    @Test func nowHasTheFullShape() {
        let t = Array(FlowTime.nowRFC3339())
        #expect(t.count == 30 && t[4] == "-" && t[10] == "T" && t[19] == "." && t[29] == "Z")
    }

    @Test func nowIsTheClocksTimeToTheNanosecond() throws {
        let before = FlowTime.now()
        let text = FlowTime.nowRFC3339()
        let after = FlowTime.now()
        let t = try #require(FlowTime.parse(text))
        #expect(FlowTime.rfc3339(seconds: t.seconds, nanoseconds: t.nanoseconds) == text)
        let ns = { (s: Int, n: Int) in s * 1_000_000_000 + n }
        #expect(ns(before.seconds, before.nanoseconds) <= ns(t.seconds, t.nanoseconds))
        #expect(ns(t.seconds, t.nanoseconds) <= ns(after.seconds, after.nanoseconds))
    }
}

@Suite struct FlowStampTests {
    static func recorded() -> Flow {
        Flow(verdict: .forwarded, ip: IPInfo(source: "198.18.0.10", destination: "198.18.0.11"),
             l4: Layer4(tcp: .init(sourcePort: 40_000, destinationPort: 80)),
             source: Endpoint(id: 1, identity: 2, namespace: "a", labels: [], podName: "p"),
             destination: Endpoint(id: 3, identity: 4, namespace: "b", labels: [], podName: "q"),
             type: .l3l4, nodeName: "n", isReply: false, trafficDirection: .egress, summary: "s")
    }

    @Test func aRecordedFlowHasTheClocksTimeAndAFreshVersion4IDThatStayPut() throws {
        let before = FlowTime.now()
        let f = Self.recorded()
        let t = try #require(FlowTime.parse(f.time))
        #expect(f.timestamp! == t && f.time == f.time)
        #expect((t.seconds, t.nanoseconds) >= (before.seconds, before.nanoseconds))
        let id = Array(f.uuid)
        #expect(id.count == 36 && id[8] == "-" && id[14] == "4" && "89ab".contains(id[19]) && f.uuid == f.uuid)
        // The same flow as text (decoded, or set by hand) is the same flow.
        var g = f
        g.time = f.time
        g.uuid = f.uuid
        #expect(g == f)
        var h = f
        h.renew()
        #expect(h.uuid != f.uuid && h != f)
    }
}
