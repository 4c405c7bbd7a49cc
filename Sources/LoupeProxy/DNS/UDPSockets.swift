import Glibc
import NIOCore

/// The raw datagram socket calls the DNS proxy needs and NIO does not expose: a transparent
/// socket that reports each datagram's original destination (IP_ORIGDSTADDR), and replies
/// sent *from* that original address (a transparent socket bound to it).
enum UDPSockets {
    struct Failure: Error, CustomStringConvertible {
        var what: String
        var code: Int32
        var description: String { "\(what): \(String(cString: strerror(code)))" }
    }

    static let solIP: Int32 = 0, ipTransparent: Int32 = 19, ipRecvOrigDstAddr: Int32 = 20
    static let solIPv6: Int32 = 41, ipv6Transparent: Int32 = 75, ipv6RecvOrigDstAddr: Int32 = 74, ipv6V6Only: Int32 = 26

    static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32 = 1) throws {
        var v = value
        if setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            throw Failure(what: "setsockopt(\(level), \(name))", code: errno)
        }
    }

    /// The proxy's listening socket: 0.0.0.0:port or [::]:port, transparent, original
    /// destinations reported.
    static func listener(v6: Bool, port: UInt16) throws -> Int32 {
        let fd = socket(v6 ? AF_INET6 : AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(what: "socket", code: errno) }
        do {
            if v6 {
                try setOption(fd, solIPv6, ipv6V6Only)
                try setOption(fd, solIPv6, ipv6Transparent)
                try setOption(fd, solIPv6, ipv6RecvOrigDstAddr)
            } else {
                try setOption(fd, solIP, ipTransparent)
                try setOption(fd, solIP, ipRecvOrigDstAddr)
            }
            try bind(fd, SocketAddress(ipAddress: v6 ? "::" : "0.0.0.0", port: Int(port)))
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// A socket bound to `address` (not local: IP_TRANSPARENT) that replies come from, so the
    /// client sees the resolver it asked answering from port 53.
    static func replySocket(from address: SocketAddress) throws -> Int32 {
        let fd = socket(address.family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(what: "socket", code: errno) }
        do {
            try setOption(fd, SOL_SOCKET, SO_REUSEADDR)
            if address.family == AF_INET6 { try setOption(fd, solIPv6, ipv6Transparent) } else { try setOption(fd, solIP, ipTransparent) }
            try bind(fd, address)
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// A socket connected to the resolver, marked so the datapath never redirects it.
    static func upstream(to address: SocketAddress, mark: Int32) throws -> Int32 {
        let fd = socket(address.family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(what: "socket", code: errno) }
        do {
            try setOption(fd, SOL_SOCKET, SO_MARK, mark)
            let rc = address.withSockAddr { connect(fd, $0, socklen_t($1)) }
            if rc != 0 { throw Failure(what: "connect \(address.endpoint)", code: errno) }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    static func bind(_ fd: Int32, _ address: SocketAddress) throws {
        let rc = address.withSockAddr { Glibc.bind(fd, $0, socklen_t($1)) }
        if rc != 0 { throw Failure(what: "bind \(address.endpoint)", code: errno) }
    }

    /// One datagram with its sender and original destination; nil when nothing is queued.
    static func receive(_ fd: Int32, buffer: inout [UInt8]) -> (bytes: [UInt8], from: SocketAddress, to: SocketAddress?)? {
        let from = UnsafeMutablePointer<sockaddr_storage>.allocate(capacity: 1)
        let control = UnsafeMutableRawBufferPointer.allocate(byteCount: 256, alignment: 8)
        let iov = UnsafeMutablePointer<iovec>.allocate(capacity: 1)
        defer { from.deallocate(); control.deallocate(); iov.deallocate() }
        from.initialize(to: sockaddr_storage())
        control.initializeMemory(as: UInt8.self, repeating: 0)
        return buffer.withUnsafeMutableBytes { buf -> (bytes: [UInt8], from: SocketAddress, to: SocketAddress?)? in
            iov.initialize(to: iovec(iov_base: buf.baseAddress, iov_len: buf.count))
            var msg = msghdr()
            msg.msg_name = UnsafeMutableRawPointer(from)
            msg.msg_namelen = socklen_t(MemoryLayout<sockaddr_storage>.size)
            msg.msg_iov = iov
            msg.msg_iovlen = 1
            msg.msg_control = control.baseAddress
            msg.msg_controllen = control.count
            let n = recvmsg(fd, &msg, 0)
            guard n >= 0, let sender = SocketAddress(storage: from.pointee) else { return nil }
            let ctl = Array(UnsafeRawBufferPointer(rebasing: control[0..<min(Int(msg.msg_controllen), control.count)]))
            return (Array(buf[0..<n]), sender, originalDestination(ctl, length: ctl.count))
        }
    }

    /// Walks the control messages for IP_ORIGDSTADDR / IPV6_ORIGDSTADDR.
    static func originalDestination(_ control: [UInt8], length: Int) -> SocketAddress? {
        let header = MemoryLayout<cmsghdr>.size
        var offset = 0
        while offset + header <= min(length, control.count) {
            let (len, level, type): (Int, Int32, Int32) = control.withUnsafeBytes { raw in
                let h = raw.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self)
                return (Int(h.cmsg_len), h.cmsg_level, h.cmsg_type)
            }
            guard len >= header, offset + len <= control.count else { return nil }
            let dataOffset = offset + ((header + 7) & ~7)
            if level == solIP && type == ipRecvOrigDstAddr && dataOffset + MemoryLayout<sockaddr_in>.size <= control.count {
                return SocketAddress(control.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: dataOffset, as: sockaddr_in.self) }, host: "")
            }
            if level == solIPv6 && type == ipv6RecvOrigDstAddr && dataOffset + MemoryLayout<sockaddr_in6>.size <= control.count {
                return SocketAddress(control.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: dataOffset, as: sockaddr_in6.self) }, host: "")
            }
            offset += (len + 7) & ~7
        }
        return nil
    }

    static func send(_ fd: Int32, _ bytes: [UInt8], to address: SocketAddress) -> Bool {
        bytes.withUnsafeBytes { b in address.withSockAddr { sendto(fd, b.baseAddress, b.count, 0, $0, socklen_t($1)) } } == bytes.count
    }
}

/// What the DNS proxy reads of NIO's socket address: the address as text (flows, policy), the
/// port as a UDP port, the family for `socket()`.
extension SocketAddress {
    var ip: String { ipAddress ?? "?" }
    var udpPort: UInt16 { UInt16(clamping: port ?? 0) }
    var family: Int32 { self.protocol == .inet6 ? AF_INET6 : AF_INET }
    /// `ip:port`, `[ip]:port` for IPv6, as in flows and logs.
    var endpoint: String { family == AF_INET6 ? "[\(ip)]:\(udpPort)" : "\(ip):\(udpPort)" }

    /// The address without its port, as numbers: a key that costs no text per packet.
    struct AddressKey: Hashable {
        var high: UInt64
        var low: UInt64
        var family: Int32
    }

    var addressKey: AddressKey {
        switch self {
        case .v4(let a): AddressKey(high: 0, low: UInt64(a.address.sin_addr.s_addr), family: AF_INET)
        case .v6(let a):
            withUnsafeBytes(of: a.address.sin6_addr) { raw in
                AddressKey(high: raw.loadUnaligned(as: UInt64.self), low: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
                           family: AF_INET6)
            }
        default: AddressKey(high: 0, low: 0, family: 0)
        }
    }

    /// A sender address from recvmsg (IPv4 or IPv6; nil for anything else).
    init?(storage: sockaddr_storage) {
        var s = storage
        switch Int32(s.ss_family) {
        case AF_INET: self.init(withUnsafeBytes(of: &s) { $0.loadUnaligned(as: sockaddr_in.self) }, host: "")
        case AF_INET6: self.init(withUnsafeBytes(of: &s) { $0.loadUnaligned(as: sockaddr_in6.self) }, host: "")
        default: return nil
        }
    }
}
