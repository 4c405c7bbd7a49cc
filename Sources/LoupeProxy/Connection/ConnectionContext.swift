import LoupeFlow
import LoupePolicy

/// Who is talking to whom on one proxied connection, resolved once at accept time.
public struct ConnectionContext: Sendable {
    public var clientIP: String
    public var clientPort: Int
    /// The original destination: the accepted socket's local address.
    public var serverIP: String
    public var serverPort: Int
    public var source: Endpoint
    public var destination: Endpoint
    public var direction: TrafficDirection
    public var rule: VisibilityRule?
    public var nodeName: String
    /// Names the client resolved for the server's address through the DNS proxy.
    public var serverNames: [String] = []
    /// `https` once the proxy terminates the connection's TLS (HTTPS interception).
    public var scheme = "http"

    public init(clientIP: String, clientPort: Int, serverIP: String, serverPort: Int,
                snapshot: ProxyEnvironment.Snapshot, nodeName: String, udp: Bool = false) {
        let plan = snapshot.plan
        self.clientIP = clientIP
        self.clientPort = clientPort
        self.serverIP = serverIP
        self.serverPort = serverPort
        self.source = snapshot.endpoint(ofIP: clientIP)
        self.destination = snapshot.endpoint(ofIP: serverIP)
        self.rule = plan.rule(clientIP: clientIP, serverIP: serverIP, port: UInt16(clamping: serverPort), udp: udp)
        self.direction = rule?.direction == .ingress ? .ingress : .egress
        self.nodeName = nodeName
        let host = serverIP.utf8.contains(UInt8(ascii: ":")) ? "[\(serverIP)]" : serverIP
        self.authorityFallback = serverPort == 80 ? host : "\(host):\(serverPort)"
    }

    /// The `host[:port]` used in URLs when the request carries no Host header.
    public let authorityFallback: String

    /// A flow of this connection; `reply` flows go server → client.
    public func flow(verdict: Verdict, type: FlowType, l7: Layer7?, reply: Bool, summary: String = "",
                     dropReason: DropReason? = nil, udp: Bool = false) -> Flow {
        let ip = reply ? IPInfo(source: serverIP, destination: clientIP) : IPInfo(source: clientIP, destination: serverIP)
        let ports = reply ? Layer4.Ports(sourcePort: serverPort, destinationPort: clientPort)
                          : Layer4.Ports(sourcePort: clientPort, destinationPort: serverPort)
        return Flow(verdict: verdict, dropReasonDesc: dropReason,
                    ip: ip, l4: udp ? Layer4(udp: ports) : Layer4(tcp: ports), source: reply ? destination : source,
                    destination: reply ? source : destination, type: type, nodeName: nodeName,
                    destinationNames: !reply && !serverNames.isEmpty ? serverNames : nil, l7: l7,
                    isReply: reply, trafficDirection: direction, summary: summary,
                    sourceNames: reply && !serverNames.isEmpty ? serverNames : nil)
    }
}

extension Endpoint {
    init(_ id: EndpointIdentity) {
        self.init(id: id.id == 0 ? nil : id.id, identity: id.identity, namespace: id.namespace, labels: id.labels,
                  podName: id.podName, workloads: id.workload.map { [Workload(name: $0, kind: "Deployment")] })
    }
}
