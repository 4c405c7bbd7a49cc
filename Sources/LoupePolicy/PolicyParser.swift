import Yams

/// A problem in a policy file: file, line and the field path, e.g.
/// `rule1.yaml:7: spec.endpointSelectr: unsupported field`.
public struct PolicyError: Error, CustomStringConvertible, Sendable, Equatable {
    public var file: String
    public var line: Int
    public var field: String
    public var message: String
    public var description: String { "\(file):\(line): \(field): \(message)" }

    public init(file: String, line: Int, field: String, message: String) {
        self.file = file
        self.line = line
        self.field = field
        self.message = message
    }
}

/// Parses CiliumNetworkPolicy YAML (multi-document) into `CiliumNetworkPolicy` values.
/// Strict: every field outside the supported subset is an error naming file, line and field,
/// because a silently ignored rule would enforce something the author did not write.
public enum PolicyParser {
    public static let apiVersion = "cilium.io/v2"
    public static let kinds = ["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"]

    public static func parse(_ text: String, file: String) -> (policies: [CiliumNetworkPolicy], errors: [PolicyError]) {
        var w = Walker(file: file)
        var roots: [Node] = []
        do {
            // Parser.nextRoot rather than compose_all: the lazy sequence drops errors.
            let parser = try Parser(yaml: text)
            while let root = try parser.nextRoot() { roots.append(root) }
        } catch let e as YamlError {
            return ([], [PolicyError(file: file, line: Self.line(of: e), field: "(document)", message: "not valid YAML: \(Self.problem(of: e))")])
        } catch {
            return ([], [PolicyError(file: file, line: 0, field: "(document)", message: "not valid YAML: \(error)")])
        }
        var policies: [CiliumNetworkPolicy] = []
        for root in roots {
            if let p = w.policy(root) { policies.append(p) }
        }
        return (w.errors.isEmpty ? policies : [], w.errors)
    }

    static func line(of e: YamlError) -> Int {
        switch e {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _): return mark.line
        default: return 0
        }
    }

    static func problem(of e: YamlError) -> String {
        switch e {
        case .scanner(_, let p, _, _), .parser(_, let p, _, _), .composer(_, let p, _, _): return p
        default: return "\(e)"
        }
    }

    struct Walker {
        let file: String
        var errors: [PolicyError] = []

        mutating func fail(_ node: Node?, _ field: String, _ message: String) {
            errors.append(PolicyError(file: file, line: node?.mark?.line ?? 0, field: field, message: message))
        }

        /// The mapping's entries by key; unknown keys are errors.
        mutating func fields(_ node: Node, _ path: String, allowed: Set<String>) -> [String: Node]? {
            guard let mapping = node.mapping else {
                fail(node, path, "expected a mapping")
                return nil
            }
            var out: [String: Node] = [:]
            for (k, v) in mapping {
                let key = k.string ?? "?"
                let field = path.isEmpty ? key : "\(path).\(key)"
                if !allowed.contains(key) {
                    fail(k, field, "unsupported field (supported here: \(allowed.sorted().joined(separator: ", ")))")
                    continue
                }
                out[key] = v
            }
            return out
        }

        mutating func string(_ node: Node?, _ path: String) -> String? {
            guard let node else { return nil }
            guard node.scalar != nil, let s = node.string else {
                fail(node, path, "expected a string")
                return nil
            }
            return s
        }

        mutating func list(_ node: Node?, _ path: String) -> [Node]? {
            guard let node else { return nil }
            guard let seq = node.sequence else {
                fail(node, path, "expected a list")
                return nil
            }
            return Array(seq)
        }

        mutating func policy(_ root: Node) -> CiliumNetworkPolicy? {
            guard let top = fields(root, "", allowed: ["apiVersion", "kind", "metadata", "spec", "specs"]) else { return nil }
            let api = string(top["apiVersion"], "apiVersion")
            if api != PolicyParser.apiVersion {
                fail(top["apiVersion"] ?? root, "apiVersion", "must be \(PolicyParser.apiVersion), got \(api ?? "nothing")")
            }
            let kind = string(top["kind"], "kind") ?? ""
            guard PolicyParser.kinds.contains(kind) else {
                fail(top["kind"] ?? root, "kind", "must be CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy, got \(kind.isEmpty ? "nothing" : kind)")
                return nil
            }
            let meta = top["metadata"].flatMap { fields($0, "metadata", allowed: ["name", "namespace", "labels", "annotations"]) } ?? [:]
            guard let name = string(meta["name"], "metadata.name"), !name.isEmpty else {
                fail(top["metadata"] ?? root, "metadata.name", "required")
                return nil
            }
            let clusterwide = kind == "CiliumClusterwideNetworkPolicy"
            var namespace: String? = clusterwide ? nil : (string(meta["namespace"], "metadata.namespace") ?? "default")
            if clusterwide, meta["namespace"] != nil {
                fail(meta["namespace"], "metadata.namespace", "a CiliumClusterwideNetworkPolicy has no namespace")
                namespace = nil
            }
            var rules: [CiliumNetworkPolicy.Rule] = []
            switch (top["spec"], top["specs"]) {
            case (let spec?, nil):
                if let r = rule(spec, "spec") { rules.append(r) }
            case (nil, let specs?):
                for (i, s) in (list(specs, "specs") ?? []).enumerated() {
                    if let r = rule(s, "specs[\(i)]") { rules.append(r) }
                }
            case (.some, .some):
                fail(top["specs"], "specs", "give spec or specs, not both")
            case (nil, nil):
                fail(root, "spec", "required (spec or specs)")
            }
            return CiliumNetworkPolicy(name: name, namespace: namespace, rules: rules, file: file, line: root.mark?.line ?? 0)
        }

        mutating func rule(_ node: Node, _ path: String) -> CiliumNetworkPolicy.Rule? {
            guard let f = fields(node, path, allowed: ["endpointSelector", "ingress", "egress", "description"]) else { return nil }
            guard let selNode = f["endpointSelector"] else {
                fail(node, "\(path).endpointSelector", "required")
                return nil
            }
            let sel = selector(selNode, "\(path).endpointSelector") ?? LabelSelector()
            let ingress = f["ingress"].map { n in
                (list(n, "\(path).ingress") ?? []).enumerated().compactMap { peerRule($1, "\(path).ingress[\($0)]", peersKey: "fromEndpoints") }
            }
            let egress = f["egress"].map { n in
                (list(n, "\(path).egress") ?? []).enumerated().compactMap { peerRule($1, "\(path).egress[\($0)]", peersKey: "toEndpoints") }
            }
            return .init(description: string(f["description"], "\(path).description"), endpointSelector: sel, ingress: ingress, egress: egress)
        }

        mutating func peerRule(_ node: Node, _ path: String, peersKey: String) -> CiliumNetworkPolicy.PeerRule? {
            guard let f = fields(node, path, allowed: [peersKey, "toPorts"]) else { return nil }
            let peers = f[peersKey].map { n in
                (list(n, "\(path).\(peersKey)") ?? []).enumerated().compactMap { selector($1, "\(path).\(peersKey)[\($0)]") }
            }
            let ports = f["toPorts"].map { n in
                (list(n, "\(path).toPorts") ?? []).enumerated().compactMap { portRule($1, "\(path).toPorts[\($0)]") }
            }
            return .init(peers: peers, toPorts: ports)
        }

        mutating func selector(_ node: Node, _ path: String) -> LabelSelector? {
            if node.null != nil { return LabelSelector() }
            guard let f = fields(node, path, allowed: ["matchLabels", "matchExpressions"]) else { return nil }
            var labels: [String: String] = [:]
            if let ml = f["matchLabels"] {
                if let m = ml.mapping {
                    for (k, v) in m {
                        let key = k.string ?? "?"
                        if let s = string(v, "\(path).matchLabels.\(key)") { labels[key] = s }
                    }
                } else if ml.null == nil {
                    fail(ml, "\(path).matchLabels", "expected a mapping of label keys to values")
                }
            }
            var exprs: [LabelSelector.Expression] = []
            for (i, e) in (list(f["matchExpressions"], "\(path).matchExpressions") ?? []).enumerated() {
                let ep = "\(path).matchExpressions[\(i)]"
                guard let ef = fields(e, ep, allowed: ["key", "operator", "values"]) else { continue }
                guard let key = string(ef["key"], "\(ep).key") else {
                    fail(e, "\(ep).key", "required")
                    continue
                }
                let opName = string(ef["operator"], "\(ep).operator") ?? ""
                guard let op = LabelSelector.Operator(rawValue: opName) else {
                    fail(ef["operator"] ?? e, "\(ep).operator", "must be In, NotIn, Exists or DoesNotExist, got \(opName.isEmpty ? "nothing" : opName)")
                    continue
                }
                let values = (list(ef["values"], "\(ep).values") ?? []).enumerated().compactMap { string($1, "\(ep).values[\($0)]") }
                if (op == .in || op == .notIn) && values.isEmpty {
                    fail(e, "\(ep).values", "\(op.rawValue) needs at least one value")
                }
                if (op == .exists || op == .doesNotExist) && !values.isEmpty {
                    fail(ef["values"], "\(ep).values", "\(op.rawValue) takes no values")
                }
                exprs.append(.init(key: key, op: op, values: values))
            }
            return LabelSelector(matchLabels: labels, matchExpressions: exprs)
        }

        mutating func portRule(_ node: Node, _ path: String) -> CiliumNetworkPolicy.PortRule? {
            guard let f = fields(node, path, allowed: ["ports", "rules"]) else { return nil }
            var ports: [CiliumNetworkPolicy.PortProtocol] = []
            for (i, p) in (list(f["ports"], "\(path).ports") ?? []).enumerated() {
                let pp = "\(path).ports[\(i)]"
                guard let pf = fields(p, pp, allowed: ["port", "protocol"]) else { continue }
                let portText = string(pf["port"], "\(pp).port") ?? ""
                guard let port = UInt16(portText) else {
                    fail(pf["port"] ?? p, "\(pp).port", "expected a port number 0-65535, got \"\(portText)\" (named ports are not supported)")
                    continue
                }
                let protoText = pf["protocol"].flatMap { string($0, "\(pp).protocol") } ?? "ANY"
                guard let l4 = CiliumNetworkPolicy.PortProtocol.L4(rawValue: protoText) else {
                    fail(pf["protocol"], "\(pp).protocol", "must be TCP, UDP or ANY, got \(protoText)")
                    continue
                }
                ports.append(.init(port: port, l4: l4))
            }
            var http: [CiliumNetworkPolicy.HTTPRule]?
            var dns: [CiliumNetworkPolicy.DNSRule]?
            if let rulesNode = f["rules"], let rf = fields(rulesNode, "\(path).rules", allowed: ["http", "dns"]) {
                if let h = rf["http"] {
                    http = (list(h, "\(path).rules.http") ?? []).enumerated().compactMap { httpRule($1, "\(path).rules.http[\($0)]") }
                }
                if let d = rf["dns"] {
                    dns = (list(d, "\(path).rules.dns") ?? []).enumerated().compactMap { dnsRule($1, "\(path).rules.dns[\($0)]") }
                }
            }
            return .init(ports: ports, http: http, dns: dns)
        }

        mutating func dnsRule(_ node: Node, _ path: String) -> CiliumNetworkPolicy.DNSRule? {
            guard let f = fields(node, path, allowed: ["matchName", "matchPattern"]) else { return nil }
            let name = string(f["matchName"], "\(path).matchName")
            let pattern = string(f["matchPattern"], "\(path).matchPattern")
            if (name == nil) == (pattern == nil) {
                fail(node, path, "give exactly one of matchName or matchPattern")
                return nil
            }
            let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.*".utf8)
            if let v = name ?? pattern, !v.utf8.allSatisfy(allowed.contains) || (name != nil && v.contains("*")) {
                fail(f["matchName"] ?? f["matchPattern"], "\(path).\(name != nil ? "matchName" : "matchPattern")",
                     "\"\(v)\" is not a DNS name\(pattern != nil ? " pattern" : "")")
                return nil
            }
            return .init(matchName: name, matchPattern: pattern)
        }

        mutating func httpRule(_ node: Node, _ path: String) -> CiliumNetworkPolicy.HTTPRule? {
            guard let f = fields(node, path, allowed: ["method", "path", "host", "headers"]) else { return nil }
            func regex(_ key: String) -> POSIXRegex? {
                guard let n = f[key], let s = string(n, "\(path).\(key)") else { return nil }
                do { return try POSIXRegex(s) } catch {
                    fail(n, "\(path).\(key)", "\(error)")
                    return nil
                }
            }
            var headers: [CiliumNetworkPolicy.HTTPRule.HeaderMatch] = []
            for (i, h) in (list(f["headers"], "\(path).headers") ?? []).enumerated() {
                guard let s = string(h, "\(path).headers[\(i)]") else { continue }
                if let colon = s.firstIndex(of: ":") {
                    let name = s[..<colon].trimmed(" \t")
                    let value = s[s.index(after: colon)...].trimmed(" \t")
                    headers.append(.init(name: name, value: value))
                } else {
                    headers.append(.init(name: s.trimmed(" \t"), value: nil))
                }
            }
            return .init(method: regex("method"), path: regex("path"), host: regex("host"), headers: headers)
        }
    }
}
