import Glibc

/// Crafted Ethernet frames for BPF_PROG_TEST_RUN.
enum Packet {
    static func ipv4TCP(src: String, sport: UInt16, dst: String, dport: UInt16, syn: Bool) -> [UInt8] {
        var p = ethernet(type: 0x0800)
        var ip: [UInt8] = [0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]
        ip += v4(src) + v4(dst)
        p += ip + tcp(sport: sport, dport: dport, syn: syn)
        return p
    }

    static func ipv6TCP(src: String, sport: UInt16, dst: String, dport: UInt16, syn: Bool) -> [UInt8] {
        var p = ethernet(type: 0x86dd)
        p += [0x60, 0, 0, 0, 0, 20, 6, 64] + v6(src) + v6(dst)
        p += tcp(sport: sport, dport: dport, syn: syn)
        return p
    }

    /// IPv4 TCP with `options` (padded to 4 bytes: IHL > 5) and the fragment field
    /// (`flags` 0x2000 = more fragments, offset in 8-byte units).
    static func ipv4TCP(src: String, sport: UInt16, dst: String, dport: UInt16, syn: Bool,
                        options: [UInt8], fragment: UInt16 = 0x4000, l4: [UInt8]? = nil) -> [UInt8] {
        let opts = options + Array(repeating: 0, count: (4 - options.count % 4) % 4)
        let payload = l4 ?? tcp(sport: sport, dport: dport, syn: syn)
        let total = 20 + opts.count + payload.count
        var ip: [UInt8] = [0x40 | UInt8(5 + opts.count / 4), 0, UInt8(total >> 8), UInt8(total & 0xff), 0, 1,
                           UInt8(fragment >> 8), UInt8(fragment & 0xff), 64, 6, 0, 0]
        ip += v4(src) + v4(dst) + opts
        return ethernet(type: 0x0800) + ip + payload
    }

    /// An IPv6 extension header: `next`, its length field, then `body` (6 + 8·len bytes).
    enum Extension {
        case hopByHop, destinationOptions, routing, authentication
        case fragment(offset: UInt16, more: Bool)

        var number: UInt8 {
            switch self {
            case .hopByHop: 0
            case .routing: 43
            case .fragment: 44
            case .authentication: 51
            case .destinationOptions: 60
            }
        }

        func bytes(next: UInt8) -> [UInt8] {
            switch self {
            case .hopByHop, .destinationOptions:
                return [next, 0, 1, 4, 0, 0, 0, 0] // PadN of 4
            case .routing:
                return [next, 0, 4, 0, 0, 0, 0, 0] // type 4 (SRH) shape, no segments left
            case .authentication:
                return [next, 1] + Array(repeating: 0, count: 10) // 12 bytes: (1 + 2) · 4
            case .fragment(let offset, let more):
                let field = (offset << 3) | (more ? 1 : 0)
                return [next, 0, UInt8(field >> 8), UInt8(field & 0xff), 0, 0, 0, 7]
            }
        }
    }

    /// IPv6 with a chain of extension headers before TCP (`l4` replaces the TCP header).
    static func ipv6TCP(src: String, sport: UInt16, dst: String, dport: UInt16, syn: Bool,
                        extensions: [Extension], l4: [UInt8]? = nil, last: UInt8 = 6) -> [UInt8] {
        var chain: [UInt8] = []
        for (i, e) in extensions.enumerated() {
            chain += e.bytes(next: i + 1 < extensions.count ? extensions[i + 1].number : last)
        }
        let payload = l4 ?? tcp(sport: sport, dport: dport, syn: syn)
        let length = chain.count + payload.count
        let first = extensions.first?.number ?? last
        return ethernet(type: 0x86dd) + [0x60, 0, 0, 0, UInt8(length >> 8), UInt8(length & 0xff), first, 64]
            + v6(src) + v6(dst) + chain + payload
    }

    static func ipv4UDP(src: String, sport: UInt16, dst: String, dport: UInt16) -> [UInt8] {
        ethernet(type: 0x0800) + [0x45, 0, 0, 36, 0, 1, 0x40, 0, 64, 17, 0, 0] + v4(src) + v4(dst) + udp(sport: sport, dport: dport)
    }

    static func ipv6UDP(src: String, sport: UInt16, dst: String, dport: UInt16) -> [UInt8] {
        ethernet(type: 0x86dd) + [0x60, 0, 0, 0, 0, 16, 17, 64] + v6(src) + v6(dst) + udp(sport: sport, dport: dport)
    }

    static func udp(sport: UInt16, dport: UInt16) -> [UInt8] {
        [UInt8(sport >> 8), UInt8(sport & 0xff), UInt8(dport >> 8), UInt8(dport & 0xff), 0, 16, 0, 0] + Array(repeating: 0, count: 8)
    }

    static func ethernet(type: UInt16) -> [UInt8] {
        [0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, UInt8(type >> 8), UInt8(type & 0xff)]
    }

    static func tcp(sport: UInt16, dport: UInt16, syn: Bool) -> [UInt8] {
        [UInt8(sport >> 8), UInt8(sport & 0xff), UInt8(dport >> 8), UInt8(dport & 0xff),
         0, 0, 0, 1, 0, 0, 0, syn ? 0 : 1, 0x50, syn ? 0x02 : 0x10, 0xff, 0xff, 0, 0, 0, 0]
    }

    static func v4(_ s: String) -> [UInt8] {
        var a = in_addr()
        inet_pton(AF_INET, s, &a)
        return withUnsafeBytes(of: a) { Array($0) }
    }

    static func v6(_ s: String) -> [UInt8] {
        var a = in6_addr()
        inet_pton(AF_INET6, s, &a)
        return withUnsafeBytes(of: a) { Array($0) }
    }
}

/// Loopback sockets the tc program's lookups find.
struct TCPSocket {
    var fd: Int32
    var port: UInt16

    struct Failure: Error { var what: String }

    static func listen(v6: Bool = false) throws -> TCPSocket {
        let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        if v6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, 4) }
        let rc: Int32
        if v6 {
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        } else {
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        }
        guard rc == 0, Glibc.listen(fd, 16) == 0 else { throw Failure(what: "listen: \(errno)") }
        return TCPSocket(fd: fd, port: localPort(fd))
    }

    static func connect(port: UInt16, mark: UInt32 = 0) throws -> TCPSocket {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var m = mark
        if mark != 0 { setsockopt(fd, SOL_SOCKET, SO_MARK, &m, 4) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = UInt32(0x7f000001).bigEndian
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw Failure(what: "connect: \(errno)") }
        return TCPSocket(fd: fd, port: localPort(fd))
    }

    /// A port nothing listens on (bound, then closed).
    static func unusedPort() throws -> UInt16 {
        let s = try listen()
        close(s.fd)
        return s.port
    }

    static func localPort(_ fd: Int32) -> UInt16 {
        var a = sockaddr_in6()
        var len = socklen_t(MemoryLayout<sockaddr_in6>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return UInt16(bigEndian: a.sin6_port)
    }
}

/// A loopback UDP socket (0.0.0.0:ephemeral) for the UDP listener lookup.
struct UDPSocket {
    var fd: Int32
    var port: UInt16

    static func bind() throws -> UDPSocket {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw TCPSocket.Failure(what: "bind udp: \(errno)") }
        return UDPSocket(fd: fd, port: TCPSocket.localPort(fd))
    }
}
