import Foundation
import LoupePolicy
import LoupeProcess

/// `loupe lab up|down|exec`: builds the netns lab from an inventory and tears it down.
/// `up` reconciles: pods whose spec did not change keep their netns, address and processes
/// (so re-running it with an edited annotation only rewrites the resolved inventory); leftovers
/// of a crashed run (netns and processes without state) are removed first.
public struct Lab {
    public var stateDirectory: String
    public var log: (String) -> Void
    /// The shape `up` builds (a lab of the other shape is rebuilt from scratch).
    public var cni: LabCNI

    public init(stateDirectory: String = LabNetwork.stateDirectory, cni: LabCNI = .routed, log: @escaping (String) -> Void = { print($0) }) {
        self.stateDirectory = stateDirectory
        self.cni = cni
        self.log = log
    }

    var cniPath: String { stateDirectory + "/cni" }

    /// The shape of the lab that is up (routed when it says nothing).
    public func currentCNI() -> LabCNI {
        (try? String(contentsOfFile: cniPath, encoding: .utf8)).flatMap { LabCNI(rawValue: $0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? .routed
    }

    var resolvedPath: String { stateDirectory + "/inventory.yaml" }
    var pidDirectory: String { stateDirectory + "/pids" }
    var logDirectory: String { stateDirectory + "/logs" }
    var podsDirectory: String { stateDirectory + "/pods" }

    // MARK: up

    /// PREPARE runs once the lab's state directory exists (and a crashed run's leftovers are
    /// gone), before any pod starts: the CLI makes the lab's node CA there.
    @discardableResult
    public func up(file: String, prepare: () throws -> Void = {}) throws -> Inventory {
        let text = try String(contentsOfFile: file, encoding: .utf8)
        let inventoryDirectory = URL(fileURLWithPath: file).standardizedFileURL.deletingLastPathComponent().path
        var wanted = try InventoryLoader.parse(text, file: file)
        let nodes = try Self.placeOnNodes(&wanted, file: file)
        let previous = try? loadResolved()
        let fm = FileManager.default
        for d in [stateDirectory, pidDirectory, logDirectory, podsDirectory] {
            try fm.createDirectory(atPath: d, withIntermediateDirectories: true)
        }
        var existing = Set(try listNetns())
        if previous != nil && currentCNI() != cni {
            log("lab up: the lab is \(currentCNI().rawValue), \(cni.rawValue) wanted: rebuilding it")
            try removeEverything(quiet: true)
            existing = []
        }
        if let previous, Self.nodeNames(previous) != nodes {
            log("lab up: the nodes changed (\(Self.nodeNames(previous).joined(separator: ", ")) → \(nodes.joined(separator: ", "))): rebuilding the lab")
            try removeEverything(quiet: true)
            existing = []
        }
        if previous == nil || !nodes.allSatisfy(existing.contains) {
            // No usable state: whatever carries our prefix is a crashed run's leftover.
            try removeEverything(quiet: true)
            existing = []
            for d in [stateDirectory, pidDirectory, logDirectory, podsDirectory] {
                try fm.createDirectory(atPath: d, withIntermediateDirectories: true)
            }
        }
        try cni.rawValue.write(toFile: cniPath, atomically: false, encoding: .utf8)
        try prepare()
        let old = (previous != nil && nodes.allSatisfy(existing.contains)) ? previous! : Inventory()
        for (k, node) in nodes.enumerated() where !existing.contains(node) {
            try makeNode(node, index: k, multi: nodes.count > 1)
            if k > 0 { try linkNodes(nodes[0], node, index: k) }
        }

        // Pods: keep unchanged ones, replace changed ones, remove gone ones.
        var used = Set<Int>()
        var keep: [String: Pod] = [:]
        for pod in old.pods {
            let same = wanted.pods.first { $0.qualifiedName == pod.qualifiedName && $0.containers == pod.containers }
            let netns = LabNetwork.podNetns(namespace: pod.namespace, name: pod.name)
            if same != nil, existing.contains(netns), let ip = pod.ips.first, let n = LabNetwork.hostNumber(ip) {
                keep[pod.qualifiedName] = pod
                used.insert(n)
            } else {
                try removePod(pod)
            }
        }
        for i in wanted.pods.indices {
            let name = wanted.pods[i].qualifiedName
            if let kept = keep[name] {
                wanted.pods[i].ips = kept.ips
                wanted.pods[i].hostInterface = kept.hostInterface
                continue
            }
            let k = wanted.pods[i].nodeName.flatMap { nodes.firstIndex(of: $0) } ?? 0
            var n = 10
            while used.contains(k * 256 + n) { n += 1 }
            if nodes.count > 1 && n > 254 { throw LabError("node \(nodes[k]): more than 245 pods (its pod subnet is a /24)") }
            used.insert(k * 256 + n)
            try makePod(&wanted.pods[i], node: nodes[k], index: k, number: n, multi: nodes.count > 1)
        }

        // LabHosts share the world netns; it is rebuilt when the set of hosts changes.
        if old.labHosts.map({ [$0.name] + $0.command }) != wanted.labHosts.map({ [$0.name] + $0.command }) || !existing.contains(LabNetwork.worldNetns) {
            try removeWorld(old.labHosts)
            if !wanted.labHosts.isEmpty { try makeWorld(&wanted.labHosts, node: nodes[0], inventoryDirectory: inventoryDirectory) }
        } else {
            for i in wanted.labHosts.indices { wanted.labHosts[i].ips = old.labHosts[i].ips }
        }
        try writeResolved(wanted)
        for pod in wanted.pods where keep[pod.qualifiedName] == nil {
            try startContainers(of: pod, inventoryDirectory: inventoryDirectory, trust: trustEnvironment(for: pod, in: wanted))
        }
        let nodeText = nodes.count > 1 ? "\(nodes.count) nodes (\(nodes.joined(separator: ", "))), " : ""
        log("lab up (\(cni.rawValue)): \(nodeText)\(wanted.pods.count) pods, \(wanted.labHosts.count) lab hosts; inventory at \(resolvedPath)")
        return wanted
    }

    /// The lab's nodes (netns names), in inventory order: the inventory's `v1 Node` objects, or
    /// the one implicit `loupe-node`. With nodes, every pod gets one (`spec.nodeName`, else the
    /// first) and every node its addresses (`status.addresses`, InternalIP).
    static func placeOnNodes(_ inv: inout Inventory, file: String) throws -> [String] {
        if inv.nodes.isEmpty { return [LabNetwork.nodeNetns] }
        var names: [String] = []
        for (k, node) in inv.nodes.enumerated() {
            guard node.name.hasPrefix(LabNetwork.nodeNamePrefix), node.name.count <= 40,
                  node.name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) else {
                throw LabError("\(file): Node \(node.name): lab nodes are named \(LabNetwork.nodeNamePrefix)… (letters, digits, '-'; their netns carry the name)")
            }
            guard !names.contains(node.name) else { throw LabError("\(file): Node \(node.name) appears twice") }
            guard k < 250 else { throw LabError("\(file): more than 250 Nodes") }
            names.append(node.name)
            inv.nodes[k].addresses = [LabNetwork.nodeIPv4(node: k), LabNetwork.nodeIPv6(node: k)]
        }
        for i in inv.pods.indices {
            if let n = inv.pods[i].nodeName, !names.contains(n) {
                throw LabError("\(file): Pod \(inv.pods[i].qualifiedName): spec.nodeName \(n) is not a Node of the inventory (\(names.joined(separator: ", ")))")
            }
            if inv.pods[i].nodeName == nil { inv.pods[i].nodeName = names[0] }
        }
        return names
    }

    static func nodeNames(_ inv: Inventory) -> [String] {
        inv.nodes.isEmpty ? [LabNetwork.nodeNetns] : inv.nodes.map(\.name)
    }

    // MARK: down

    public func down() throws {
        try removeEverything(quiet: false)
        log("lab down: removed")
    }

    /// Stops every process in our netns, deletes our netns and state. Safe on a crashed run.
    func removeEverything(quiet: Bool) throws {
        killRecordedProcesses()
        for ns in try listNetns() where Self.isOurs(ns) {
            killProcesses(inNetns: ns)
            _ = try? ChildProcess.run(["ip", "netns", "delete", ns])
            if !quiet { log("removed netns \(ns)") }
        }
        try? FileManager.default.removeItem(atPath: stateDirectory)
    }

    /// A netns the lab makes: nodes, pods, the world.
    static func isOurs(_ netns: String) -> Bool {
        netns.hasPrefix(LabNetwork.nodeNamePrefix) || netns == LabNetwork.worldNetns || netns.hasPrefix(LabNetwork.podNetnsPrefix)
    }

    // MARK: exec

    /// argv that runs `command` inside `target` (`node` — the first node —, `node:NAME`,
    /// `world`, or `NAMESPACE/POD`).
    public func execArgv(target: String, command: [String]) throws -> [String] {
        let netns: String
        switch target {
        case "node": netns = try Self.nodeNames(loadResolved())[0]
        case "world": netns = LabNetwork.worldNetns
        case let t where t.hasPrefix("node:"):
            let name = String(t.dropFirst("node:".count))
            let nodes = try Self.nodeNames(loadResolved())
            guard nodes.contains(name) else { throw LabError("no node \(name) in the lab (nodes: \(nodes.joined(separator: ", ")))") }
            netns = name
        default:
            let parts = target.split(separator: "/", maxSplits: 1).map(String.init)
            let (ns, pod) = parts.count == 2 ? (parts[0], parts[1]) : ("default", parts[0])
            let inv = try loadResolved()
            guard inv.pods.contains(where: { $0.namespace == ns && $0.name == pod }) else {
                throw LabError("no pod \(ns)/\(pod) in the lab (see \(resolvedPath))")
            }
            netns = LabNetwork.podNetns(namespace: ns, name: pod)
            if let p = inv.pods.first(where: { $0.namespace == ns && $0.name == pod }) {
                let trust = trustEnvironment(for: p, in: inv)
                if !trust.isEmpty {
                    return ["nsenter", "--net=/var/run/netns/\(netns)", "--", "env"]
                        + trust.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" } + command
                }
            }
        }
        return ["nsenter", "--net=/var/run/netns/\(netns)", "--"] + command
    }

    /// The lab's way of installing the node CA into a pod that opts into HTTPS interception
    /// (`<…/TCP/HTTPS>`): pods share the node's filesystem, so their processes get the trust
    /// bundle (system roots + node CA) through the variables TLS clients read.
    func trustEnvironment(for pod: Pod, in inventory: Inventory) -> [String: String] {
        guard FileManager.default.fileExists(atPath: LabNetwork.trustBundle),
              let rules = RedirectPlan(inventory: inventory).pods.first(where: { $0.pod.qualifiedName == pod.qualifiedName })?.rules,
              rules.contains(where: { $0.l7 == .https }) else { return [:] }
        return ["SSL_CERT_FILE": LabNetwork.trustBundle, "CURL_CA_BUNDLE": LabNetwork.trustBundle,
                "REQUESTS_CA_BUNDLE": LabNetwork.trustBundle, "NODE_EXTRA_CA_CERTS": LabNetwork.caDirectory + "/ca.pem"]
    }

    public func loadResolved() throws -> Inventory {
        guard let text = try? String(contentsOfFile: resolvedPath, encoding: .utf8) else {
            throw LabError("the lab is not up (no \(resolvedPath)); run `loupe lab up -f FILE`")
        }
        return try InventoryLoader.parse(text, file: resolvedPath)
    }

    // MARK: building blocks

    private func ip(_ args: String...) throws { try ChildProcess.check(["ip"] + args) }
    private func inNetns(_ netns: String, _ argv: [String]) throws {
        try ChildProcess.check(["nsenter", "--net=/var/run/netns/\(netns)", "--"] + argv)
    }

    private func makeNode(_ n: String, index k: Int, multi: Bool) throws {
        try ip("netns", "add", n)
        try ip("-n", n, "link", "set", "lo", "up")
        try inNetns(n, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                        "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])
        switch cni {
        case .routed:
            // The node's own address (source of the proxy's upstream connections) lives on lo:
            // the dummy driver is not available on every kernel.
            try ip("-n", n, "addr", "add", LabNetwork.nodeIPv4(node: k) + "/32", "dev", "lo")
            try ip("-n", n, "-6", "addr", "add", LabNetwork.nodeIPv6(node: k) + "/128", "dev", "lo", "nodad")
        case .bridged:
            // flannel's shape: cni0 holds the node's address in the pod subnet (the pods'
            // gateway); pod veths are its ports; pods on the node reach each other at layer 2.
            let b = LabNetwork.bridge
            try ip("-n", n, "link", "add", b, "type", "bridge")
            try inNetns(n, ["sysctl", "-q", "-w", "net.ipv6.conf.\(b).accept_dad=0"])
            try ip("-n", n, "link", "set", b, "up")
            try ip("-n", n, "addr", "add", LabNetwork.nodeIPv4(node: k) + (multi ? "/24" : "/16"), "dev", b)
            try ip("-n", n, "-6", "addr", "add", LabNetwork.nodeIPv6(node: k) + "/64", "dev", b, "nodad")
        }
    }

    /// Node k's veth to node 0 (its uplink; node 0's link to it), static neighbours both ways
    /// and routes: node 0 reaches node k's pod subnets through k's address, node k everything
    /// else (node 0's pods, the world) through node 0's.
    private func linkNodes(_ first: String, _ node: String, index k: Int) throws {
        let here = LabNetwork.nodeLink(to: k), there = LabNetwork.nodeLink(to: 0)
        try ip("-n", first, "link", "add", here, "type", "veth", "peer", "name", there, "netns", node)
        try inNetns(first, ["sysctl", "-q", "-w", "net.ipv6.conf.\(here).accept_dad=0"])
        try inNetns(node, ["sysctl", "-q", "-w", "net.ipv6.conf.\(there).accept_dad=0"])
        try ip("-n", first, "link", "set", here, "up")
        try ip("-n", node, "link", "set", there, "up")
        let firstMAC = try mac(netns: first, dev: here), nodeMAC = try mac(netns: node, dev: there)
        try ip("-n", first, "neigh", "replace", LabNetwork.nodeIPv4(node: k), "lladdr", nodeMAC, "dev", here, "nud", "permanent")
        try ip("-n", first, "-6", "neigh", "replace", LabNetwork.nodeIPv6(node: k), "lladdr", nodeMAC, "dev", here, "nud", "permanent")
        try ip("-n", first, "route", "replace", "198.18.\(k).0/24", "via", LabNetwork.nodeIPv4(node: k), "dev", here, "onlink")
        try ip("-n", first, "-6", "route", "replace", "2001:db8:18:\(String(k, radix: 16))::/64", "via", LabNetwork.nodeIPv6(node: k), "dev", here, "onlink")
        try ip("-n", node, "neigh", "replace", LabNetwork.nodeIPv4(node: 0), "lladdr", firstMAC, "dev", there, "nud", "permanent")
        try ip("-n", node, "-6", "neigh", "replace", LabNetwork.nodeIPv6(node: 0), "lladdr", firstMAC, "dev", there, "nud", "permanent")
        try ip("-n", node, "route", "replace", "default", "via", LabNetwork.nodeIPv4(node: 0), "dev", there, "onlink")
        try ip("-n", node, "-6", "route", "replace", "default", "via", LabNetwork.nodeIPv6(node: 0), "dev", there, "onlink")
        log("node \(node): \(LabNetwork.nodeIPv4(node: k)), \(LabNetwork.nodeIPv6(node: k)); linked to \(first) (\(there) ↔ \(here))")
    }

    private func mac(netns: String, dev: String) throws -> String {
        let out = try ChildProcess.check(["ip", "-n", netns, "-o", "link", "show", dev])
        guard let r = out.range(of: "link/ether ") else { throw LabError("no MAC on \(dev) in \(netns)") }
        return String(out[r.upperBound...].prefix(17))
    }

    /// `netns` with lo up and a veth to the node (`eth0` inside, `hostVeth` on the node, made a
    /// port of `bridge` when given), both ends up, no duplicate address detection.
    private func makeVethNetns(_ netns: String, node: String, hostVeth: String, bridge: String? = nil) throws {
        try ip("netns", "add", netns)
        try inNetns(netns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])
        try ip("-n", netns, "link", "set", "lo", "up")
        try ip("-n", node, "link", "add", hostVeth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        try inNetns(node, ["sysctl", "-q", "-w", "net.ipv6.conf.\(hostVeth).accept_dad=0"])
        if let bridge { try ip("-n", node, "link", "set", hostVeth, "master", bridge) }
        try ip("-n", node, "link", "set", hostVeth, "up")
        try ip("-n", netns, "link", "set", "eth0", "up")
    }

    /// A veth between the node and `netns`, with static neighbours both ways (no ARP/ND) and
    /// host routes on the node: the same shape as Cilium's per-pod lxc devices.
    private func wire(netns: String, node: String, hostVeth: String, v4: [String], v6: [String]) throws {
        try makeVethNetns(netns, node: node, hostVeth: hostVeth)
        try ip("-n", node, "-6", "addr", "add", LabNetwork.gatewayIPv6 + "/64", "dev", hostVeth, "nodad")
        let hostMAC = try mac(netns: node, dev: hostVeth)
        let podMAC = try mac(netns: netns, dev: "eth0")
        try ip("-n", netns, "neigh", "replace", LabNetwork.gatewayIPv4, "lladdr", hostMAC, "dev", "eth0", "nud", "permanent")
        try ip("-n", netns, "-6", "neigh", "replace", LabNetwork.gatewayIPv6, "lladdr", hostMAC, "dev", "eth0", "nud", "permanent")
        try ip("-n", netns, "route", "add", LabNetwork.gatewayIPv4, "dev", "eth0", "scope", "link")
        try ip("-n", netns, "route", "add", "default", "via", LabNetwork.gatewayIPv4, "dev", "eth0")
        try ip("-n", netns, "-6", "route", "add", "default", "via", LabNetwork.gatewayIPv6, "dev", "eth0")
        for a in v4 {
            try ip("-n", netns, "addr", "add", a + "/32", "dev", "eth0")
            try ip("-n", node, "route", "replace", a + "/32", "dev", hostVeth)
            try ip("-n", node, "neigh", "replace", a, "lladdr", podMAC, "dev", hostVeth, "nud", "permanent")
        }
        for a in v6 {
            try ip("-n", netns, "-6", "addr", "add", a + "/128", "dev", "eth0", "nodad")
            try ip("-n", node, "-6", "route", "replace", a + "/128", "dev", hostVeth)
            try ip("-n", node, "-6", "neigh", "replace", a, "lladdr", podMAC, "dev", hostVeth, "nud", "permanent")
        }
    }

    /// A pod veth as a port of cni0: the pod's addresses in the node's subnet, its default
    /// route via the bridge's address; neighbours are learned (ARP/ND), not configured.
    private func bridgePort(netns: String, node: String, index k: Int, multi: Bool, hostVeth: String, v4: String, v6: String) throws {
        try makeVethNetns(netns, node: node, hostVeth: hostVeth, bridge: LabNetwork.bridge)
        try ip("-n", netns, "addr", "add", v4 + (multi ? "/24" : "/16"), "dev", "eth0")
        try ip("-n", netns, "-6", "addr", "add", v6 + "/64", "dev", "eth0", "nodad")
        try ip("-n", netns, "route", "add", "default", "via", LabNetwork.nodeIPv4(node: k), "dev", "eth0")
        try ip("-n", netns, "-6", "route", "add", "default", "via", LabNetwork.nodeIPv6(node: k), "dev", "eth0")
    }

    private func makePod(_ pod: inout Pod, node: String, index k: Int, number n: Int, multi: Bool) throws {
        let netns = LabNetwork.podNetns(namespace: pod.namespace, name: pod.name)
        let veth = LabNetwork.hostVeth(namespace: pod.namespace, name: pod.name)
        pod.ips = multi ? [LabNetwork.podIPv4(node: k, n), LabNetwork.podIPv6(node: k, n)] : [LabNetwork.podIPv4(n), LabNetwork.podIPv6(n)]
        pod.hostInterface = veth
        switch cni {
        case .routed: try wire(netns: netns, node: node, hostVeth: veth, v4: [pod.ips[0]], v6: [pod.ips[1]])
        case .bridged: try bridgePort(netns: netns, node: node, index: k, multi: multi, hostVeth: veth, v4: pod.ips[0], v6: pod.ips[1])
        }
        log("pod \(pod.qualifiedName): \(multi ? "node \(node), " : "")netns \(netns), \(pod.ips.joined(separator: ", ")), node veth \(veth)")
    }

    private func removePod(_ pod: Pod) throws {
        let netns = LabNetwork.podNetns(namespace: pod.namespace, name: pod.name)
        killRecordedProcesses(prefix: fileStem(pod))
        killProcesses(inNetns: netns)
        // The veth first: a deleted netns takes its end of the pair down asynchronously, and a
        // pod re-created at once would find the node's end still there.
        _ = try? ChildProcess.run(["ip", "-n", pod.nodeName ?? LabNetwork.nodeNetns, "link", "delete", LabNetwork.hostVeth(namespace: pod.namespace, name: pod.name)])
        _ = try? ChildProcess.run(["ip", "netns", "delete", netns])
        log("pod \(pod.qualifiedName): removed")
    }

    private func makeWorld(_ hosts: inout [LabHost], node: String, inventoryDirectory: String) throws {
        var v4: [String] = [], v6: [String] = []
        for i in hosts.indices {
            hosts[i].ips = [LabNetwork.worldIPv4(10 + i), LabNetwork.worldIPv6(10 + i)]
            v4.append(hosts[i].ips[0])
            v6.append(hosts[i].ips[1])
        }
        try wire(netns: LabNetwork.worldNetns, node: node, hostVeth: LabNetwork.worldVeth, v4: v4, v6: v6)
        // The whole world range is routed there, as beyond a real node's uplink: an address
        // nobody holds is then silently unanswered (ARP fails), not "network unreachable".
        try ip("-n", node, "route", "replace", "198.19.0.0/16", "dev", LabNetwork.worldVeth)
        try ip("-n", node, "-6", "route", "replace", "2001:db8:19::/48", "dev", LabNetwork.worldVeth)
        for host in hosts where !host.command.isEmpty {
            let stem = "world_" + host.name
            let dir = podsDirectory + "/" + stem
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try start(["nsenter", "--net=/var/run/netns/\(LabNetwork.worldNetns)", "--"] + host.command, stem: stem, cwd: dir,
                      environment: ["LOUPE_HOST_IP": host.ips[0], "LOUPE_HOST_IPV6": host.ips[1], "LOUPE_HOST_NAME": host.name,
                                    "LOUPE_INVENTORY_DIR": inventoryDirectory])
            log("lab host \(host.name): \(host.ips.joined(separator: ", ")): \(host.command.joined(separator: " "))")
        }
    }

    private func removeWorld(_ hosts: [LabHost]) throws {
        killRecordedProcesses(prefix: "world_")
        killProcesses(inNetns: LabNetwork.worldNetns)
        _ = try? ChildProcess.run(["ip", "netns", "delete", LabNetwork.worldNetns])
    }

    private func fileStem(_ pod: Pod) -> String { "\(pod.namespace)_\(pod.name)" }

    /// Starts the pod's commands in its netns, working directory = the pod's state directory,
    /// `LOUPE_INVENTORY_DIR` = the directory of the inventory file (for scripts beside it).
    private func startContainers(of pod: Pod, inventoryDirectory: String, trust: [String: String]) throws {
        let netns = LabNetwork.podNetns(namespace: pod.namespace, name: pod.name)
        let dir = podsDirectory + "/" + fileStem(pod)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for c in pod.containers where !c.argv.isEmpty {
            let stem = "\(fileStem(pod))_\(c.name)"
            try start(["nsenter", "--net=/var/run/netns/\(netns)", "--"] + c.argv, stem: stem, cwd: dir,
                      environment: ["LOUPE_POD_IP": pod.ips.first ?? "", "LOUPE_POD_NAME": pod.name,
                                    "LOUPE_POD_NAMESPACE": pod.namespace, "LOUPE_INVENTORY_DIR": inventoryDirectory]
                          .merging(trust) { a, _ in a })
            log("pod \(pod.qualifiedName): started \(c.name): \(c.argv.joined(separator: " "))")
        }
    }

    /// Starts a lab process in the background (`ChildProcess`: clean signal state, its own
    /// session), output appended to `logs/STEM.log`, its PID in `pids/STEM.pid`. nsenter execs
    /// the command in place, so that PID is the command's.
    private func start(_ argv: [String], stem: String, cwd: String, environment: [String: String]) throws {
        let pid = try ChildProcess.spawnDetached(argv, log: logDirectory + "/\(stem).log", cwd: cwd, environment: environment)
        try "\(pid)\n".write(toFile: pidDirectory + "/\(stem).pid", atomically: true, encoding: .utf8)
    }

    private func writeResolved(_ inv: Inventory) throws {
        let tmp = resolvedPath + ".tmp"
        try InventoryLoader.render(inv).write(toFile: tmp, atomically: false, encoding: .utf8)
        guard rename(tmp, resolvedPath) == 0 else { throw LabError("cannot write \(resolvedPath)") }
    }

    private func listNetns() throws -> [String] {
        try ChildProcess.check(["ip", "netns", "list"]).split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
    }

    /// Processes we started, by the PIDs they recorded.
    private func killRecordedProcesses(prefix: String = "") {
        let fm = FileManager.default
        guard let files = try? fm.contentsOfDirectory(atPath: pidDirectory) else { return }
        for f in files where f.hasPrefix(prefix) && f.hasSuffix(".pid") {
            let path = pidDirectory + "/" + f
            if let s = try? String(contentsOfFile: path, encoding: .utf8), let pid = Int32(s.trimmingCharacters(in: .whitespacesAndNewlines)),
               runsInOurNetns(pid) {
                terminate(pid: pid)
            }
            try? fm.removeItem(atPath: path)
        }
    }

    /// Everything still running inside a netns of ours (children a crashed run left behind).
    private func killProcesses(inNetns netns: String) {
        guard let out = try? ChildProcess.run(["ip", "netns", "pids", netns]).stdout else { return }
        for pid in out.split(separator: "\n").compactMap({ Int32($0) }) { terminate(pid: pid) }
    }

    /// A recorded PID may have been reused after a reboot: only a process inside one of the
    /// lab's netns is ours.
    private func runsInOurNetns(_ pid: Int32) -> Bool {
        var st = stat()
        guard stat("/proc/\(pid)/ns/net", &st) == 0 else { return false }
        let names = (try? listNetns()) ?? []
        for ns in names where Self.isOurs(ns) {
            var nst = stat()
            if stat("/var/run/netns/\(ns)", &nst) == 0 && nst.st_ino == st.st_ino && nst.st_dev == st.st_dev { return true }
        }
        return false
    }

    /// SIGTERM, and SIGKILL (said so) if the process is still there a second later.
    private func terminate(pid: Int32) {
        guard pid > 1 else { return }
        kill(pid, SIGTERM)
        for _ in 0..<20 {
            if !isRunning(pid) { return }
            usleep(50_000)
        }
        kill(pid, SIGKILL)
        log("process \(pid) ignored SIGTERM for 1 s: killed (SIGKILL)")
    }

    /// Alive and not a zombie (a zombie child of ours has ended; it only waits to be reaped).
    private func isRunning(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        return !stat[stat.index(after: close)...].hasPrefix(" Z")
    }
}

public struct LabError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}
