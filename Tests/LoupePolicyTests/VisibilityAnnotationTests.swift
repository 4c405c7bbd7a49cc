import LoupePolicy
import Testing

@Suite struct VisibilityAnnotationTests {
    @Test func parsesCiliumSyntax() {
        let r = VisibilityAnnotation.parse("<Egress/53/UDP/DNS>,<Egress/80/TCP/HTTP>, <Ingress/8080/TCP/HTTP>,<Egress/443/TCP/TLS>")
        #expect(r.errors.isEmpty)
        #expect(r.rules == [
            VisibilityRule(direction: .egress, port: 53, l4: .udp, l7: .dns),
            VisibilityRule(direction: .egress, port: 80, l4: .tcp, l7: .http),
            VisibilityRule(direction: .ingress, port: 8080, l4: .tcp, l7: .http),
            VisibilityRule(direction: .egress, port: 443, l4: .tcp, l7: .tls),
        ])
    }

    @Test func malformedTokensAreReportedAndTheRestApplies() {
        let r = VisibilityAnnotation.parse("<Egress/80/TCP/HTTP>,<Sideways/80/TCP/HTTP>,<Egress/99999/TCP/HTTP>,Egress/81/TCP/HTTP,<Egress/82/SCTP/HTTP>,<Egress/83/TCP/SMTP>")
        #expect(r.rules == [VisibilityRule(direction: .egress, port: 80, l4: .tcp, l7: .http)])
        #expect(r.errors.map(\.token) == ["<Sideways/80/TCP/HTTP>", "<Egress/99999/TCP/HTTP>", "Egress/81/TCP/HTTP",
                                          "<Egress/82/SCTP/HTTP>", "<Egress/83/TCP/SMTP>"])
        #expect(r.errors[0].reason.contains("Sideways"))
        #expect(r.errors[1].reason.contains("99999"))
    }

    @Test func ciliumKeyIsAcceptedLoupeKeyWins() {
        #expect(VisibilityAnnotation.value(in: ["policy.cilium.io/proxy-visibility": "<Egress/80/TCP/HTTP>"]) == "<Egress/80/TCP/HTTP>")
        #expect(VisibilityAnnotation.value(in: ["policy.cilium.io/proxy-visibility": "a", "loupe.io/proxy-visibility": "b"]) == "b")
    }
}

@Suite struct InventoryTests {
    static let yaml = """
    apiVersion: v1
    kind: Namespace
    metadata:
      name: empire
      annotations:
        loupe.io/proxy-visibility: "<Ingress/80/TCP/HTTP>,<Egress/bad>"
    ---
    apiVersion: v1
    kind: Pod
    metadata:
      name: deathstar
      namespace: empire
      labels: {org: empire, class: deathstar}
    spec:
      containers:
      - name: http
        command: ["python3", "-m", "http.server"]
        args: ["80"]
    status:
      podIPs: [{ip: 198.18.0.11}, {ip: "2001:db8:18::b"}]
      loupe: {hostInterface: lxc1}
    ---
    apiVersion: v1
    kind: Pod
    metadata:
      name: xwing
      annotations:
        policy.cilium.io/proxy-visibility: "<Egress/80/TCP/HTTP>"
    status:
      podIP: 198.18.0.10
    ---
    apiVersion: loupe.io/v1alpha1
    kind: LabHost
    metadata: {name: api}
    spec:
      command: ["nginx"]
      dnsNames: [api.example.test]
    """

    @Test func parsesNamespacesPodsAndLabHosts() throws {
        let inv = try InventoryLoader.parse(Self.yaml, file: "t.yaml")
        #expect(inv.namespaces.map(\.name).sorted() == ["default", "empire"])
        let ds = try #require(inv.pods.first { $0.name == "deathstar" })
        #expect(ds.labels == ["org": "empire", "class": "deathstar"])
        #expect(ds.containers[0].argv == ["python3", "-m", "http.server", "80"])
        #expect(ds.ips == ["198.18.0.11", "2001:db8:18::b"])
        #expect(ds.hostInterface == "lxc1")
        #expect(inv.labHosts[0].dnsNames == ["api.example.test"])
    }

    @Test func renderedInventoryParsesBackTheSame() throws {
        let inv = try InventoryLoader.parse(Self.yaml, file: "t.yaml")
        let again = try InventoryLoader.parse(InventoryLoader.render(inv), file: "rendered")
        #expect(again.pods == inv.pods)
        #expect(again.labHosts == inv.labHosts)
        #expect(Set(again.namespaces.map(\.name)) == Set(inv.namespaces.map(\.name)))
    }

    @Test func unsupportedObjectsAreErrorsNamingThem() {
        #expect {
            try InventoryLoader.parse("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n", file: "x.yaml")
        } throws: { error in
            "\(error)".contains("x.yaml: Deployment web: unsupported object apps/v1 Deployment")
        }
        #expect(throws: InventoryError.self) { try InventoryLoader.parse("kind: Pod\napiVersion: v1\nmetadata: {}\n") }
        #expect(throws: InventoryError.self) { try InventoryLoader.parse("apiVersion: v1\nkind: [\n") }
        #expect(throws: InventoryError.self) { try InventoryLoader.parse("apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: [x]}\n") }
    }

    @Test func planResolvesPodOverNamespaceAndReportsBadTokens() throws {
        let inv = try InventoryLoader.parse(Self.yaml, file: "t.yaml")
        let plan = RedirectPlan(inventory: inv)
        #expect(plan.problems.count == 1)
        #expect(plan.problems[0].description.contains("namespace empire"))
        #expect(plan.problems[0].description.contains("<Egress/bad>"))
        // xwing's Egress rule, deathstar's Ingress rule: both select xwing → deathstar:80.
        #expect(plan.rule(clientIP: "198.18.0.10", serverIP: "198.18.0.11", port: 80)?.direction == .egress)
        #expect(plan.rule(clientIP: "198.18.0.99", serverIP: "198.18.0.11", port: 80)?.direction == .ingress)
        #expect(plan.rule(clientIP: "198.18.0.99", serverIP: "198.18.0.11", port: 81) == nil)
    }

    @Test func identityFollowsLabelsNotNames() throws {
        let a = Pod(name: "a", namespace: "n", labels: ["app": "x"])
        let b = Pod(name: "b", namespace: "n", labels: ["app": "x"])
        let c = Pod(name: "c", namespace: "n", labels: ["app": "y"])
        #expect(EndpointIdentity(pod: a).identity == EndpointIdentity(pod: b).identity)
        #expect(EndpointIdentity(pod: a).identity != EndpointIdentity(pod: c).identity)
        #expect(EndpointIdentity(pod: a).id != EndpointIdentity(pod: b).id)
        #expect(EndpointIdentity(pod: a).labels == ["k8s:app=x", "k8s:io.kubernetes.pod.namespace=n"])
        #expect(EndpointIdentity(pod: a).identity >= 256)
    }
}
