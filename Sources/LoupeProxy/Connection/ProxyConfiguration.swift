import LoupeFlow
import NIOCore

/// Settings of the transparent proxy, with documented defaults.
public struct ProxyConfiguration: Sendable {
    /// Port of the transparent listener (0.0.0.0 and [::]); the tc program assigns to it.
    public var port: Int = 15001
    /// Port of the transparent DNS (UDP) socket.
    public var dnsPort: Int = 15053
    /// How long the DNS proxy waits for the resolver before answering SERVFAIL.
    public var dnsTimeoutMilliseconds: Int = 5000
    /// SO_MARK of upstream sockets (Cilium's from-proxy mark): never matches the redirect mark.
    public var upstreamMark: Int32 = 0xb00
    /// Largest request/response header block accepted (bytes); larger gets 400.
    public var maxHeaderBytes: Int = 64 * 1024
    /// Where upstream connections come from: the client pod's own address (IP_TRANSPARENT;
    /// the datapath steers the replies back), or the node's. See `UpstreamSource`.
    public var upstreamSource: UpstreamSource = .pod
    /// Upstream connect timeout.
    public var connectTimeoutMilliseconds: Int64 = 5000
    /// Terminate and re-originate HTTP/2 (h2c) for per-stream flows and policy; off: h2c is
    /// relayed opaque (and refused on ports with HTTP policy rules).
    public var interceptHTTP2 = true
    /// How many intercepted HTTPS client connections (pods offering h2) one HTTP/2 connection to
    /// their destination carries at most, when they come from the same source address for the
    /// same server name: a new client connection then usually costs one TLS handshake, not two.
    /// 1: every client connection gets its own upstream connection.
    public var upstreamSharing = 16
    /// HTTP/2 abuse limits (concurrent streams, header list, HPACK table, CONTINUATION, resets).
    public var http2 = HTTP2Limits()
    /// The node CA (`ca.pem`, `ca.key`) that signs the leaves of HTTPS interception; loaded on
    /// first use. Without it, `<…/TCP/HTTPS>` ports get TLS visibility only (and a flow says so).
    public var caDirectory: String? = "/etc/loupe/ca"
    /// PEM bundle trusted for destinations besides the system trust store (HTTPS interception).
    public var upstreamCABundle: String?
    /// Hand opaque connections (raw TCP, TLS after its ClientHello, tunnels after an upgrade)
    /// to the kernel's sockmap splice once the proxy has nothing left to learn from them.
    public var splice = true
    /// Test switch: every splice attempt is refused as if the kernel had (traffic then stays
    /// in the userspace relay, counted as `splice_fallback_injected`).
    public var spliceInjectFailure = false
    /// What flows never carry (credential header values, URL user-info; optionally query values).
    public var redaction = Redaction()
    /// Name of this node in flows.
    public var nodeName: String = "loupe-node"
    /// Event-loop threads (default: one per core).
    public var threads: Int = System.coreCount

    public init() {}
}

/// `--upstream-source`: the source address of the proxy's upstream connections.
public enum UpstreamSource: String, Sendable, CaseIterable {
    /// The client pod's address, as Cilium's Envoy and Istio's ztunnel keep it: destination
    /// pods, their access logs and their NetworkPolicies see the real client. For pods only: a
    /// destination that is not a pod (a Service VIP that kube-proxy translates after the proxy,
    /// the world behind the node's masquerade) would answer through NAT the datapath cannot see
    /// past, and the client itself or an address of the node answers without crossing a tc
    /// hook: those connections come from the node.
    case pod
    /// The node's address (the route's source).
    case node
}
