import LoupeNetlink
import Testing

/// The interface of a pod address on the CNI shapes users run, from netlink facts alone.
@Suite struct PodInterfaceResolverTests {
    let bridgeMAC: [UInt8] = [0x0a, 0, 0, 0, 0, 1]
    let podMAC: [UInt8] = [0x0a, 0, 0, 0, 0, 0x11]

    func v4(_ s: String) -> [UInt8] { IPAddressBytes.parse(s)! }

    /// Cilium/Calico/ptp: a /32 to the pod via its veth, beside the node's default route.
    @Test func routedHostRoute() {
        let net = NetworkSnapshot(
            links: [.init(ifindex: 2, name: "eth0", kind: ""), .init(ifindex: 7, name: "cali1234", kind: "veth")],
            routes: [.init(destination: v4("0.0.0.0"), prefixLength: 0, oif: 2, hasGateway: true),
                     .init(destination: v4("10.42.0.5"), prefixLength: 32, oif: 7)])
        #expect(PodInterfaceResolver.resolve("10.42.0.5", in: net) == .success(.routed(ifindex: 7, name: "cali1234")))
        #expect(PodInterfaceResolver.resolve("10.42.1.5", in: net) == .failure(.viaGateway("10.42.1.5", link: "eth0")))
    }

    /// flannel: the subnet route goes to cni0; the neighbour gives the MAC, the FDB the port.
    @Test func bridgedThroughNeighbourAndFDB() {
        var net = NetworkSnapshot(
            links: [.init(ifindex: 3, name: "cni0", kind: "bridge", mac: bridgeMAC),
                    .init(ifindex: 8, name: "veth1", kind: "veth", master: 3),
                    .init(ifindex: 9, name: "veth2", kind: "veth", master: 3)],
            routes: [.init(destination: v4("10.42.0.0"), prefixLength: 24, oif: 3)])
        #expect(PodInterfaceResolver.resolve("10.42.0.7", in: net) == .failure(.neighbourUnknown("10.42.0.7", bridge: 3, bridgeName: "cni0")))
        net.neighbours = [.init(address: v4("10.42.0.7"), mac: podMAC, ifindex: 3)]
        #expect(PodInterfaceResolver.resolve("10.42.0.7", in: net) == .failure(.notInFDB("10.42.0.7", bridge: "cni0")))
        net.fdb = [.init(mac: bridgeMAC, port: 3, bridge: 3), .init(mac: podMAC, port: 9, bridge: 3)]
        #expect(PodInterfaceResolver.resolve("10.42.0.7", in: net)
                == .success(.bridged(ifindex: 9, name: "veth2", bridge: "cni0", bridgeIndex: 3, bridgeMAC: bridgeMAC)))
        // An incomplete/failed neighbour has no usable MAC.
        net.neighbours[0].isUsable = false
        #expect(PodInterfaceResolver.resolve("10.42.0.7", in: net) == .failure(.neighbourUnknown("10.42.0.7", bridge: 3, bridgeName: "cni0")))
    }

    @Test func longestPrefixWinsAndIPv6() {
        let net = NetworkSnapshot(
            links: [.init(ifindex: 3, name: "cni0", kind: "bridge"), .init(ifindex: 7, name: "lxc1", kind: "veth"),
                    .init(ifindex: 5, name: "eth0", kind: "")],
            routes: [.init(destination: v4("10.42.0.0"), prefixLength: 16, oif: 3),
                     .init(destination: v4("10.42.0.9"), prefixLength: 32, oif: 7),
                     .init(destination: v4("10.42.0.10"), prefixLength: 32, oif: 5),
                     .init(destination: v4("2001:db8:18::"), prefixLength: 48, oif: 3),
                     .init(destination: v4("2001:db8:18::9"), prefixLength: 128, oif: 7)])
        #expect(PodInterfaceResolver.resolve("10.42.0.9", in: net) == .success(.routed(ifindex: 7, name: "lxc1")))
        #expect(PodInterfaceResolver.resolve("2001:db8:18::9", in: net) == .success(.routed(ifindex: 7, name: "lxc1")))
        #expect(PodInterfaceResolver.resolve("10.42.0.10", in: net) == .failure(.notAPodLink("10.42.0.10", link: "eth0", kind: "")))
        #expect(PodInterfaceResolver.resolve("192.0.2.1", in: net) == .failure(.noRoute("192.0.2.1")))
        #expect(PodInterfaceResolver.resolve("pod-a", in: net) == .failure(.notAnAddress("pod-a")))
    }
}

/// Where remote replies come in: the interfaces routes leave by, without the pods' plumbing.
@Suite struct UplinkResolverTests {
    func v4(_ s: String) -> [UInt8] { IPAddressBytes.parse(s)! }

    @Test func routedNodeWithDefaultRouteAndTunnel() {
        let net = NetworkSnapshot(
            links: [.init(ifindex: 1, name: "lo", kind: ""), .init(ifindex: 2, name: "eth0", kind: ""),
                    .init(ifindex: 4, name: "flannel.1", kind: "vxlan"), .init(ifindex: 5, name: "down0", kind: "", isUp: false),
                    .init(ifindex: 7, name: "cali1234", kind: "veth")],
            routes: [.init(destination: v4("0.0.0.0"), prefixLength: 0, oif: 2, hasGateway: true),
                     .init(destination: v4("10.0.0.0"), prefixLength: 24, oif: 2),
                     .init(destination: v4("10.42.1.0"), prefixLength: 24, oif: 4, hasGateway: true),
                     .init(destination: v4("10.9.0.0"), prefixLength: 16, oif: 5),
                     .init(destination: v4("10.42.0.5"), prefixLength: 32, oif: 7)])
        let pod = PodAttachment.routed(ifindex: 7, name: "cali1234")
        #expect(UplinkResolver.resolve(in: net, pods: [pod]).uplinks == [.routed(ifindex: 2, name: "eth0"), .routed(ifindex: 4, name: "flannel.1")])
        // Named instead of guessed; an absent name is reported.
        let named = UplinkResolver.resolve(in: net, pods: [pod], names: ["flannel.1", "bond0"])
        #expect(named.uplinks == [.routed(ifindex: 4, name: "flannel.1")])
        #expect(named.missing == ["bond0"])
    }

    @Test func bridgesAndTheirPortsAreNotUplinks() {
        let net = NetworkSnapshot(
            links: [.init(ifindex: 2, name: "eth0", kind: ""), .init(ifindex: 3, name: "cni0", kind: "bridge"),
                    .init(ifindex: 8, name: "veth1", kind: "veth", master: 3)],
            routes: [.init(destination: v4("0.0.0.0"), prefixLength: 0, oif: 2, hasGateway: true),
                     .init(destination: v4("10.42.0.0"), prefixLength: 24, oif: 3)])
        #expect(UplinkResolver.resolve(in: net, pods: []).uplinks == [.routed(ifindex: 2, name: "eth0")])
    }
}
