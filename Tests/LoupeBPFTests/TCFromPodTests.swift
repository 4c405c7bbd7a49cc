import CLoupeBPF
import Foundation
import Glibc
import LoupeBPF
import Testing

/// `loupe_from_pod` in the kernel through BPF_PROG_TEST_RUN: build a packet, set up the maps,
/// run, check the verdict and the outcome counter (Cilium's pktgen/setup/check shape).
/// Needs root and a BPF-capable kernel; skipped (and says so) otherwise.
///
/// The kernel refuses `bpf_sk_assign` outside a real tc ingress hook (a test-run skb is not
/// `tc_at_ingress`: -EOPNOTSUPP), so where the program found the proxy's socket the test run
/// ends in `assignFailed`, which is only reached after a successful lookup. The assignment
/// itself is proven end to end in the lab (tests/e2e: `assigned_listener` in `loupe status`).
@Suite(.serialized, .enabled(if: geteuid() == 0, "BPF_PROG_TEST_RUN needs root"))
final class TCFromPodTests {
    static let objectPath: String = {
        let here = URL(filePath: #filePath)
        return here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appending(path: "bpf/.output/tc_from_pod.bpf.o").path
    }()

    /// Outcome of a test run where the lookup found a proxy socket (see the note above).
    static let socketFound = DatapathCounter.assignFailed

    let pinRoot = "/sys/fs/bpf/loupe-test-\(getpid())"
    let datapath: Datapath
    let lo: UInt32 = 1

    init() throws {
        datapath = try Datapath(objectPath: Self.objectPath, pinRoot: pinRoot)
        try datapath.setEndpoints([lo: EndpointEntry(id: 7)])
    }

    deinit { datapath.close(unpin: true) }

    /// Runs `loupe_from_pod` (with `bridge`, `loupe_from_bridge`) on `packet` arriving with `mark`.
    private func run(_ packet: [UInt8], bridge: Bool = false, mark markIn: UInt32 = 0) throws
        -> (verdict: UInt32, mark: UInt32, counters: [DatapathCounter: UInt64], frame: [UInt8])
    {
        let before = datapath.readCounters()
        var verdict: UInt32 = 0, mark: UInt32 = markIn
        var frame = [UInt8](repeating: 0, count: packet.count)
        let program = bridge ? datapath.bridgeProgramFileDescriptor : datapath.programFileDescriptor
        let rc = packet.withUnsafeBytes { p in
            frame.withUnsafeMutableBytes { f in
                loupe_prog_test_run_skb(program, p.baseAddress, UInt32(p.count), f.baseAddress, UInt32(f.count), lo, &verdict, &mark)
            }
        }
        if rc != 0 { throw BPFError("test run", errno: rc) }
        let after = datapath.readCounters()
        var delta: [DatapathCounter: UInt64] = [:]
        for c in DatapathCounter.allCases where after[c, default: 0] != before[c, default: 0] {
            delta[c] = after[c, default: 0] - before[c, default: 0]
        }
        return (verdict, mark, delta, frame)
    }

    @Test func selectedSynIsAssignedToTheProxyListener() throws {
        let listener = try TCPSocket.listen()
        defer { close(listener.fd) }
        try datapath.setRedirects([RedirectEntry(match: .egress(ifindex: lo), port: 80, proxyPort: listener.port)])
        let r = try run(Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: true))
        #expect(r.counters == [Self.socketFound: 1])
        #expect(r.verdict == 2) // a refused assignment drops: the client retransmits
    }

    @Test func selectedIPv6SynIsAssignedToTheProxyListener() throws {
        let listener = try TCPSocket.listen(v6: true)
        defer { close(listener.fd) }
        try datapath.setRedirects([RedirectEntry(match: .egress(ifindex: lo), port: 80, proxyPort: listener.port)])
        let r = try run(Packet.ipv6TCP(src: "2001:db8:18::a", sport: 40000, dst: "2001:db8:18::b", dport: 80, syn: true))
        #expect(r.counters == [Self.socketFound: 1])
    }

    @Test func establishedPacketIsAssignedToItsProxySocket() throws {
        let listener = try TCPSocket.listen()
        defer { close(listener.fd) }
        let client = try TCPSocket.connect(port: listener.port)
        let accepted = accept(listener.fd, nil, nil)
        try datapath.setRedirects([RedirectEntry(match: .egress(ifindex: lo), port: listener.port, proxyPort: 1)])
        let r = try run(Packet.ipv4TCP(src: "127.0.0.1", sport: client.port, dst: "127.0.0.1", dport: listener.port, syn: false))
        #expect(r.counters == [Self.socketFound: 1])
        // The same packet without the established socket is not assigned anywhere.
        close(client.fd); close(accepted)
        let gone = try run(Packet.ipv4TCP(src: "127.0.0.1", sport: client.port, dst: "127.0.0.1", dport: listener.port, syn: false))
        #expect(gone.counters == [.noSocketPass: 1])
    }

    /// `--upstream-source pod`: a destination's reply to a proxy upstream socket (SO_MARK 0xb00)
    /// is assigned to it though no rule selects the port; other sockets' packets and SYNs pass.
    @Test func replyToAMarkedUpstreamSocketIsSteered() throws {
        let listener = try TCPSocket.listen()
        defer { close(listener.fd) }
        let upstream = try TCPSocket.connect(port: listener.port, mark: UInt32(LOUPE_MARK_FROM_PROXY))
        let accepted = accept(listener.fd, nil, nil)
        defer { close(upstream.fd); close(accepted) }
        try datapath.setRedirects([])
        // The listener's side answering the upstream socket: a reply.
        let reply = Packet.ipv4TCP(src: "127.0.0.1", sport: listener.port, dst: "127.0.0.1", dport: upstream.port, syn: false)
        #expect(try run(reply).counters == [.notSelected: 1]) // the endpoint does not steer replies
        try datapath.setEndpoints([lo: EndpointEntry(id: 7, steerReplies: true)])
        #expect(try run(reply).counters == [Self.socketFound: 1])
        // The other direction names the accepted socket, which carries no mark: not a reply.
        let toAccepted = Packet.ipv4TCP(src: "127.0.0.1", sport: upstream.port, dst: "127.0.0.1", dport: listener.port, syn: false)
        #expect(try run(toAccepted).counters == [.notSelected: 1])
        // A SYN is never a reply.
        let syn = Packet.ipv4TCP(src: "127.0.0.1", sport: listener.port, dst: "127.0.0.1", dport: upstream.port, syn: true)
        #expect(try run(syn).counters == [.notSelected: 1])
    }

    /// On an uplink the local pods' Ingress rules (by address) apply to remote clients; no
    /// Egress rule is keyed by an uplink.
    @Test func uplinkAppliesIngressRules() throws {
        let listener = try TCPSocket.listen()
        defer { close(listener.fd) }
        try datapath.setEndpoints([lo: EndpointEntry(id: 0, steerReplies: true, uplink: true)])
        try datapath.setRedirects([RedirectEntry(match: .ingress(address: [198, 18, 0, 11]), port: 8080, proxyPort: listener.port)])
        let hit = try run(Packet.ipv4TCP(src: "198.18.1.10", sport: 40000, dst: "198.18.0.11", dport: 8080, syn: true))
        #expect(hit.counters == [Self.socketFound: 1])
        let other = try run(Packet.ipv4TCP(src: "198.18.1.10", sport: 40000, dst: "198.18.0.12", dport: 8080, syn: true))
        #expect(other.counters == [.notSelected: 1])
    }

    /// A bridge port does not assign: it re-addresses the packet to the bridge's MAC, marks it
    /// with the proxy port and redirects it to the bridge's ingress (TC_ACT_REDIRECT).
    @Test func aBridgePortHandsTheSelectedSynToTheBridge() throws {
        let listener = try TCPSocket.listen()
        defer { close(listener.fd) }
        let bridgeMAC: [UInt8] = [0x02, 0x42, 0xc0, 0xa8, 0x00, 0x01]
        try datapath.setEndpoints([lo: EndpointEntry(id: 7, bridge: (ifindex: 1, mac: bridgeMAC))])
        try datapath.setRedirects([RedirectEntry(match: .egress(ifindex: lo), port: 80, proxyPort: listener.port)])
        let r = try run(Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: true))
        #expect(r.counters == [.assignedListener: 1])
        #expect(r.verdict == 7) // TC_ACT_REDIRECT
        #expect(r.mark == UInt32(LOUPE_MARK_TO_PROXY) | UInt32(listener.port) << UInt32(LOUPE_MARK_PORT_SHIFT))
        #expect(Array(r.frame.prefix(6)) == bridgeMAC)
        // Unselected traffic of the port passes as it came.
        let other = try run(Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 443, syn: true))
        #expect(other.counters == [.notSelected: 1])
        #expect(other.verdict == 0 && other.mark == 0)
    }

    /// The bridge's program assigns what a port handed over: a SYN to the listener at the port
    /// the mark carries, a packet of a connection to its socket; a handed-over packet whose
    /// socket is gone is dropped and counted. Unmarked packets pass uncounted.
    @Test func theBridgeAssignsWhatAPortHandedOver() throws {
        let listener = try TCPSocket.listen()
        defer { close(listener.fd) }
        let handed = UInt32(LOUPE_MARK_TO_PROXY) | UInt32(listener.port) << UInt32(LOUPE_MARK_PORT_SHIFT)
        let syn = Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: true)
        let r = try run(syn, bridge: true, mark: handed)
        #expect(r.counters == [Self.socketFound: 1])
        #expect(r.mark == UInt32(LOUPE_MARK_TO_PROXY)) // the port is cleared
        let unused = try TCPSocket.unusedPort()
        let gone = try run(syn, bridge: true, mark: UInt32(LOUPE_MARK_TO_PROXY) | UInt32(unused) << UInt32(LOUPE_MARK_PORT_SHIFT))
        #expect(gone.counters == [.bridgeSocketGone: 1])
        #expect(gone.verdict == 2)
        // A packet of an established connection, handed over without a port.
        let client = try TCPSocket.connect(port: listener.port)
        let accepted = accept(listener.fd, nil, nil)
        defer { close(client.fd); close(accepted) }
        let est = Packet.ipv4TCP(src: "127.0.0.1", sport: client.port, dst: "127.0.0.1", dport: listener.port, syn: false)
        #expect(try run(est, bridge: true, mark: UInt32(LOUPE_MARK_TO_PROXY)).counters == [Self.socketFound: 1])
        // A non-SYN without its socket is not sent to the listener.
        let stray = Packet.ipv4TCP(src: "198.18.0.10", sport: 40001, dst: "198.18.0.11", dport: 80, syn: false)
        #expect(try run(stray, bridge: true, mark: handed).counters == [.bridgeSocketGone: 1])
        // Not handed over, on a bridge that is no endpoint: passes, uncounted.
        try datapath.setEndpoints([:])
        let plain = try run(syn, bridge: true)
        #expect(plain.counters == [:] && plain.verdict == 0 && plain.mark == 0)
    }

    /// A bridge named as an uplink is an endpoint too: its program judges unmarked packets as
    /// `loupe_from_pod` does.
    @Test func aBridgeThatIsAnUplinkAppliesIngressRules() throws {
        let listener = try TCPSocket.listen()
        defer { close(listener.fd) }
        try datapath.setEndpoints([lo: EndpointEntry(id: 0, uplink: true)])
        try datapath.setRedirects([RedirectEntry(match: .ingress(address: [198, 18, 0, 11]), port: 8080, proxyPort: listener.port)])
        let hit = try run(Packet.ipv4TCP(src: "198.18.1.10", sport: 40000, dst: "198.18.0.11", dport: 8080, syn: true), bridge: true)
        #expect(hit.counters == [Self.socketFound: 1])
    }

    @Test func unselectedPortPasses() throws {
        try datapath.setRedirects([RedirectEntry(match: .egress(ifindex: lo), port: 80, proxyPort: 15001)])
        let r = try run(Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 443, syn: true))
        #expect(r.counters == [.notSelected: 1])
        #expect(r.verdict == 0)
        #expect(r.mark == 0)
    }

    @Test func ingressRuleOfTheDestinationPodSelects() throws {
        let listener = try TCPSocket.listen()
        defer { close(listener.fd) }
        try datapath.setRedirects([RedirectEntry(match: .ingress(address: [198, 18, 0, 11]), port: 8080, proxyPort: listener.port)])
        let hit = try run(Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 8080, syn: true))
        #expect(hit.counters == [Self.socketFound: 1])
        let other = try run(Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.12", dport: 8080, syn: true))
        #expect(other.counters == [.notSelected: 1])
    }

    @Test func unmanagedPodPasses() throws {
        try datapath.setEndpoints([:])
        try datapath.setRedirects([RedirectEntry(match: .egress(ifindex: lo), port: 80, proxyPort: 15001)])
        let r = try run(Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: true))
        #expect(r.counters == [.unmanaged: 1])
        #expect(r.verdict == 0)
    }

    @Test func proxyAbsentFailsOpenForVisibilityAndClosedWhenEnforced() throws {
        let port = try TCPSocket.unusedPort()
        try datapath.setRedirects([RedirectEntry(match: .egress(ifindex: lo), port: 80, proxyPort: port)])
        let open = try run(Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: true))
        #expect(open.counters == [.proxyAbsentPass: 1])
        #expect(open.verdict == 0)
        try datapath.setRedirects([RedirectEntry(match: .egress(ifindex: lo), port: 80, proxyPort: port, enforce: true)])
        let closed = try run(Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: true))
        #expect(closed.counters == [.proxyAbsentDrop: 1])
        #expect(closed.verdict == 2) // TC_ACT_SHOT
    }

    @Test func nonSynOfAConnectionTheProxyDoesNotOwnPasses() throws {
        try datapath.setRedirects([RedirectEntry(match: .egress(ifindex: lo), port: 80, proxyPort: 15001)])
        let r = try run(Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: false))
        #expect(r.counters == [.noSocketPass: 1])
    }

    @Test func otherProtocolsPass() throws {
        var p = Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: true)
        p[14 + 9] = 1 // protocol = ICMP
        let r = try run(p)
        #expect(r.counters == [.notTCP: 1])
    }

    @Test func udpDatagramsGoToTheProxyUDPSocketOnlyWithAUDPRule() throws {
        let sock = try UDPSocket.bind()
        defer { close(sock.fd) }
        try datapath.setRedirects([RedirectEntry(match: .egress(ifindex: lo), port: 53, proxyPort: sock.port)])
        let tcpRuleOnly = try run(Packet.ipv4UDP(src: "198.18.0.10", sport: 40000, dst: "198.19.0.10", dport: 53))
        #expect(tcpRuleOnly.counters == [.notSelected: 1])
        try datapath.setRedirects([RedirectEntry(match: .egress(ifindex: lo), port: 53, l4Protocol: UInt8(IPPROTO_UDP), proxyPort: sock.port)])
        let selected = try run(Packet.ipv4UDP(src: "198.18.0.10", sport: 40000, dst: "198.19.0.10", dport: 53))
        #expect(selected.counters == [Self.socketFound: 1])
        let v6 = try run(Packet.ipv6UDP(src: "2001:db8:18::a", sport: 40000, dst: "2001:db8:19::a", dport: 53))
        #expect(v6.counters == [.proxyAbsentPass: 1]) // the UDP socket is IPv4 only
    }

    // MARK: headers the parser must walk (IPv4 options, IPv6 extension headers, fragments)

    static let enforcedPort: UInt16 = 80

    /// One listener and an enforced egress rule on port 80 for both families.
    private func enforcedRule(v6: Bool = false) throws -> TCPSocket {
        let listener = try TCPSocket.listen(v6: v6)
        try datapath.setRedirects([RedirectEntry(match: .egress(ifindex: lo), port: Self.enforcedPort,
                                                 proxyPort: listener.port, enforce: true)])
        return listener
    }

    @Test func ipv4WithOptionsIsSteered() throws {
        let listener = try enforcedRule()
        defer { close(listener.fd) }
        let nops = try run(Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: true,
                                          options: [1, 1, 1, 0]))
        #expect(nops.counters == [Self.socketFound: 1])
        // Record Route with room for 9 addresses: IHL 15, the longest header there is.
        let rr = try run(Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: true,
                                        options: [7, 39, 4] + Array(repeating: 0, count: 36) + [0]))
        #expect(rr.counters == [Self.socketFound: 1])
    }

    @Test(arguments: [
        ("hop-by-hop", [Packet.Extension.hopByHop]),
        ("destination options", [.destinationOptions]),
        ("routing", [.routing]),
        ("authentication", [.authentication]),
        ("a chain of five", [.hopByHop, .destinationOptions, .routing, .authentication, .destinationOptions]),
    ])
    func ipv6ExtensionHeadersAreWalkedToTheTCPHeader(name: String, chain: [Packet.Extension]) throws {
        let listener = try enforcedRule(v6: true)
        defer { close(listener.fd) }
        let r = try run(Packet.ipv6TCP(src: "2001:db8:18::a", sport: 40000, dst: "2001:db8:18::b", dport: 80, syn: true,
                                       extensions: chain))
        #expect(r.counters == [Self.socketFound: 1], "\(name)")
        let other = try run(Packet.ipv6TCP(src: "2001:db8:18::a", sport: 40000, dst: "2001:db8:18::b", dport: 443, syn: true,
                                           extensions: chain))
        #expect(other.counters == [.notSelected: 1], "\(name)")
    }

    @Test func anExtensionChainLongerThanTheBoundIsDropped() throws {
        let listener = try enforcedRule(v6: true)
        defer { close(listener.fd) }
        let r = try run(Packet.ipv6TCP(src: "2001:db8:18::a", sport: 40000, dst: "2001:db8:18::b", dport: 80, syn: true,
                                       extensions: Array(repeating: .destinationOptions, count: 9)))
        #expect(r.counters == [.unparseableDrop: 1])
        #expect(r.verdict == 2)
    }

    @Test func truncatedHeadersAreDroppedNotPassed() throws {
        let listener = try enforcedRule(v6: true)
        defer { close(listener.fd) }
        // An extension header whose length runs past the packet.
        var v6 = Packet.ipv6TCP(src: "2001:db8:18::a", sport: 40000, dst: "2001:db8:18::b", dport: 80, syn: true,
                                extensions: [.hopByHop])
        v6[14 + 40 + 1] = 200
        #expect(try run(v6).counters == [.unparseableDrop: 1])
        // IPv4 whose options claim more than the packet holds, and IHL < 5.
        var v4 = Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: true)
        v4[14] = 0x4f
        v4.removeLast(10)
        #expect(try run(v4).counters == [.unparseableDrop: 1])
        var short = Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: true)
        short[14] = 0x44
        #expect(try run(short).counters == [.unparseableDrop: 1])
    }

    @Test func firstFragmentsAreDroppedOnEnforcedPortsAndPassedOnVisibilityPorts() throws {
        let listener = try enforcedRule()
        defer { close(listener.fd) }
        let first4 = Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: true,
                                    options: [], fragment: 0x2000)
        let first6 = Packet.ipv6TCP(src: "2001:db8:18::a", sport: 40000, dst: "2001:db8:18::b", dport: 80, syn: true,
                                    extensions: [.fragment(offset: 0, more: true)])
        let dropped4 = try run(first4), dropped6 = try run(first6)
        #expect(dropped4.counters == [.fragmentDrop: 1] && dropped4.verdict == 2)
        #expect(dropped6.counters == [.fragmentDrop: 1] && dropped6.verdict == 2)
        try datapath.setRedirects([RedirectEntry(match: .egress(ifindex: lo), port: 80, proxyPort: listener.port)])
        #expect(try run(first4).counters == [.fragmentPass: 1])
        #expect(try run(first6).counters == [.fragmentPass: 1])
    }

    @Test func laterFragmentsPassAndTinyFirstFragmentsAreDropped() throws {
        let listener = try enforcedRule()
        defer { close(listener.fd) }
        let later4 = Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: false,
                                    options: [], fragment: 3, l4: Array(repeating: 0x41, count: 16))
        let later6 = Packet.ipv6TCP(src: "2001:db8:18::a", sport: 40000, dst: "2001:db8:18::b", dport: 80, syn: false,
                                    extensions: [.fragment(offset: 3, more: false)], l4: Array(repeating: 0x41, count: 16))
        #expect(try run(later4).counters == [.laterFragmentPass: 1])
        #expect(try run(later6).counters == [.laterFragmentPass: 1])
        // RFC 1858's tiny fragment: the ports fit, the rest of the TCP header does not.
        let tcp = Packet.tcp(sport: 40000, dport: 80, syn: true)
        let tiny4 = Packet.ipv4TCP(src: "198.18.0.10", sport: 40000, dst: "198.18.0.11", dport: 80, syn: true,
                                   options: [], fragment: 0x2000, l4: Array(tcp.prefix(8)))
        let tiny6 = Packet.ipv6TCP(src: "2001:db8:18::a", sport: 40000, dst: "2001:db8:18::b", dport: 80, syn: true,
                                   extensions: [.fragment(offset: 0, more: true)], l4: Array(tcp.prefix(8)))
        #expect(try run(tiny4).counters == [.unparseableDrop: 1])
        #expect(try run(tiny6).counters == [.unparseableDrop: 1])
    }

    @Test func icmpv6BehindExtensionHeadersPasses() throws {
        let r = try run(Packet.ipv6TCP(src: "2001:db8:18::a", sport: 0, dst: "2001:db8:18::b", dport: 0, syn: false,
                                       extensions: [.hopByHop], l4: [128, 0, 0, 0, 0, 1, 0, 1], last: 58))
        #expect(r.counters == [.notTCP: 1])
        #expect(r.verdict == 0)
    }
}
