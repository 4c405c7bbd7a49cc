import Yams

/// A problem in an inventory file: which file, which object, which field.
public struct InventoryError: Error, CustomStringConvertible, Sendable, Equatable {
    public var file: String
    public var object: String
    public var message: String

    public init(file: String, object: String, message: String) {
        self.file = file
        self.object = object
        self.message = message
    }

    public var description: String { "\(file): \(object): \(message)" }
}

/// Parses and prints the inventory YAML (multi-document Kubernetes objects).
public enum InventoryLoader {
    public static func parse(_ text: String, file: String = "<inventory>") throws -> Inventory {
        var inv = Inventory()
        var docs: [Any?] = []
        do {
            // Parser.nextRoot rather than load_all: the lazy sequence drops errors.
            let parser = try Parser(yaml: text)
            while let root = try parser.nextRoot() { docs.append(root.any) }
        } catch {
            throw InventoryError(file: file, object: "document", message: "not valid YAML: \(error)")
        }
        for (index, doc) in docs.enumerated() {
            guard let doc else { continue }
            guard let obj = doc as? [String: Any] else {
                throw InventoryError(file: file, object: "document \(index + 1)", message: "expected a mapping (a Kubernetes object)")
            }
            let apiVersion = obj["apiVersion"] as? String ?? ""
            let kind = obj["kind"] as? String ?? ""
            let meta = obj["metadata"] as? [String: Any] ?? [:]
            guard let name = meta["name"] as? String, !name.isEmpty else {
                throw InventoryError(file: file, object: "document \(index + 1) (\(kind))", message: "metadata.name is required")
            }
            let where_ = "\(kind) \(name)"
            let labels = try stringMap(meta["labels"], file: file, object: where_, field: "metadata.labels")
            let annotations = try stringMap(meta["annotations"], file: file, object: where_, field: "metadata.annotations")
            switch (apiVersion, kind) {
            case ("v1", "Namespace"):
                inv.namespaces.append(Namespace(name: name, labels: labels, annotations: annotations))
            case ("v1", "Pod"):
                let spec = obj["spec"] as? [String: Any] ?? [:]
                var containers: [Container] = []
                for (ci, c) in (spec["containers"] as? [Any] ?? []).enumerated() {
                    guard let c = c as? [String: Any] else {
                        throw InventoryError(file: file, object: where_, message: "spec.containers[\(ci)] must be a mapping")
                    }
                    containers.append(Container(
                        name: c["name"] as? String ?? "c\(ci)",
                        command: try stringList(c["command"], file: file, object: where_, field: "spec.containers[\(ci)].command"),
                        args: try stringList(c["args"], file: file, object: where_, field: "spec.containers[\(ci)].args")))
                }
                let status = obj["status"] as? [String: Any] ?? [:]
                var ips: [String] = []
                for entry in status["podIPs"] as? [Any] ?? [] {
                    if let e = entry as? [String: Any], let ip = e["ip"] as? String { ips.append(ip) }
                }
                if ips.isEmpty, let ip = status["podIP"] as? String { ips = [ip] }
                let loupe = status["loupe"] as? [String: Any] ?? [:]
                inv.pods.append(Pod(name: name, namespace: meta["namespace"] as? String ?? "default",
                                    labels: labels, annotations: annotations, containers: containers,
                                    ips: ips, hostInterface: loupe["hostInterface"] as? String,
                                    nodeName: spec["nodeName"] as? String, hostNetwork: spec["hostNetwork"] as? Bool ?? false))
            case ("v1", "Node"):
                let status = obj["status"] as? [String: Any] ?? [:]
                var addresses: [String] = []
                for (ai, entry) in (status["addresses"] as? [Any] ?? []).enumerated() {
                    guard let e = entry as? [String: Any], let type = e["type"] as? String, let address = e["address"] as? String else {
                        throw InventoryError(file: file, object: where_, message: "status.addresses[\(ai)] needs type and address")
                    }
                    if type == "InternalIP" { addresses.append(address) }
                }
                inv.nodes.append(ClusterNode(name: name, addresses: addresses))
            case ("loupe.io/v1alpha1", "LabHost"):
                let spec = obj["spec"] as? [String: Any] ?? [:]
                let status = obj["status"] as? [String: Any] ?? [:]
                inv.labHosts.append(LabHost(
                    name: name,
                    command: try stringList(spec["command"], file: file, object: where_, field: "spec.command"),
                    dnsNames: try stringList(spec["dnsNames"], file: file, object: where_, field: "spec.dnsNames"),
                    ips: try stringList(status["hostIPs"], file: file, object: where_, field: "status.hostIPs")))
            default:
                throw InventoryError(file: file, object: where_,
                                     message: "unsupported object \(apiVersion) \(kind) (supported: v1 Namespace, v1 Pod, v1 Node, loupe.io/v1alpha1 LabHost)")
            }
        }
        // Pods in a namespace with no Namespace object get an implicit one, as in a cluster.
        for pod in inv.pods where inv.namespace(named: pod.namespace) == nil {
            inv.namespaces.append(Namespace(name: pod.namespace))
        }
        return inv
    }

    /// The resolved inventory as YAML, `status` included.
    public static func render(_ inv: Inventory) -> String {
        var docs: [[String: Any]] = []
        for node in inv.nodes {
            docs.append(["apiVersion": "v1", "kind": "Node", "metadata": ["name": node.name],
                         "status": ["addresses": node.addresses.map { ["type": "InternalIP", "address": $0] }]])
        }
        for ns in inv.namespaces {
            docs.append(["apiVersion": "v1", "kind": "Namespace",
                         "metadata": metadata(name: ns.name, namespace: nil, labels: ns.labels, annotations: ns.annotations)])
        }
        for pod in inv.pods {
            var status: [String: Any] = [:]
            if let first = pod.ips.first {
                status["podIP"] = first
                status["podIPs"] = pod.ips.map { ["ip": $0] }
            }
            if let ifname = pod.hostInterface { status["loupe"] = ["hostInterface": ifname] }
            var spec: [String: Any] = ["containers": pod.containers.map { ["name": $0.name, "command": $0.command, "args": $0.args] }]
            if let node = pod.nodeName { spec["nodeName"] = node }
            if pod.hostNetwork { spec["hostNetwork"] = true }
            docs.append(["apiVersion": "v1", "kind": "Pod",
                         "metadata": metadata(name: pod.name, namespace: pod.namespace, labels: pod.labels, annotations: pod.annotations),
                         "spec": spec, "status": status])
        }
        for host in inv.labHosts {
            docs.append(["apiVersion": "loupe.io/v1alpha1", "kind": "LabHost",
                         "metadata": ["name": host.name],
                         "spec": ["command": host.command, "dnsNames": host.dnsNames],
                         "status": ["hostIPs": host.ips]])
        }
        return docs.map { (try? Yams.dump(object: $0, sortKeys: true)) ?? "" }.joined(separator: "---\n")
    }

    private static func metadata(name: String, namespace: String?, labels: [String: String], annotations: [String: String]) -> [String: Any] {
        var m: [String: Any] = ["name": name]
        if let namespace { m["namespace"] = namespace }
        if !labels.isEmpty { m["labels"] = labels }
        if !annotations.isEmpty { m["annotations"] = annotations }
        return m
    }

    private static func stringMap(_ value: Any?, file: String, object: String, field: String) throws -> [String: String] {
        guard let value else { return [:] }
        guard let dict = value as? [String: Any] else {
            throw InventoryError(file: file, object: object, message: "\(field) must be a mapping of strings")
        }
        var out: [String: String] = [:]
        for (k, v) in dict {
            switch v {
            case let s as String: out[k] = s
            case let i as Int: out[k] = String(i)
            case let b as Bool: out[k] = String(b)
            default: throw InventoryError(file: file, object: object, message: "\(field).\(k) must be a string")
            }
        }
        return out
    }

    private static func stringList(_ value: Any?, file: String, object: String, field: String) throws -> [String] {
        guard let value else { return [] }
        if let s = value as? String { return [s] }
        guard let list = value as? [Any] else {
            throw InventoryError(file: file, object: object, message: "\(field) must be a list of strings")
        }
        return try list.map {
            switch $0 {
            case let s as String: return s
            case let i as Int: return String(i)
            default: throw InventoryError(file: file, object: object, message: "\(field) must be a list of strings")
            }
        }
    }
}
