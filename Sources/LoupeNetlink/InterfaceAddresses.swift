import Glibc

/// The addresses configured in this netns (getifaddrs): one reader for whatever needs them —
/// the proxy's "is this the node itself" check, the Hubble server's advertised address.
public enum InterfaceAddresses {
    public struct Entry: Sendable, Equatable {
        /// As text (`inet_ntop`): `198.18.0.1`, `2001:db8:18::1`.
        public var address: String
        public var isIPv4: Bool
        /// The interface is up.
        public var isUp: Bool
    }

    public static func read() -> [Entry] {
        var out: [Entry] = []
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return out }
        defer { freeifaddrs(list) }
        var p = list
        while let entry = p {
            defer { p = entry.pointee.ifa_next }
            guard let sa = entry.pointee.ifa_addr else { continue }
            let family = Int32(sa.pointee.sa_family)
            var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            switch family {
            case AF_INET:
                var a = UnsafeRawPointer(sa).load(as: sockaddr_in.self).sin_addr
                inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count))
            case AF_INET6:
                var a = UnsafeRawPointer(sa).load(as: sockaddr_in6.self).sin6_addr
                inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count))
            default:
                continue
            }
            let text = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            out.append(Entry(address: text, isIPv4: family == AF_INET, isUp: entry.pointee.ifa_flags & UInt32(IFF_UP) != 0))
        }
        return out
    }
}
