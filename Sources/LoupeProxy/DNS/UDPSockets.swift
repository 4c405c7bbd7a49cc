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

    /// Receives datagrams into buffers allocated once (the proxy thread owns one): a datagram
    /// costs its bytes' array and nothing else — its sender and original destination come from
    /// a cache of the addresses seen (a `SocketAddress` is a heap box, two per query otherwise).
    final class Receiver {
        private let name = UnsafeMutablePointer<sockaddr_storage>.allocate(capacity: 1)
        private let control = UnsafeMutableRawBufferPointer.allocate(byteCount: 256, alignment: 8)
        private let iov = UnsafeMutablePointer<iovec>.allocate(capacity: 1)
        /// Room for the largest datagram.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65_535, alignment: 8)
        private var addresses: [RawAddress: SocketAddress] = [:]
        static let maxAddresses = 4096

        init() { iov.initialize(to: iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)) }

        deinit {
            name.deallocate()
            control.deallocate()
            iov.deallocate()
            buffer.deallocate()
        }

        /// One datagram with its sender and original destination; nil when nothing is queued.
        func receive(_ fd: Int32) -> (bytes: [UInt8], from: SocketAddress, to: SocketAddress?)? {
            var msg = msghdr()
            msg.msg_name = UnsafeMutableRawPointer(name)
            msg.msg_namelen = socklen_t(MemoryLayout<sockaddr_storage>.size)
            msg.msg_iov = iov
            msg.msg_iovlen = 1
            msg.msg_control = control.baseAddress
            msg.msg_controllen = control.count
            let n = recvmsg(fd, &msg, 0)
            guard n >= 0, let sender = address(UnsafeRawPointer(name), length: Int(msg.msg_namelen)) else { return nil }
            let ctl = UnsafeRawBufferPointer(rebasing: control[0..<min(Int(msg.msg_controllen), control.count)])
            let to = UDPSockets.originalDestination(ctl).flatMap { address($0, length: MemoryLayout<sockaddr_in6>.size) }
            return (Array(UnsafeRawBufferPointer(rebasing: buffer[0..<n])), sender, to)
        }

        /// Up to `buffer.count` bytes from a connected socket into `buffer`; nil when nothing is
        /// queued, -errno on an error.
        func receive(connected fd: Int32) -> Int {
            let n = recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
            return n >= 0 ? n : -Int(errno)
        }

        /// The `SocketAddress` of a sockaddr_in or sockaddr_in6 at POINTER, made once per address.
        private func address(_ pointer: UnsafeRawPointer, length: Int) -> SocketAddress? {
            guard let key = RawAddress(pointer, length: length) else { return nil }
            if let known = addresses[key] { return known }
            let made: SocketAddress = switch Int32(pointer.load(as: sa_family_t.self)) {
            case AF_INET: SocketAddress(pointer.loadUnaligned(as: sockaddr_in.self), host: "")
            default: SocketAddress(pointer.loadUnaligned(as: sockaddr_in6.self), host: "")
            }
            if addresses.count >= Self.maxAddresses { addresses.removeAll(keepingCapacity: true) }
            addresses[key] = made
            return made
        }
    }

    /// A socket address's bytes as a key: family, port, address (and an IPv6 address's scope).
    struct RawAddress: Hashable {
        var high: UInt64, low: UInt64
        var port: UInt16, family: UInt16
        var scope: UInt32

        init?(_ p: UnsafeRawPointer, length: Int) {
            switch Int32(p.load(as: sa_family_t.self)) {
            case AF_INET where length >= MemoryLayout<sockaddr_in>.size:
                let a = p.loadUnaligned(as: sockaddr_in.self)
                (high, low, port, family, scope) = (0, UInt64(a.sin_addr.s_addr), a.sin_port, UInt16(AF_INET), 0)
            case AF_INET6 where length >= MemoryLayout<sockaddr_in6>.size:
                let a = p.loadUnaligned(as: sockaddr_in6.self)
                let (h, l) = withUnsafeBytes(of: a.sin6_addr) { ($0.loadUnaligned(as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
                (high, low, port, family, scope) = (h, l, a.sin6_port, UInt16(AF_INET6), a.sin6_scope_id)
            default:
                return nil
            }
        }
    }

    /// Walks the control messages for IP_ORIGDSTADDR / IPV6_ORIGDSTADDR: a pointer to the
    /// sockaddr_in / sockaddr_in6 inside CONTROL.
    static func originalDestination(_ control: UnsafeRawBufferPointer) -> UnsafeRawPointer? {
        let header = MemoryLayout<cmsghdr>.size
        var offset = 0
        while offset + header <= control.count {
            let h = control.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self)
            let len = Int(h.cmsg_len)
            guard len >= header, offset + len <= control.count else { return nil }
            let dataOffset = offset + ((header + 7) & ~7)
            if h.cmsg_level == solIP && h.cmsg_type == ipRecvOrigDstAddr && dataOffset + MemoryLayout<sockaddr_in>.size <= control.count
                || h.cmsg_level == solIPv6 && h.cmsg_type == ipv6RecvOrigDstAddr && dataOffset + MemoryLayout<sockaddr_in6>.size <= control.count {
                return control.baseAddress! + dataOffset
            }
            offset += (len + 7) & ~7
        }
        return nil
    }

    /// BYTES with their first two (a DNS message's id) replaced by ID, sent on FD — connected,
    /// or to ADDRESS. The id goes in its own iovec: the message is not copied to change it.
    static func send(_ fd: Int32, id: UInt16, _ bytes: [UInt8], to address: SocketAddress? = nil) -> Bool {
        guard bytes.count >= 2 else { return false }
        var idBytes = (UInt8(id >> 8), UInt8(id & 0xff))
        return withUnsafeMutableBytes(of: &idBytes) { idBuffer in
            bytes.withUnsafeBytes { b in
                var iovs = (iovec(iov_base: idBuffer.baseAddress, iov_len: 2),
                            iovec(iov_base: UnsafeMutableRawPointer(mutating: b.baseAddress! + 2), iov_len: b.count - 2))
                return withUnsafeMutableBytes(of: &iovs) { iovBuffer in
                    var msg = msghdr()
                    msg.msg_iov = iovBuffer.baseAddress!.assumingMemoryBound(to: iovec.self)
                    msg.msg_iovlen = 2
                    guard let address else { return sendmsg(fd, &msg, 0) }
                    return address.withSockAddr { sa, length in
                        msg.msg_name = UnsafeMutableRawPointer(mutating: sa)
                        msg.msg_namelen = socklen_t(length)
                        return sendmsg(fd, &msg, 0)
                    }
                }
            }
        } == bytes.count
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
}
