import Foundation
import LoupeFlow
import LoupeProtocols

/// Which flow fields become labels of every Hubble metric, besides the metric's own (Hubble's
/// `labelsContext`). The default is what Cilium's "L7 HTTP metrics by workload" dashboard
/// queries by.
public struct MetricsContext: Sendable, Equatable {
    public enum Label: String, CaseIterable, Sendable {
        case sourceNamespace = "source_namespace", sourcePod = "source_pod", sourceWorkload = "source_workload"
        case destinationNamespace = "destination_namespace", destinationPod = "destination_pod"
        case destinationWorkload = "destination_workload", trafficDirection = "traffic_direction"
    }

    public var labels: [Label]

    public init(labels: [Label]) { self.labels = labels }

    public static let `default` = MetricsContext(labels: [.sourceNamespace, .sourceWorkload, .destinationNamespace, .destinationWorkload])

    public struct ParseError: Error, CustomStringConvertible {
        public var description: String
    }

    /// `source_namespace,destination_workload,…` (an empty text: no context labels).
    public static func parse(_ text: String) throws -> MetricsContext {
        var labels: [Label] = []
        for part in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !part.isEmpty {
            guard let l = Label(rawValue: part) else {
                throw ParseError(description: "metrics context label \"\(part)\" is not one of "
                                 + Label.allCases.map(\.rawValue).joined(separator: ", "))
            }
            if !labels.contains(l) { labels.append(l) }
        }
        return MetricsContext(labels: labels)
    }

    /// The context labels of a flow. HTTP and DNS answers count for the asker, as Hubble's
    /// httpV2 does (`inverted`: the flow's destination is the client).
    func values(_ flow: Flow, inverted: Bool = false) -> [MetricLabel] {
        let (src, dst) = inverted ? (flow.destination, flow.source) : (flow.source, flow.destination)
        return labels.map { l in
            let value: String = switch l {
            case .sourceNamespace: src.namespace ?? ""
            case .sourcePod: src.podName ?? ""
            case .sourceWorkload: src.workloads?.first?.name ?? ""
            case .destinationNamespace: dst.namespace ?? ""
            case .destinationPod: dst.podName ?? ""
            case .destinationWorkload: dst.workloads?.first?.name ?? ""
            case .trafficDirection: flow.trafficDirection.rawValue.lowercased()
            }
            return MetricLabel(l.rawValue, value)
        }
    }
}

public struct MetricLabel: Equatable, Hashable, Sendable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
}

/// One change a flow makes to a metric.
public struct MetricUpdate: Equatable, Sendable {
    public enum Change: Equatable, Sendable { case increment, observe(seconds: Double) }
    public var name: String
    public var labels: [MetricLabel]
    public var change: Change
}

/// Hubble's flow metrics, as a pure function of a flow: which counters go up and which
/// histograms get an observation (names, labels and semantics of Hubble's `flow`, `httpV2`,
/// `dns`, `drop` and `policy` handlers). Label values are bounded: no URLs, headers or names.
public enum FlowMetrics {
    /// Hubble's HTTP duration buckets (Prometheus' defaults), seconds.
    public static let durationBuckets: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

    /// Methods kept as label values; anything else is `OTHER` (bounded cardinality).
    static let methods: Set<String> = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]

    /// An L7 flow's latency in seconds (0 when it has none).
    static func durationSeconds(_ flow: Flow) -> Double {
        Double(flow.l7?.latencyNanos ?? 0) / 1e9
    }

    public static func updates(for flow: Flow, context: MetricsContext) -> [MetricUpdate] {
        var out: [MetricUpdate] = []
        func inc(_ name: String, _ labels: [MetricLabel]) { out.append(MetricUpdate(name: name, labels: labels, change: .increment)) }

        // hubble_flows_processed_total{type,subtype,verdict}
        let (type, subtype): (String, String) = switch (flow.type, flow.verdict) {
        case (.l7, _): ("L7", flow.l7?.http != nil ? "HTTP" : flow.l7?.dns != nil ? "DNS" : "")
        case (.l3l4, .dropped): ("Drop", "")
        case (.l3l4, _): ("Trace", "to-proxy")
        }
        inc("hubble_flows_processed_total", [MetricLabel("type", type), MetricLabel("subtype", subtype),
                                             MetricLabel("verdict", flow.verdict.rawValue)])

        // hubble_policy_verdicts_total{direction,match,action}
        func verdict(_ match: String, _ action: String) {
            inc("hubble_policy_verdicts_total", context.values(flow) + [MetricLabel("direction", flow.trafficDirection.rawValue.lowercased()),
                                                                       MetricLabel("match", match), MetricLabel("action", action)])
        }
        if flow.verdict == .dropped {
            // hubble_drop_total{reason,protocol}
            let proto = flow.l4.tcp != nil ? "TCP" : flow.l4.udp != nil ? "UDP" : "Unknown"
            inc("hubble_drop_total", context.values(flow) + [MetricLabel("reason", flow.dropReasonDesc?.rawValue ?? "UNKNOWN"),
                                                            MetricLabel("protocol", proto)])
            if flow.type == .l3l4 && flow.dropReasonDesc == .policyDenied { verdict("l3-l4", "dropped") }
        }

        if let l7 = flow.l7, let http = l7.http {
            if l7.type == .request {
                // Every request met the proxy's per-request policy decision.
                verdict("l7/http", flow.verdict.rawValue.lowercased())
            }
            if l7.type == .response {
                // httpV2: responses count, for the asker; reporter = the side that observed it.
                let ctx = context.values(flow, inverted: true)
                let method = methods.contains(http.method) ? http.method : "OTHER"
                let reporter = flow.trafficDirection == .egress ? "client" : "server"
                inc("hubble_http_requests_total", ctx + [MetricLabel("method", method), MetricLabel("protocol", http.protocol),
                                                        MetricLabel("status", String(http.code ?? 0)), MetricLabel("reporter", reporter)])
                out.append(MetricUpdate(name: "hubble_http_request_duration_seconds",
                                        labels: ctx + [MetricLabel("method", method), MetricLabel("reporter", reporter)],
                                        change: .observe(seconds: durationSeconds(flow))))
            }
        }

        if let l7 = flow.l7, let dns = l7.dns {
            let inverted = flow.isReply
            var labels = [MetricLabel("rcode", ""), MetricLabel("qtypes", dns.qtypes.joined(separator: ",")),
                          MetricLabel("ips_returned", String(dns.ips.count))] + context.values(flow, inverted: inverted)
            if flow.verdict == .dropped {
                inc("hubble_dns_queries_total", labels)
                labels[0].value = "Policy denied"
                inc("hubble_dns_responses_total", labels)
            } else if flow.isReply {
                labels[0].value = DNS.rcodeDescription(dns.rcode)
                inc("hubble_dns_responses_total", labels)
            } else {
                inc("hubble_dns_queries_total", labels)
            }
            if l7.type == .request {
                verdict("l7/dns", flow.verdict.rawValue.lowercased())
            }
        }
        return out
    }
}
