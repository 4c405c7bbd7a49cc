import Foundation
import LoupePolicy
import Testing
@testable import LoupeAgent

/// The Kubernetes source without a server: list/watch semantics, kubeconfig loading, and
/// API objects → the model the datapath and proxy use.
@Suite struct KubernetesTests {
    func pod(_ name: String, rv: String, ns: String = "shop", node: String = "n1", ip: String? = "10.0.0.1") -> KubeObject {
        var status: [String: Any] = ["phase": "Running"]
        if let ip { status["podIP"] = ip; status["podIPs"] = [["ip": ip]] }
        return KubeObject(["metadata": ["name": name, "namespace": ns, "resourceVersion": rv, "labels": ["app": name]],
                           "spec": ["nodeName": node], "status": status])
    }

    @Test func listReplacesWatchChangesBookmarkAdvancesGoneAsksForRelist() {
        var store = InformerStore<KubeObject>(decode: { $0 })
        store.replace(with: [pod("a", rv: "5"), pod("b", rv: "6")], resourceVersion: "10")
        #expect(store.objects.keys.sorted() == ["shop/a", "shop/b"] && store.resourceVersion == "10")
        #expect(store.apply(WatchEvent(type: "ADDED", object: pod("c", rv: "11"))) == .changed)
        #expect(store.apply(WatchEvent(type: "DELETED", object: pod("a", rv: "12"))) == .changed)
        #expect(store.objects.keys.sorted() == ["shop/b", "shop/c"] && store.resourceVersion == "12")
        #expect(store.apply(WatchEvent(type: "BOOKMARK", object: KubeObject(["metadata": ["resourceVersion": "40"]]))) == .bookmark)
        #expect(store.resourceVersion == "40" && store.objects.count == 2)
        let gone = KubeObject(["kind": "Status", "code": 410, "message": "too old resource version"])
        #expect(store.apply(WatchEvent(type: "ERROR", object: gone)) == .gone)
        let other = KubeObject(["kind": "Status", "code": 500, "message": "boom"])
        #expect(store.apply(WatchEvent(type: "ERROR", object: other)) == .error(code: 500, message: "boom"))
        // A relist replaces the state atomically: objects missing from it are gone.
        store.replace(with: [pod("d", rv: "41")], resourceVersion: "41")
        #expect(store.objects.keys.sorted() == ["shop/d"])
    }

    @Test func podsAndNamespacesBecomeTheModel() throws {
        let p = try #require(KubernetesSource.pod(pod("web", rv: "1", node: "node-b", ip: "10.1.0.9")))
        #expect(p.qualifiedName == "shop/web" && p.ips == ["10.1.0.9"] && p.nodeName == "node-b" && p.labels["app"] == "web")
        #expect(!p.runs(on: "n1") && p.runs(on: "node-b"))
        var done = pod("old", rv: "2").json
        done["status"] = ["phase": "Succeeded", "podIP": "10.0.0.2"]
        #expect(KubernetesSource.pod(KubeObject(done)) == nil)
        #expect(KubernetesSource.pod(pod("pending", rv: "3", ip: nil))?.ips == [])
        let ns = KubernetesSource.namespace(KubeObject(["metadata": ["name": "shop", "annotations": ["loupe.io/proxy-visibility": "<Egress/80/TCP/HTTP>"]]]))
        #expect(ns.annotations["loupe.io/proxy-visibility"] == "<Egress/80/TCP/HTTP>")
    }

    @Test func cnpFromTheAPIParsesWithoutItsBookkeepingAndRejectionsNameObjectAndField() {
        let spec: [String: Any] = ["endpointSelector": ["matchLabels": ["app": "web"]],
                                   "ingress": [["toPorts": [["ports": [["port": "80", "protocol": "TCP"]],
                                                             "rules": ["http": [["method": "GET"]]]]]]]]
        let good = KubeObject(["apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                               "metadata": ["name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "7", "generation": 1,
                                            "creationTimestamp": "2026-12-02T00:00:00Z", "managedFields": [["manager": "kubectl"]]],
                               "spec": spec, "status": ["conditions": []]])
        guard case .success(let policies) = KubernetesSource.policy(good, resource: .ciliumNetworkPolicies) else {
            Issue.record("a valid CNP was rejected")
            return
        }
        #expect(policies.map(\.name) == ["web"] && policies[0].namespace == "shop")
        let bad = KubeObject(["metadata": ["name": "typo", "namespace": "shop"], "spec": ["endpointSelectr": [:] as [String: Any]]])
        guard case .failure(let r) = KubernetesSource.policy(bad, resource: .ciliumNetworkPolicies) else {
            Issue.record("a CNP with a misspelt field was accepted")
            return
        }
        #expect(r.errors.contains { $0.description.contains("CiliumNetworkPolicy shop/typo") && $0.field == "spec.endpointSelectr" })
    }

    @Test func kubeconfigCurrentContextTokenCertificatesAndErrors() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("loupe-kubeconfig-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "tok".write(toFile: dir + "/token", atomically: false, encoding: .utf8)
        let text = """
        apiVersion: v1
        kind: Config
        current-context: b
        clusters:
        - {name: one, cluster: {server: "https://10.0.0.1:6443", certificate-authority-data: \(Data("CA".utf8).base64EncodedString())}}
        contexts:
        - {name: a, context: {cluster: one, user: nobody}}
        - {name: b, context: {cluster: one, user: sa}}
        users:
        - {name: sa, user: {tokenFile: token}}
        """
        let c = try KubeConfig.parse(text, file: dir + "/config")
        #expect(c.server == "https://10.0.0.1:6443" && c.caPEM == Array("CA".utf8) && c.credential == .tokenFile(dir + "/token"))
        #expect(throws: KubeConfigError.self) { try KubeConfig.parse("current-context: x\ncontexts: []\n", file: "f") }
        do {
            _ = try KubeConfig.parse(text.replacingOccurrences(of: "current-context: b", with: "current-context: zz"), file: "f")
        } catch let e as KubeConfigError {
            #expect(e.field == "contexts" && e.message.contains("zz"))
        }
        do {
            _ = try KubeConfig.parse(text.replacingOccurrences(of: "https://10.0.0.1:6443", with: "10.0.0.1"), file: "f")
        } catch let e as KubeConfigError {
            #expect(e.field == "clusters[name=one].cluster.server")
        }
        let env = ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"]
        let inCluster = try KubeConfig.inCluster(environment: env, directory: dir)
        #expect(inCluster.server == "https://10.96.0.1:443" && inCluster.credential == .tokenFile(dir + "/token"))
        #expect(throws: KubeConfigError.self) { try KubeConfig.inCluster(environment: [:], directory: dir) }
    }
}
