import CLoupeSocket
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

    /// Receives datagrams in batches (recvmmsg) into buffers allocated once — the proxy thread
    /// owns one: a datagram costs its bytes' array and nothing else. Senders and original
    /// destinations come from a cache of the addresses seen (a `SocketAddress` is a heap box).
    final class Receiver {
        /// Datagrams per system call (at dnsperf -c4, ~11 wait per wake-up).
        static let batch = 32
        /// Room for the largest datagram in each slot (pages are touched only as used).
        static let slot = 65_535
        static let controlSize = 256
        private let headers = UnsafeMutablePointer<loupe_mmsghdr>.allocate(capacity: batch)
        private let names = UnsafeMutablePointer<sockaddr_storage>.allocate(capacity: batch)
        private let iovs = UnsafeMutablePointer<iovec>.allocate(capacity: batch)
        private let controls = UnsafeMutableRawBufferPointer.allocate(byteCount: batch * controlSize, alignment: 8)
        private let buffers = UnsafeMutableRawBufferPointer.allocate(byteCount: batch * slot, alignment: 8)
        private var addresses: [RawAddress: SocketAddress] = [:]
        static let maxAddresses = 4096
        /// Headers the last call filled in (and shrank): reset before the next.
        private var filled = 0

        init() {
            names.initialize(repeating: sockaddr_storage(), count: Self.batch)
            for i in 0..<Self.batch {
                iovs[i] = iovec(iov_base: buffers.baseAddress! + i * Self.slot, iov_len: Self.slot)
            }
            headers.initialize(repeating: loupe_mmsghdr(), count: Self.batch)
            reset(Self.batch)
        }

        deinit {
            headers.deallocate()
            names.deallocate()
            iovs.deallocate()
            controls.deallocate()
            buffers.deallocate()
        }

        /// The first COUNT headers back to their buffers' sizes (the kernel shrinks them).
        private func reset(_ count: Int) {
            for i in 0..<count {
                headers[i].msg_hdr = msghdr(msg_name: UnsafeMutableRawPointer(names + i),
                                            msg_namelen: socklen_t(MemoryLayout<sockaddr_storage>.size),
                                            msg_iov: iovs + i, msg_iovlen: 1,
                                            msg_control: controls.baseAddress! + i * Self.controlSize,
                                            msg_controllen: Self.controlSize, msg_flags: 0)
                headers[i].msg_len = 0
            }
        }

        /// Up to `batch` datagrams from FD: how many (0 when none is queued), or -errno.
        func receive(_ fd: Int32) -> Int {
            reset(filled)
            filled = 0
            let n = loupe_recvmmsg(fd, headers, UInt32(Self.batch), Int32(MSG_DONTWAIT))
            guard n >= 0 else { return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -Int(errno) }
            filled = Int(n)
            return Int(n)
        }

        /// The bytes of the Ith datagram of the last batch (valid until the next `receive`).
        func bytes(_ i: Int) -> UnsafeRawBufferPointer {
            UnsafeRawBufferPointer(start: iovs[i].iov_base, count: Int(headers[i].msg_len))
        }

        /// Who sent the Ith datagram (nil for anything but IPv4/IPv6).
        func sender(_ i: Int) -> SocketAddress? {
            address(UnsafeRawPointer(names + i), length: Int(headers[i].msg_hdr.msg_namelen))
        }

        /// Where the Ith datagram was going (IP_ORIGDSTADDR), when the kernel said.
        func originalDestination(_ i: Int) -> SocketAddress? {
            let length = min(Int(headers[i].msg_hdr.msg_controllen), Self.controlSize)
            let control = UnsafeRawBufferPointer(start: controls.baseAddress! + i * Self.controlSize, count: length)
            return UDPSockets.originalDestination(control).flatMap { address($0, length: MemoryLayout<sockaddr_in6>.size) }
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

    /// Datagrams queued while a batch is handled and then sent together, a sendmmsg per socket:
    /// the forwarded queries and the answers leave in about as few system calls as they came in.
    /// Each is copied into an arena (its DNS id rewritten there when asked).
    final class Outbox {
        static let capacity = 64
        static let arenaSize = 256 * 1024
        private struct Item {
            var fd: Int32
            var tag: Int
        }
        private var items: [Item] = []
        private var used = 0
        private let arena = UnsafeMutableRawBufferPointer.allocate(byteCount: arenaSize, alignment: 8)
        private let headers = UnsafeMutablePointer<loupe_mmsghdr>.allocate(capacity: capacity)
        private let iovs = UnsafeMutablePointer<iovec>.allocate(capacity: capacity)
        private let names = UnsafeMutablePointer<sockaddr_storage>.allocate(capacity: capacity)

        init() {
            items.reserveCapacity(Self.capacity)
            headers.initialize(repeating: loupe_mmsghdr(), count: Self.capacity)
            iovs.initialize(repeating: iovec(), count: Self.capacity)
            names.initialize(repeating: sockaddr_storage(), count: Self.capacity)
        }

        deinit {
            arena.deallocate()
            headers.deallocate()
            iovs.deallocate()
            names.deallocate()
        }

        var isEmpty: Bool { items.isEmpty }

        /// Queues BYTES for FD — connected, or to ADDRESS — with ID as their first two bytes when
        /// given. TAG comes back if the send fails. False: no room; `flush` first.
        func add(_ fd: Int32, _ bytes: [UInt8], id: UInt16?, to address: SocketAddress?, tag: Int) -> Bool {
            guard !bytes.isEmpty else { return true } // nothing to send (never a DNS message)
            guard items.count < Self.capacity, used + bytes.count <= Self.arenaSize else { return false }
            let k = items.count
            let start = arena.baseAddress! + used
            bytes.withUnsafeBytes { start.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            if let id, bytes.count >= 2 {
                start.storeBytes(of: UInt8(id >> 8), as: UInt8.self)
                (start + 1).storeBytes(of: UInt8(id & 0xff), as: UInt8.self)
            }
            iovs[k] = iovec(iov_base: start, iov_len: bytes.count)
            var nameLength: socklen_t = 0
            if let address {
                address.withSockAddr { sa, length in
                    UnsafeMutableRawPointer(names + k).copyMemory(from: sa, byteCount: length)
                    nameLength = socklen_t(length)
                }
            }
            headers[k].msg_hdr = msghdr(msg_name: address == nil ? nil : UnsafeMutableRawPointer(names + k), msg_namelen: nameLength,
                                        msg_iov: iovs + k, msg_iovlen: 1, msg_control: nil, msg_controllen: 0, msg_flags: 0)
            headers[k].msg_len = 0
            used += (bytes.count + 7) & ~7
            items.append(Item(fd: fd, tag: tag))
            return true
        }

        /// Sends everything queued, consecutive datagrams for one socket in one call; the ones
        /// that failed, with their socket, tag and errno.
        func flush() -> [(fd: Int32, tag: Int, code: Int32)] {
            var failed: [(fd: Int32, tag: Int, code: Int32)] = []
            var i = 0
            while i < items.count {
                let fd = items[i].fd
                var end = i
                while end < items.count, items[end].fd == fd { end += 1 }
                var k = i
                while k < end {
                    let n = Int(loupe_sendmmsg(fd, headers + k, UInt32(end - k), 0))
                    if n > 0 {
                        k += n
                    } else {
                        failed.append((fd, items[k].tag, errno))
                        k += 1
                    }
                }
                i = end
            }
            items.removeAll(keepingCapacity: true)
            used = 0
            return failed
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
