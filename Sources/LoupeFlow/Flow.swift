/// Why a flow was dropped: the names of Hubble's `flow.DropReason` (its JSON spells the enum
/// value's name). Loupe's proxy drops for policy only; the datapath's drops are counters.
public enum DropReason: String, Codable, Sendable, Equatable {
    case policyDenied = "POLICY_DENIED"

    /// Cilium's drop code: `drop_reason` and the drop event's `sub_type` (133 prints as
    /// "Policy denied" in Hubble).
    public var code: Int {
        switch self {
        case .policyDenied: 133
        }
    }
}

/// One observed event, shaped like Hubble's `flow.Flow` so that its JSON is what
/// `hubble observe -o json` prints. Field names follow Hubble's JSON exactly (they are a contract).
public struct Flow: Codable, Sendable, Equatable {
    /// RFC 3339 with nanoseconds (`2026-11-24T22:45:32.123456789Z`). A flow the agent records
    /// keeps the clock's reading and writes this text only when something reads it (most
    /// flows are only ever counted and kept in the ring); a flow read from text keeps its text.
    public var time: String {
        get { stamp.text }
        set { stamp = .text(newValue) }
    }
    /// A version-4 UUID, written out (like `time`) only when read.
    public var uuid: String {
        get { id.text }
        set { id = .text(newValue) }
    }
    /// The time as numbers (nil when the text is not RFC 3339), without writing the text.
    public var timestamp: (seconds: Int, nanoseconds: Int)? { stamp.numbers }
    private var stamp: Stamp
    private var id: ID
    public var verdict: Verdict
    public var dropReasonDesc: DropReason?
    public var l4: Layer4
    public var type: FlowType
    public var isReply: Bool
    public var trafficDirection: TrafficDirection
    /// What holds references (addresses, endpoints, names, the L7 record, the summary), in one
    /// shared, immutable box: a flow is copied once per subscriber on its way through the store
    /// (metrics, export, each follower) and freed in each; a copy is one retain, not one per
    /// string and array. A change (rare: redaction, decoding tests) puts the changed fields in
    /// a new box, so a `Flow` stays a value. Reads are inlinable getters, so reading one field
    /// (`flow.source.id`) loads that field only; `_read` coroutines were not inlined and
    /// allocated a frame on the heap at every read.
    @usableFromInline var body: Body

    @usableFromInline struct Fields: Sendable {
        @usableFromInline var ip: IPInfo
        @usableFromInline var source: Endpoint
        @usableFromInline var destination: Endpoint
        @usableFromInline var nodeName: String
        @usableFromInline var sourceNames: [String]?
        @usableFromInline var destinationNames: [String]?
        @usableFromInline var l7: Layer7?
        /// The summary given; empty: said from the L7 HTTP record when read (`summary`).
        @usableFromInline var givenSummary: String
    }

    @usableFromInline final class Body: Sendable {
        @usableFromInline let fields: Fields
        init(_ fields: Fields) { self.fields = fields }
    }

    /// A change to one of the box's fields: the fields, changed, in a new box.
    private subscript<T>(field path: WritableKeyPath<Fields, T>) -> T {
        get { body.fields[keyPath: path] }
        _modify {
            var f = body.fields
            yield &f[keyPath: path]
            body = Body(f)
        }
    }

    public var ip: IPInfo {
        @inlinable get { body.fields.ip }
        _modify { yield &self[field: \.ip] }
    }
    public var source: Endpoint {
        @inlinable get { body.fields.source }
        _modify { yield &self[field: \.source] }
    }
    public var destination: Endpoint {
        @inlinable get { body.fields.destination }
        _modify { yield &self[field: \.destination] }
    }
    public var nodeName: String {
        @inlinable get { body.fields.nodeName }
        _modify { yield &self[field: \.nodeName] }
    }
    public var sourceNames: [String]? {
        @inlinable get { body.fields.sourceNames }
        _modify { yield &self[field: \.sourceNames] }
    }
    public var destinationNames: [String]? {
        @inlinable get { body.fields.destinationNames }
        _modify { yield &self[field: \.destinationNames] }
    }
    public var l7: Layer7? {
        @inlinable get { body.fields.l7 }
        _modify { yield &self[field: \.l7] }
    }
    private var givenSummary: String {
        get { body.fields.givenSummary }
        _modify { yield &self[field: \.givenSummary] }
    }
    /// One line on what happened. An HTTP or DNS flow recorded without one says it the way
    /// Cilium's proxy does — `HTTP/1.1 GET http://…`, `HTTP/1.1 200 3ms (GET http://…)`,
    /// `DNS Query api.example.test. A`, `DNS Answer "198.19.0.20" TTL: 300 (Proxy
    /// api.example.test. A)` — written only when read (most recorded flows never are).
    public var summary: String {
        get { givenSummary.isEmpty ? l7.map(Self.derivedSummary) ?? "" : givenSummary }
        set { givenSummary = newValue }
    }

    /// Equal when they say the same: a summary said from the HTTP record equals the same text
    /// given (a flow read back from JSON). Every stored property but `givenSummary`, compared
    /// (a shared box's contents are equal to themselves).
    public static func == (a: Flow, b: Flow) -> Bool {
        a.stamp == b.stamp && a.id == b.id && a.verdict == b.verdict && a.dropReasonDesc == b.dropReasonDesc
            && a.l4 == b.l4 && a.type == b.type && a.isReply == b.isReply && a.trafficDirection == b.trafficDirection
            && (a.body === b.body
                || (a.ip == b.ip && a.source == b.source && a.destination == b.destination && a.nodeName == b.nodeName
                    && a.sourceNames == b.sourceNames && a.destinationNames == b.destinationNames && a.l7 == b.l7
                    && a.summary == b.summary))
    }

    private static func derivedSummary(_ l7: Layer7) -> String {
        if let dns = l7.dns { return l7.type == .response ? dns.answerSummary : dns.querySummary }
        guard let http = l7.http else { return "" }
        guard l7.type == .response, let code = http.code else { return "\(http.protocol) \(http.method) \(http.url)" }
        return HTTP.responseSummary(protocol: http.protocol, code: code, latencyNanos: l7.latencyNanos,
                                    method: http.method, url: http.url)
    }

    enum CodingKeys: String, CodingKey {
        case time, uuid, verdict
        case dropReasonDesc = "drop_reason_desc"
        case ip = "IP"
        case l4, source, destination
        case type = "Type"
        case nodeName = "node_name"
        case sourceNames = "source_names"
        case destinationNames = "destination_names"
        case l7
        case isReply = "is_reply"
        case trafficDirection = "traffic_direction"
        case summary = "Summary"
    }

    /// Absent fields take protojson's empty values (`is_reply` false, strings empty).
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        stamp = .text(try c.decodeIfPresent(String.self, forKey: .time) ?? "")
        id = .text(try c.decodeIfPresent(String.self, forKey: .uuid) ?? "")
        verdict = try c.decodeIfPresent(Verdict.self, forKey: .verdict) ?? .forwarded
        dropReasonDesc = try c.decodeIfPresent(DropReason.self, forKey: .dropReasonDesc)
        l4 = try c.decodeIfPresent(Layer4.self, forKey: .l4) ?? Layer4()
        type = try c.decodeIfPresent(FlowType.self, forKey: .type) ?? .l3l4
        isReply = try c.decodeIfPresent(Bool.self, forKey: .isReply) ?? false
        trafficDirection = try c.decodeIfPresent(TrafficDirection.self, forKey: .trafficDirection) ?? .egress
        let none = Endpoint(id: nil, identity: 0, namespace: nil, labels: [], podName: nil)
        body = Body(Fields(ip: try c.decodeIfPresent(IPInfo.self, forKey: .ip) ?? IPInfo(source: "", destination: ""),
                    source: try c.decodeIfPresent(Endpoint.self, forKey: .source) ?? none,
                    destination: try c.decodeIfPresent(Endpoint.self, forKey: .destination) ?? none,
                    nodeName: try c.decodeIfPresent(String.self, forKey: .nodeName) ?? "",
                    sourceNames: try c.decodeIfPresent([String].self, forKey: .sourceNames),
                    destinationNames: try c.decodeIfPresent([String].self, forKey: .destinationNames),
                    l7: try c.decodeIfPresent(Layer7.self, forKey: .l7),
                    givenSummary: try c.decodeIfPresent(String.self, forKey: .summary) ?? ""))
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(time, forKey: .time)
        try c.encode(uuid, forKey: .uuid)
        try c.encode(verdict, forKey: .verdict)
        try c.encodeIfPresent(dropReasonDesc, forKey: .dropReasonDesc)
        try c.encode(ip, forKey: .ip)
        try c.encode(l4, forKey: .l4)
        try c.encode(source, forKey: .source)
        try c.encode(destination, forKey: .destination)
        try c.encode(type, forKey: .type)
        try c.encode(nodeName, forKey: .nodeName)
        try c.encodeIfPresent(sourceNames, forKey: .sourceNames)
        try c.encodeIfPresent(destinationNames, forKey: .destinationNames)
        try c.encodeIfPresent(l7, forKey: .l7)
        try c.encode(isReply, forKey: .isReply)
        try c.encode(trafficDirection, forKey: .trafficDirection)
        try c.encode(summary, forKey: .summary)
    }

    /// `time` and `uuid` nil: now, by the clock, and a fresh random id (what the agent records).
    public init(time: String? = nil, uuid: String? = nil, verdict: Verdict, dropReasonDesc: DropReason? = nil, ip: IPInfo, l4: Layer4,
                source: Endpoint, destination: Endpoint, type: FlowType, nodeName: String,
                destinationNames: [String]? = nil, l7: Layer7? = nil, isReply: Bool,
                trafficDirection: TrafficDirection, summary: String = "", sourceNames: [String]? = nil) {
        self.stamp = time.map { .text($0) } ?? .now()
        self.id = uuid.map { .text($0) } ?? .random()
        self.verdict = verdict
        self.dropReasonDesc = dropReasonDesc
        self.l4 = l4
        self.type = type
        self.isReply = isReply
        self.trafficDirection = trafficDirection
        self.body = Body(Fields(ip: ip, source: source, destination: destination, nodeName: nodeName, sourceNames: sourceNames,
                                destinationNames: destinationNames, l7: l7, givenSummary: summary))
    }
}

extension Flow {
    /// This flow happening again: now, under a fresh id (the flow-pipeline benchmark's copies).
    public mutating func renew() {
        stamp = .now()
        id = .random()
    }

    /// A time as the clock gave it, or as text. Equal when the texts are.
    enum Stamp: Sendable, Equatable {
        case clock(seconds: Int, nanoseconds: Int)
        case text(String)

        static func now() -> Stamp {
            let n = FlowTime.now()
            return .clock(seconds: n.seconds, nanoseconds: n.nanoseconds)
        }

        var text: String {
            switch self {
            case .clock(let s, let ns): FlowTime.rfc3339(seconds: s, nanoseconds: ns)
            case .text(let t): t
            }
        }

        var numbers: (seconds: Int, nanoseconds: Int)? {
            switch self {
            case .clock(let s, let ns): (s, ns)
            case .text(let t): FlowTime.parse(t)
            }
        }

        static func == (a: Stamp, b: Stamp) -> Bool {
            if case .clock(let s1, let n1) = a, case .clock(let s2, let n2) = b { return s1 == s2 && n1 == n2 }
            return a.text == b.text
        }
    }

    /// A version-4 UUID's 128 bits, or its text. Equal when the texts are.
    enum ID: Sendable, Equatable {
        case bits(UInt64, UInt64)
        case text(String)

        static func random() -> ID {
            let (hi, lo) = FlowUUID.bits()
            return .bits(hi, lo)
        }

        var text: String {
            switch self {
            case .bits(let hi, let lo): FlowUUID.text(hi, lo)
            case .text(let t): t
            }
        }

        static func == (a: ID, b: ID) -> Bool {
            if case .bits(let h1, let l1) = a, case .bits(let h2, let l2) = b { return h1 == h2 && l1 == l2 }
            return a.text == b.text
        }
    }
}

public enum Verdict: String, Codable, Sendable, CaseIterable {
    case forwarded = "FORWARDED", dropped = "DROPPED", error = "ERROR", audit = "AUDIT"
}

public enum FlowType: String, Codable, Sendable { case l3l4 = "L3_L4", l7 = "L7" }

public enum TrafficDirection: String, Codable, Sendable { case ingress = "INGRESS", egress = "EGRESS" }

public struct IPInfo: Codable, Sendable, Equatable {
    public var source: String
    public var destination: String
    public var ipVersion: String

    public init(source: String, destination: String) {
        self.source = source
        self.destination = destination
        self.ipVersion = destination.utf8.contains(UInt8(ascii: ":")) ? "IPv6" : "IPv4"
    }
}

public struct Layer4: Codable, Sendable, Equatable {
    public struct Ports: Codable, Sendable, Equatable {
        public var sourcePort: Int
        public var destinationPort: Int
        enum CodingKeys: String, CodingKey { case sourcePort = "source_port", destinationPort = "destination_port" }
        public init(sourcePort: Int, destinationPort: Int) {
            self.sourcePort = sourcePort
            self.destinationPort = destinationPort
        }
    }
    public var tcp: Ports?
    public var udp: Ports?
    enum CodingKeys: String, CodingKey { case tcp = "TCP", udp = "UDP" }
    public init(tcp: Ports? = nil, udp: Ports? = nil) {
        self.tcp = tcp
        self.udp = udp
    }
    public var ports: Ports? { tcp ?? udp }
}

public struct Endpoint: Codable, Sendable, Equatable {
    public var id: UInt32?
    public var identity: UInt32
    public var namespace: String?
    public var labels: [String]
    public var podName: String?
    public var workloads: [Workload]?

    public struct Workload: Codable, Sendable, Equatable {
        public var name: String
        public var kind: String
        public init(name: String, kind: String) {
            self.name = name
            self.kind = kind
        }
    }

    enum CodingKeys: String, CodingKey {
        case id = "ID", identity, namespace, labels
        case podName = "pod_name"
        case workloads
    }

    /// Absent fields are empty, as protojson omits them.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decodeIfPresent(UInt32.self, forKey: .id)
        identity = try c.decodeIfPresent(UInt32.self, forKey: .identity) ?? 0
        namespace = try c.decodeIfPresent(String.self, forKey: .namespace)
        labels = try c.decodeIfPresent([String].self, forKey: .labels) ?? []
        podName = try c.decodeIfPresent(String.self, forKey: .podName)
        workloads = try c.decodeIfPresent([Workload].self, forKey: .workloads)
    }

    public init(id: UInt32?, identity: UInt32, namespace: String?, labels: [String], podName: String?, workloads: [Workload]? = nil) {
        self.id = id
        self.identity = identity
        self.namespace = namespace
        self.labels = labels
        self.podName = podName
        self.workloads = workloads
    }
}

public struct Layer7: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case request = "REQUEST", response = "RESPONSE", sample = "SAMPLE" }
    public var type: Kind
    /// Nanoseconds; 0 when none (a request). Kept as a number: metrics, the gRPC API and the
    /// summaries read it as one, and only JSON writes it out.
    public var latencyNanos: UInt64
    public var http: HTTP?
    public var dns: DNS?

    /// `latency_ns` as Hubble's JSON has it: a uint64 as a string, absent when 0 (protojson
    /// omits proto3 zero values).
    public var latencyNs: String? {
        get { latencyNanos == 0 ? nil : String(latencyNanos) }
        set { latencyNanos = newValue.flatMap { UInt64($0) } ?? 0 }
    }

    enum CodingKeys: String, CodingKey { case type, latencyNs = "latency_ns", http, dns }

    public init(type: Kind, latencyNs: UInt64? = nil, http: HTTP? = nil, dns: DNS? = nil) {
        self.type = type
        self.latencyNanos = latencyNs ?? 0
        self.http = http
        self.dns = dns
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        type = try c.decode(Kind.self, forKey: .type)
        latencyNanos = 0
        http = try c.decodeIfPresent(HTTP.self, forKey: .http)
        dns = try c.decodeIfPresent(DNS.self, forKey: .dns)
        latencyNs = try c.decodeIfPresent(String.self, forKey: .latencyNs)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(type, forKey: .type)
        try c.encodeIfPresent(latencyNs, forKey: .latencyNs)
        try c.encodeIfPresent(http, forKey: .http)
        try c.encodeIfPresent(dns, forKey: .dns)
    }
}

/// Hubble's `l7.dns`.
public struct DNS: Codable, Sendable, Equatable {
    /// Hubble's wording of a response code (`DNS Answer RCode: Non-Existent Domain`, and the
    /// `rcode` label of `hubble_dns_responses_total`).
    public static func rcodeDescription(_ rcode: UInt32) -> String {
        switch rcode {
        case 0: "No Error"
        case 1: "Format Error"
        case 2: "Server Failure"
        case 3: "Non-Existent Domain"
        case 4: "Not Implemented"
        case 5: "Query Refused"
        default: "RCode \(rcode)"
        }
    }

    /// `DNS Query api.example.test. A`.
    public var querySummary: String { "DNS Query \(query) \(qtypes.joined(separator: ","))" }

    /// `DNS Answer "198.19.0.20" TTL: 300 (Proxy api.example.test. A)`; without addresses the
    /// TTL is 4294967295 (none), and an error says its code: `DNS Answer RCode: Non-Existent
    /// Domain TTL: 4294967295 (Proxy nx.example.test. A)`.
    public var answerSummary: String { answerSummary(ttl: ips.isEmpty ? UInt32.max : ttl) }

    /// The answer's summary with the TTL given (the record keeps none of 4294967295 on addresses).
    public func answerSummary(ttl: UInt32) -> String {
        let what = rcode == 0 ? ips.map { "\"\($0)\"" }.joined(separator: ",") : "RCode: \(Self.rcodeDescription(rcode))"
        return "DNS Answer \(what) TTL: \(ttl) (Proxy \(query) \(qtypes.joined(separator: ",")))"
    }

    /// With the trailing dot: `api.example.test.`
    public var query: String
    public var ips: [String]
    public var ttl: UInt32
    public var cnames: [String]
    public var observationSource: String
    public var rcode: UInt32
    public var qtypes: [String]
    public var rrtypes: [String]

    enum CodingKeys: String, CodingKey {
        case query, ips, ttl, cnames, observationSource = "observation_source", rcode, qtypes, rrtypes
    }

    public init(query: String, ips: [String] = [], ttl: UInt32 = 0, cnames: [String] = [], observationSource: String = "proxy",
                rcode: UInt32 = 0, qtypes: [String], rrtypes: [String] = []) {
        self.query = query
        self.ips = ips
        self.ttl = ttl
        self.cnames = cnames
        self.observationSource = observationSource
        self.rcode = rcode
        self.qtypes = qtypes
        self.rrtypes = rrtypes
    }

    /// Absent fields are empty, as protojson omits them.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        query = try c.decodeIfPresent(String.self, forKey: .query) ?? ""
        ips = try c.decodeIfPresent([String].self, forKey: .ips) ?? []
        ttl = try c.decodeIfPresent(UInt32.self, forKey: .ttl) ?? 0
        cnames = try c.decodeIfPresent([String].self, forKey: .cnames) ?? []
        observationSource = try c.decodeIfPresent(String.self, forKey: .observationSource) ?? ""
        rcode = try c.decodeIfPresent(UInt32.self, forKey: .rcode) ?? 0
        qtypes = try c.decodeIfPresent([String].self, forKey: .qtypes) ?? []
        rrtypes = try c.decodeIfPresent([String].self, forKey: .rrtypes) ?? []
    }
}

public struct HTTP: Codable, Sendable, Equatable {
    /// A response as Cilium's proxy summarizes it: `HTTP/1.1 200 3ms (GET http://…)`.
    public static func responseSummary(protocol: String, code: Int, latencyNanos: UInt64, method: String, url: String) -> String {
        "\(`protocol`) \(code) \(latencyNanos / 1_000_000)ms (\(method) \(url))"
    }

    public struct Header: Codable, Sendable, Equatable {
        public var key: String
        public var value: String
        public init(key: String, value: String) {
            self.key = key
            self.value = value
        }
    }
    public var code: Int?
    public var method: String
    public var url: String
    public var `protocol`: String
    public var headers: [Header]

    public init(code: Int? = nil, method: String, url: String, protocol: String, headers: [Header]) {
        self.code = code
        self.method = method
        self.url = url
        self.protocol = `protocol`
        self.headers = headers
    }

    enum CodingKeys: String, CodingKey { case code, method, url, `protocol`, headers }

    /// Hubble's JSON (and ours) omits empty fields: absent means empty.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        code = try c.decodeIfPresent(Int.self, forKey: .code)
        method = try c.decodeIfPresent(String.self, forKey: .method) ?? ""
        url = try c.decodeIfPresent(String.self, forKey: .url) ?? ""
        `protocol` = try c.decodeIfPresent(String.self, forKey: .protocol) ?? ""
        headers = try c.decodeIfPresent([Header].self, forKey: .headers) ?? []
    }
}

/// One line of `hubble observe -o json`: `{"flow":{…},"node_name":"…","time":"…"}`. The
/// line's node name and time are the flow's own (as in Hubble): read from it, not kept twice.
public struct FlowRecord: Codable, Sendable, Equatable {
    public var flow: Flow
    public var nodeName: String { flow.nodeName }
    public var time: String { flow.time }
    enum CodingKeys: String, CodingKey { case flow, nodeName = "node_name", time }
    public init(flow: consuming Flow) {
        self.flow = flow
    }

    public init(from decoder: Decoder) throws {
        flow = try decoder.container(keyedBy: CodingKeys.self).decode(Flow.self, forKey: .flow)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(flow, forKey: .flow)
        try c.encode(nodeName, forKey: .nodeName)
        try c.encode(time, forKey: .time)
    }
}
