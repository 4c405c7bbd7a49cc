import Foundation
import LoupePolicy
import Testing

let rule1Path = URL(filePath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appending(path: "examples/starwars/rule1.yaml").path

func pod(_ name: String, _ ns: String = "default", _ labels: [String: String]) -> Pod {
    Pod(name: name, namespace: ns, labels: labels, ips: [])
}

let deathstar = pod("deathstar", "default", ["org": "empire", "class": "deathstar"])
let tiefighter = pod("tiefighter", "default", ["org": "empire", "class": "tiefighter"])
let xwing = pod("xwing", "default", ["org": "alliance", "class": "xwing"])

func request(_ method: String, _ path: String, host: String = "deathstar", headers: [(String, String)] = []) -> HTTPRequestFacts {
    HTTPRequestFacts(method: method, path: path, host: host, headers: headers.map { (name: $0.0, value: $0.1) })
}

func engine(_ yaml: String) throws -> PolicyEngine {
    let r = PolicyParser.parse(yaml, file: "test.yaml")
    if !r.errors.isEmpty { throw r.errors[0] }
    return PolicyEngine(policies: r.policies)
}

@Suite struct PolicyParserTests {
    @Test func ciliumsRule1LoadsUnchanged() throws {
        let r = PolicyParser.parse(try String(contentsOfFile: rule1Path, encoding: .utf8), file: "rule1.yaml")
        #expect(r.errors.isEmpty)
        let p = try #require(r.policies.first)
        #expect(p.name == "rule1" && p.namespace == "default" && !p.isClusterwide)
        #expect(p.rules[0].ingress?[0].toPorts?[0].http?[0].description == "method=POST path=/v1/request-landing")
    }

    @Test func unsupportedFieldsNameFileLineAndField() {
        let typo = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata:
          name: typo
        spec:
          endpointSelectr:
            matchLabels: {app: x}
        """
        let r = PolicyParser.parse(typo, file: "typo.yaml")
        #expect(r.policies.isEmpty)
        #expect(r.errors.map(\.description).contains { $0.hasPrefix("typo.yaml:6: spec.endpointSelectr: unsupported field") })

        let fqdn = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: fqdn}
        spec:
          endpointSelector: {}
          egress:
          - toFQDNs:
            - matchName: api.example.test
        """
        let e = PolicyParser.parse(fqdn, file: "fqdn.yaml").errors
        #expect(e.map(\.description).contains { $0.hasPrefix("fqdn.yaml:7: spec.egress[0].toFQDNs: unsupported field") })
    }

    @Test func badValuesAreErrors() {
        let bad = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: bad}
        spec:
          endpointSelector:
            matchExpressions:
            - {key: app, operator: Maybe, values: [x]}
          ingress:
          - toPorts:
            - ports: [{port: http, protocol: TCP}]
              rules:
                http:
                - path: "/v1/(unclosed"
        """
        let e = PolicyParser.parse(bad, file: "bad.yaml").errors.map(\.description)
        #expect(e.contains { $0.contains("bad.yaml:7: spec.endpointSelector.matchExpressions[0].operator: must be In, NotIn, Exists or DoesNotExist") })
        #expect(e.contains { $0.contains("spec.ingress[0].toPorts[0].ports[0].port: expected a port number") })
        #expect(e.contains { $0.contains("bad.yaml:13: spec.ingress[0].toPorts[0].rules.http[0].path: invalid regular expression") })
        #expect(PolicyParser.parse("a: [", file: "y.yaml").errors.first?.description.hasPrefix("y.yaml:") == true)
        #expect(PolicyParser.parse("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n", file: "k.yaml").errors.map(\.field) == ["apiVersion", "kind"])
    }

    @Test func specsAndClusterwide() throws {
        let e = try engine("""
        apiVersion: cilium.io/v2
        kind: CiliumClusterwideNetworkPolicy
        metadata: {name: cw}
        specs:
        - endpointSelector: {matchLabels: {"k8s:class": deathstar}}
          ingress:
          - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: other}}]
        - endpointSelector: {matchLabels: {class: xwing}}
          egress: [{}]
        """)
        #expect(e.policies[0].isClusterwide && e.policies[0].rules.count == 2)
        let visitor = pod("v", "other", [:])
        #expect(!e.decide(client: visitor, server: deathstar, port: 80).deniesConnection)
        #expect(e.decide(client: tiefighter, server: deathstar, port: 80).deniesConnection)
        // `egress: [{}]` selects nobody: the x-wing may go nowhere.
        #expect(e.decide(client: xwing, server: tiefighter, port: 80).deniesConnection)
    }
}

@Suite struct PolicySemanticsTests {
    @Test func starWarsRule1() throws {
        let e = PolicyEngine(policies: PolicyParser.parse(try String(contentsOfFile: rule1Path, encoding: .utf8), file: "rule1.yaml").policies)
        let tie = e.decide(client: tiefighter, server: deathstar, port: 80)
        #expect(!tie.deniesConnection)
        #expect(tie.allows(request("POST", "/v1/request-landing")))
        #expect(!tie.allows(request("PUT", "/v1/exhaust-port")))
        #expect(e.decide(client: xwing, server: deathstar, port: 80).deniesConnection)
        // Another port of the death star: selected for ingress, no rule for 8080 → denied.
        #expect(e.decide(client: tiefighter, server: deathstar, port: 8080).deniesConnection)
        // Pods nobody selects are not enforced.
        #expect(!e.decide(client: xwing, server: tiefighter, port: 80).isEnforced)
        #expect(e.l7Ports(of: deathstar).ingress == [PolicyEngine.L7Port(port: 80, tcp: true, dns: false)])
        #expect(e.l7Ports(of: tiefighter).ingress.isEmpty)
    }

    @Test func rulesAreFullMatchCaseSensitive() throws {
        let e = PolicyEngine(policies: PolicyParser.parse(try String(contentsOfFile: rule1Path, encoding: .utf8), file: "rule1.yaml").policies)
        let d = e.decide(client: tiefighter, server: deathstar, port: 80)
        #expect(!d.allows(request("POST", "/v1/request-landing/extra")))
        #expect(!d.allows(request("POST", "/v1/request-landingX")))
        #expect(!d.allows(request("post", "/v1/request-landing")))
        #expect(!d.allows(request("POST", "/v1/request-landing?x=1")))
    }

    static let headerPolicy = """
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: headers}
    spec:
      endpointSelector: {matchLabels: {class: deathstar}}
      ingress:
      - toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http:
            - {method: GET, path: "/v1/.*", headers: ["X-Has-Force"]}
            - {method: PUT, headers: ["X-Role: admin"], host: "deathstar(\\\\.default)?"}
    """

    @Test func headersPresentOrEqual() throws {
        let d = try engine(Self.headerPolicy).decide(client: xwing, server: deathstar, port: 80)
        #expect(!d.allows(request("GET", "/v1/x")))
        #expect(d.allows(request("GET", "/v1/x", headers: [("x-has-force", "")])))
        #expect(!d.allows(request("PUT", "/v1/exhaust-port", headers: [("X-Role", "pilot")])))
        #expect(d.allows(request("PUT", "/v1/exhaust-port", headers: [("X-Role", "admin")])))
        #expect(d.allows(request("PUT", "/v1/exhaust-port", host: "deathstar.default", headers: [("X-Role", "admin")])))
        #expect(!d.allows(request("PUT", "/v1/exhaust-port", host: "deathstar.evil", headers: [("X-Role", "admin")])))
    }

    @Test func policiesAddUpAndOtherNamespacesDoNotApply() throws {
        let yaml = try String(contentsOfFile: rule1Path, encoding: .utf8) + """
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: rule2}
        spec:
          endpointSelector: {matchLabels: {class: deathstar}}
          ingress:
          - fromEndpoints: [{matchLabels: {org: empire}}]
            toPorts:
            - ports: [{port: "80"}]
              rules: {http: [{method: GET, path: /v1/}]}
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: elsewhere, namespace: rebels}
        spec:
          endpointSelector: {matchLabels: {class: deathstar}}
          ingress:
          - toPorts:
            - ports: [{port: "80"}]
              rules: {http: [{}]}
        """
        let d = try engine(yaml).decide(client: tiefighter, server: deathstar, port: 80)
        #expect(d.allows(request("POST", "/v1/request-landing")))
        #expect(d.allows(request("GET", "/v1/")))
        #expect(!d.allows(request("PUT", "/v1/exhaust-port")))
        #expect(try engine(yaml).decide(client: xwing, server: deathstar, port: 80).deniesConnection)
    }

    @Test func emptyHTTPRuleAllowsAllAndL4RuleAllowsAllForItsPeer() throws {
        let d = try engine("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: open}
        spec:
          endpointSelector: {matchLabels: {class: deathstar}}
          ingress:
          - fromEndpoints: [{matchLabels: {org: alliance}}]
            toPorts: [{ports: [{port: "80"}], rules: {http: [{}]}}]
          - fromEndpoints: [{matchExpressions: [{key: class, operator: In, values: [tiefighter]}]}]
            toPorts: [{ports: [{port: "80"}]}]
        """)
        #expect(d.decide(client: xwing, server: deathstar, port: 80).allows(request("DELETE", "/anything")))
        #expect(d.decide(client: tiefighter, server: deathstar, port: 80).allows(request("PUT", "/v1/exhaust-port")))
        #expect(d.decide(client: nil, server: deathstar, port: 80).deniesConnection) // the world matches no endpoint selector
    }

    @Test func egressPoliciesApplyToTheClient() throws {
        let d = try engine("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: egress}
        spec:
          endpointSelector: {matchLabels: {class: xwing}}
          egress:
          - toEndpoints: [{matchLabels: {class: deathstar}}]
            toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
        """)
        let c = d.decide(client: xwing, server: deathstar, port: 80)
        #expect(c.allows(request("GET", "/v1/")) && !c.allows(request("POST", "/v1/request-landing")))
        #expect(d.decide(client: xwing, server: tiefighter, port: 80).deniesConnection)
        #expect(d.l7Ports(of: xwing).egress == [PolicyEngine.L7Port(port: 80, tcp: true, dns: false)])
    }
}

@Suite struct DNSPolicyTests {
    static let yaml = """
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: dns, namespace: shop}
    spec:
      endpointSelector: {matchLabels: {app: client}}
      egress:
      - toPorts:
        - ports: [{port: "53", protocol: ANY}]
          rules:
            dns:
            - matchPattern: "*.example.test"
            - matchName: "Exact.Other.Test"
    """

    @Test func matchNameAndMatchPatternFollowCilium() throws {
        let e = try engine(Self.yaml)
        let client = pod("client", "shop", ["app": "client"])
        let d = e.decide(client: client, server: nil, port: 53, tcp: false)
        #expect(d.allows(dnsQuery: "api.example.test."))
        #expect(d.allows(dnsQuery: "API.Example.Test"))
        #expect(!d.allows(dnsQuery: "example.test."), "* needs the dot before it")
        #expect(!d.allows(dnsQuery: "a.b.example.test."), "* stays within one label")
        #expect(d.allows(dnsQuery: "exact.other.test."))
        #expect(!d.allows(dnsQuery: "other.test."))
        #expect(e.l7Ports(of: client).egress == [.init(port: 53, tcp: true, dns: true), .init(port: 53, tcp: false, dns: true)])
        #expect(e.decide(client: client, server: nil, port: 80).deniesConnection, "egress is default-deny now")
    }

    @Test func badDNSRulesAreErrors() {
        let bad = Self.yaml.replacingOccurrences(of: "- matchName: \"Exact.Other.Test\"", with: "- {matchName: \"a*b\"}\n        - {matchPattern: x, matchName: y}")
        let e = PolicyParser.parse(bad, file: "d.yaml").errors.map(\.description)
        #expect(e.contains { $0.contains("rules.dns[1].matchName: \"a*b\" is not a DNS name") }, "\(e)")
        #expect(e.contains { $0.contains("rules.dns[2]: give exactly one of matchName or matchPattern") }, "\(e)")
    }
}
