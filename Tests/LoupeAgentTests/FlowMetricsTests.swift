@testable import LoupeAgent
import Logging
import LoupeFlow
import LoupePolicy
import LoupeProxy
import NIOEmbedded
import Testing

/// Hubble's metric semantics as a pure function of flows.
@Suite struct FlowMetricsTests {
    let client = Endpoint(id: 1, identity: 300, namespace: "shop", labels: ["k8s:app=client"], podName: "client-7d9",
                          workloads: [Endpoint.Workload(name: "client", kind: "Deployment")])
    let server = Endpoint(id: 2, identity: 301, namespace: "backend", labels: ["k8s:app=web"], podName: "web-5f2",
                          workloads: [Endpoint.Workload(name: "web", kind: "Deployment")])

    func http(reply: Bool, code: Int? = nil, verdict: Verdict = .forwarded, method: String = "GET", latencyNs: UInt64 = 0) -> Flow {
        Flow(time: "2026-11-25T00:00:00.000000000Z", uuid: "u", verdict: verdict,
             ip: IPInfo(source: "198.18.0.10", destination: "198.18.0.11"),
             l4: Layer4(tcp: .init(sourcePort: 1, destinationPort: 80)),
             source: reply ? server : client, destination: reply ? client : server,
             type: .l7, nodeName: "n",
             l7: Layer7(type: reply ? .response : .request, latencyNs: latencyNs,
                        http: HTTP(code: code, method: method, url: "http://web/secret?token=x", protocol: "HTTP/1.1", headers: [])),
             isReply: reply, trafficDirection: .egress, summary: "")
    }

    func dns(reply: Bool, rcode: UInt32 = 0, ips: [String] = [], verdict: Verdict = .forwarded) -> Flow {
        Flow(time: "2026-11-25T00:00:00.000000000Z", uuid: "u", verdict: verdict,
             ip: IPInfo(source: "198.18.0.10", destination: "198.19.0.10"),
             l4: Layer4(udp: .init(sourcePort: 5353, destinationPort: 53)),
             source: reply ? server : client, destination: reply ? client : server,
             type: .l7, nodeName: "n",
             l7: Layer7(type: reply ? .response : .request, dns: DNS(query: "api.example.test.", ips: ips, rcode: rcode, qtypes: ["A"])),
             isReply: reply, trafficDirection: .egress, summary: "")
    }

    func find(_ updates: [MetricUpdate], _ name: String) -> [MetricUpdate] { updates.filter { $0.name == name } }
    func label(_ u: MetricUpdate, _ name: String) -> String? { u.labels.first { $0.name == name }?.value }

    @Test func anHTTPResponseCountsARequestForTheAskerWithStatusAndDuration() throws {
        let u = FlowMetrics.updates(for: http(reply: true, code: 404, latencyNs: 30_000_000), context: .default)
        let requests = find(u, "hubble_http_requests_total")
        #expect(requests.count == 1)
        #expect(requests[0].labels == [MetricLabel("source_namespace", "shop"), MetricLabel("source_workload", "client"),
                                       MetricLabel("destination_namespace", "backend"), MetricLabel("destination_workload", "web"),
                                       MetricLabel("method", "GET"), MetricLabel("protocol", "HTTP/1.1"),
                                       MetricLabel("status", "404"), MetricLabel("reporter", "client")])
        let duration = try #require(find(u, "hubble_http_request_duration_seconds").first)
        #expect(duration.change == .observe(seconds: 0.03))
        #expect(label(duration, "method") == "GET" && label(duration, "reporter") == "client")
        #expect(find(u, "hubble_flows_processed_total")[0].labels ==
                [MetricLabel("type", "L7"), MetricLabel("subtype", "HTTP"), MetricLabel("verdict", "FORWARDED")])
    }

    @Test func requestsCountPolicyVerdictsNotRequestsAndLabelsCarryNoURLsOrOddMethods() {
        let u = FlowMetrics.updates(for: http(reply: false, verdict: .dropped, method: "BREW"), context: .default)
        #expect(find(u, "hubble_http_requests_total").isEmpty)
        let verdict = find(u, "hubble_policy_verdicts_total")
        #expect(verdict.count == 1 && label(verdict[0], "match") == "l7/http" && label(verdict[0], "action") == "dropped")
        #expect(label(find(u, "hubble_drop_total")[0], "protocol") == "TCP")
        let r = FlowMetrics.updates(for: http(reply: true, code: 200, method: "BREW"), context: .default)
        #expect(label(find(r, "hubble_http_requests_total")[0], "method") == "OTHER")
        for x in u + r { for l in x.labels { #expect(!l.value.contains("secret") && !l.value.contains("token")) } }
    }

    @Test func dnsQueriesAndAnswersByRcodeAndAddressCount() {
        let q = FlowMetrics.updates(for: dns(reply: false), context: .default)
        #expect(find(q, "hubble_dns_queries_total").count == 1 && find(q, "hubble_dns_responses_total").isEmpty)
        let a = FlowMetrics.updates(for: dns(reply: true, ips: ["198.19.0.11"]), context: .default)
        let resp = find(a, "hubble_dns_responses_total")
        #expect(resp.count == 1 && label(resp[0], "rcode") == "No Error" && label(resp[0], "ips_returned") == "1")
        #expect(label(resp[0], "source_workload") == "client") // the asker
        let nx = FlowMetrics.updates(for: dns(reply: true, rcode: 3), context: .default)
        #expect(label(find(nx, "hubble_dns_responses_total")[0], "rcode") == "Non-Existent Domain")
        let denied = FlowMetrics.updates(for: dns(reply: false, verdict: .dropped), context: .default)
        #expect(label(find(denied, "hubble_dns_responses_total")[0], "rcode") == "Policy denied")
    }

    @Test func contextLabelsAreConfigurableAndUnknownOnesAreNamed() throws {
        let ctx = try MetricsContext.parse("source_pod, traffic_direction")
        let u = FlowMetrics.updates(for: http(reply: true, code: 200), context: ctx)
        #expect(Array(find(u, "hubble_http_requests_total")[0].labels.prefix(2)) ==
                [MetricLabel("source_pod", "client-7d9"), MetricLabel("traffic_direction", "egress")])
        #expect(throws: MetricsContext.ParseError.self) { try MetricsContext.parse("source_ip") }
        #expect(try MetricsContext.parse("").labels.isEmpty)
    }
}

/// The service's registry: series made from flows, rendered as Prometheus text, and dropped
/// when their pod's workload leaves the inventory.
@Suite struct MetricsServiceTests {
    static let yaml = """
    apiVersion: v1
    kind: Pod
    metadata: {name: client-7d9, namespace: shop, labels: {app: client}}
    spec: {containers: [{name: c, command: [sleep, infinity]}]}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: web-5f2, namespace: backend, labels: {app: web}}
    spec: {containers: [{name: c, command: [sleep, infinity]}]}
    """

    /// Flows after the first of each shape reuse its series (the memo): counts and histogram
    /// values still land where the full computation puts them.
    @Test func flowsOfTheSameShapeCountOnTheSameSeriesAndOtherShapesGetTheirOwn() throws {
        let env = ProxyEnvironment(inventory: Inventory(), flows: FlowStore(capacity: 10), configuration: ProxyConfiguration())
        let service = MetricsService(group: EmbeddedEventLoop(), host: "127.0.0.1", port: 0, context: .default,
                                     environment: env, readings: AgentReadings(), logger: Logger(label: "test"))
        let flows = FlowMetricsTests()
        for _ in 0..<3 { service.apply(flows.http(reply: true, code: 200, latencyNs: 2_000_000)) }
        service.apply(flows.http(reply: true, code: 200, latencyNs: 700_000_000))
        service.apply(flows.http(reply: true, code: 404))
        for rcode: UInt32 in [0, 0, 3] { service.apply(flows.dns(reply: true, rcode: rcode, ips: rcode == 0 ? ["192.0.2.1"] : [])) }
        let text = service.render()
        let ok = text.split(separator: "\n").filter { $0.hasPrefix("hubble_http_requests_total{") && $0.contains("status=\"200\"") }
        #expect(ok.count == 1 && ok[0].hasSuffix(" 4"))
        #expect(text.split(separator: "\n").contains { $0.hasPrefix("hubble_http_requests_total{") && $0.contains("status=\"404\"") && $0.hasSuffix(" 1") })
        // One histogram (method, reporter): 3 at 2 ms and the 404 at 0 in the 5 ms bucket, 0.7 s from the 1 s bucket on.
        #expect(text.split(separator: "\n").contains { $0.contains("hubble_http_request_duration_seconds_bucket{") && $0.contains("le=\"0.005\"") && $0.hasSuffix(" 4") })
        #expect(text.split(separator: "\n").contains { $0.contains("hubble_http_request_duration_seconds_bucket{") && $0.contains("le=\"0.5\"") && $0.hasSuffix(" 4") })
        #expect(text.split(separator: "\n").contains { $0.contains("hubble_http_request_duration_seconds_bucket{") && $0.contains("le=\"+Inf\"") && $0.hasSuffix(" 5") })
        #expect(text.split(separator: "\n").contains { $0.hasPrefix("hubble_dns_responses_total{rcode=\"No Error\"") && $0.hasSuffix(" 2") })
        #expect(text.split(separator: "\n").contains { $0.hasPrefix("hubble_dns_responses_total{rcode=\"Non-Existent Domain\"") && $0.hasSuffix(" 1") })
    }

    @Test func seriesOfAWorkloadThatLeftTheInventoryArePruned() throws {
        let env = ProxyEnvironment(inventory: Inventory(), flows: FlowStore(capacity: 10), configuration: ProxyConfiguration())
        let service = MetricsService(group: EmbeddedEventLoop(), host: "127.0.0.1", port: 0, context: .default,
                                     environment: env, readings: AgentReadings(), logger: Logger(label: "test"))
        let both = try InventoryLoader.parse(Self.yaml, file: "test.yaml")
        let flows = FlowMetricsTests()
        service.apply(flows.http(reply: true, code: 200))
        service.pruneSeries(live: both)
        #expect(service.render().contains("hubble_http_requests_total{source_namespace=\"shop\",source_workload=\"client\""))
        #expect(service.render().contains("hubble_flows_processed_total{type=\"L7\",subtype=\"HTTP\",verdict=\"FORWARDED\"} 1"))
        var onlyClient = both
        onlyClient.pods.removeAll { $0.name == "web-5f2" }
        service.pruneSeries(live: onlyClient)
        let text = service.render()
        #expect(!text.contains("hubble_http_requests_total{"))
        #expect(!text.contains("hubble_http_request_duration_seconds_bucket{"))
        #expect(text.contains("hubble_flows_processed_total{type=\"L7\",subtype=\"HTTP\",verdict=\"FORWARDED\"} 1"))
    }
}
