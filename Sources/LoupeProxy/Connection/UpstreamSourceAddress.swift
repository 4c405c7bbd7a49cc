import Glibc
import LoupeNetlink
import NIOCore
import Synchronization

/// `--upstream-source pod`: which address an upstream connection binds, and the socket options
/// that allow binding an address the node does not own.
final class UpstreamSourceAddress: Sendable {
    private struct Cache {
        var addresses: Set<String> = []
        var readAt: ContinuousClock.Instant?
    }
    /// The node's own addresses (its netns), re-read at most once a second.
    private let cache = Mutex(Cache())

    /// The client's address at port 0, or nil (bind nothing: the node's address) when the
    /// destination is the client itself or one of the node's addresses.
    func source(client: SocketAddress?, target: SocketAddress) -> SocketAddress? {
        guard let client, let clientIP = client.ipAddress, let targetIP = target.ipAddress, clientIP != targetIP,
              !nodeAddresses().contains(targetIP) else { return nil }
        return try? SocketAddress(ipAddress: clientIP, port: 0)
    }

    /// IP_TRANSPARENT / IPV6_TRANSPARENT (bind a non-local address; needs CAP_NET_ADMIN) and
    /// IP_BIND_ADDRESS_NO_PORT (choose the port at connect, per destination, not at bind).
    static func options(for source: SocketAddress) -> [(ChannelOptions.Types.SocketOption, Int)] {
        let transparent = if case .v6 = source {
            ChannelOptions.Types.SocketOption(level: SocketOptionLevel(IPPROTO_IPV6), name: SocketOptionName(75)) // IPV6_TRANSPARENT
        } else {
            ChannelOptions.Types.SocketOption(level: SocketOptionLevel(IPPROTO_IP), name: SocketOptionName(19)) // IP_TRANSPARENT
        }
        return [(transparent, 1), (ChannelOptions.Types.SocketOption(level: SocketOptionLevel(IPPROTO_IP), name: SocketOptionName(24)), 1)] // IP_BIND_ADDRESS_NO_PORT
    }

    private func nodeAddresses() -> Set<String> {
        let now = ContinuousClock.now
        if let cached = cache.withLock({ c in c.readAt.map { now - $0 < .seconds(1) } == true ? c.addresses : nil }) { return cached }
        let read = Set(InterfaceAddresses.read().map(\.address))
        cache.withLock { $0 = Cache(addresses: read, readAt: now) }
        return read
    }
}
