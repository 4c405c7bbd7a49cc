import CLoupeBPF
import Glibc
import LoupeBPF
import LoupeFlow
import NIOCore

extension ProxyConnection {
    /// Step 4: an opaque connection (raw TCP, TLS after its hello, a tunnel after an upgrade)
    /// has nothing left to teach the proxy: stop reading both sockets, let what the proxy holds
    /// reach them, then hand both to the kernel. Returns false when it is not to be spliced (the
    /// caller keeps reading).
    @discardableResult
    func spliceWhenDrained() -> Bool {
        guard machine.isDraining, let upstream else { return false }
        try? downstream.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
        try? upstream.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
        // Next tick: the one-shot handlers removed in this one have handed over their bytes.
        loop.execute { self.drainForSplice() }
        return true
    }

    /// The kernel hands the verdict whole skbs, also one the proxy has read part of (its start
    /// would be sent twice). A read that does not fill its buffer leaves no partial skb, so a
    /// socket with bytes queued gets one last read with a buffer larger than its queue can be.
    private func drainForSplice() {
        guard machine.isDraining, let upstream else { return }
        for (side, channel) in [(Side.client, downstream), (Side.server, upstream)] where Self.hasQueuedBytes(channel) {
            try? channel.syncOptions?.setOption(ChannelOptions.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: Self.drainReadBytes))
            machine.drainReadStarted(side)
            channel.read()
        }
        waitForDrainReads(until: .now() + .milliseconds(Self.drainReadWaitMilliseconds))
    }

    /// Queued bytes that were out of order only are not read: past the deadline the splice goes on.
    private func waitForDrainReads(until deadline: NIODeadline) {
        guard machine.isDraining, let upstream else { return }
        if !machine.drainReadsDone && NIODeadline.now() < deadline {
            loop.scheduleTask(in: .milliseconds(1)) { self.waitForDrainReads(until: deadline) }
            return
        }
        // NIO still reads the EOF of a spliced socket: with ordinary buffers, unless a drain
        // read is still pending (it must not read part of an skb).
        if machine.drainReadsDone { Self.useAdaptiveReads(downstream, upstream) }
        machine.drainReadsAbandoned()
        downstream.flush()
        upstream.flush()
        EventLoopFuture.andAllComplete([lastWrite(to: .server), lastWrite(to: .client)], on: downstream.eventLoop).assumeIsolated().whenComplete { _ in self.spliceNow() }
    }

    /// A read with this buffer cannot fill it: larger than any receive queue (tcp_rmem's max).
    static let drainReadBytes: Int = {
        let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/tcp_rmem", encoding: .utf8)) ?? ""
        let max = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).last.flatMap { Int($0) } ?? 0
        return Swift.max(max, 6 << 20) + 4096
    }()
    static let drainReadWaitMilliseconds: Int64 = 100

    static func hasQueuedBytes(_ channel: Channel) -> Bool {
        guard let info = socketOption(channel, level: SOL_SOCKET, name: soMeminfo, as: loupe_meminfo_raw.self) else { return true }
        return info.values.0 != 0
    }

    static let soMeminfo: CInt = 55 // SO_MEMINFO

    static func useAdaptiveReads(_ a: Channel, _ b: Channel) {
        for ch in [a, b] { try? ch.syncOptions?.setOption(ChannelOptions.recvAllocator, value: ProxyConnection.reads) }
    }

    private func spliceNow() {
        guard machine.isDraining, let upstream, downstream.isActive, upstream.isActive else { return }
        switch machine.drained() {
        case .none, .insert: break
        case .fallback(let reason): return spliceFallback(reason)
        }
        guard let maps = environment.spliceMaps else { return spliceFallback(.unavailable) }
        if environment.configuration.spliceInjectFailure { return spliceFallback(.injected) }
        guard let down = Self.spliceSocket(downstream), let up = Self.spliceSocket(upstream),
              let toClient = Self.bytesWritten(downstream), let toServer = Self.bytesWritten(upstream) else {
            return spliceFallback(.socketInfo)
        }
        // Below the low-water mark TCP does not call data_ready, so what arrives while the two
        // sockets go in one after the other waits in their receive queues; setting it back
        // calls data_ready, and the verdict takes the queue in order.
        Self.setReceiveLowWater(downstream, upstream, to: Self.holdingLowWater)
        do {
            try maps.insert(downstream: down, upstream: up)
        } catch {
            Self.setReceiveLowWater(downstream, upstream, to: 1)
            return spliceFallback(.refused(error.reason))
        }
        machine.spliced(SpliceState(downstreamCookie: down.cookie, upstreamCookie: up.cookie,
                                    writtenToClientBase: toClient, writtenToServerBase: toServer,
                                    clientBytesBefore: machine.bytesFromClient, serverBytesBefore: machine.bytesFromServer))
        Self.setReceiveLowWater(downstream, upstream, to: 1)
        environment.count(.spliceStarted)
        EventLoopFuture.andAllComplete([downstream.closeFuture, upstream.closeFuture], on: downstream.eventLoop)
            .assumeIsolated().whenComplete { _ in self.spliceEnded(maps) }
    }

    /// The kernel did not take the connection: it stays in the userspace relay, counted.
    private func spliceFallback(_ reason: SpliceFallback) {
        environment.count(.spliceFallback(reason))
        machine.spliceFailed()
        guard let upstream else { return }
        for channel in [downstream, upstream] {
            try? channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
        }
        downstream.read()
        upstream.read()
    }

    /// Runs `then` on the socket opposite `side` once the kernel has written into it everything
    /// it forwarded from that side (its queue toward the peer is worked off asynchronously:
    /// closing or shutting the peer earlier would drop the tail), and what the proxy relayed itself.
    func afterForwarded(from side: Side, then: @escaping (Channel) -> Void) {
        guard let state = machine.splice, let upstream, let maps = environment.spliceMaps else { return }
        let target = side == .client ? upstream : downstream
        let source = side == .client ? state.downstreamCookie : state.upstreamCookie
        let base = side == .client ? state.writtenToServerBase : state.writtenToClientBase
        let deadline = NIODeadline.now() + .seconds(Self.halfCloseGraceSeconds)
        let environment = self.environment
        let loop = self.loop
        // Bytes the kernel left in the socket (its verdict runs on data_ready; a FIN is no
        // data) are read by NIO with the EOF and relayed here: they go out first, too.
        func attempt(_ wait: Int64) {
            guard target.isActive else { return }
            let written = (Self.bytesWritten(target) ?? .max) &- base
            if written >= maps.forwardedBytes(from: source) || NIODeadline.now() > deadline {
                if NIODeadline.now() > deadline { environment.count(.spliceCloseWaitTimeouts) }
                then(target)
                return
            }
            // A slow reader on the peer can take long: back off (1, 2, 4 … 50 ms).
            loop.scheduleTask(in: .milliseconds(wait)) { attempt(min(wait * 2, 50)) }
        }
        lastWrite(to: side.peer).assumeIsolated().whenComplete { _ in attempt(1) }
    }

    /// Both sockets closed: the connection's flow, with what the kernel carried.
    private func spliceEnded(_ maps: SpliceMaps) {
        guard let (kind, state) = machine.spliceEnded() else { return }
        let fromClient = maps.forwardedBytes(from: state.downstreamCookie)
        let fromServer = maps.forwardedBytes(from: state.upstreamCookie)
        maps.remove(state.downstreamCookie, state.upstreamCookie)
        environment.count(.spliceEnded)
        let ending = state.firstFIN.map { "\($0) closed first" } ?? "ended without FIN (reset or abort)"
        record(.forwarded, "\(ConnectionStateMachine.describe(kind)) closed: \(machine.bytesFromClient + fromClient) bytes from client, "
            + "\(machine.bytesFromServer + fromServer) bytes from server "
            + "(spliced into the kernel after \(state.clientBytesBefore)+\(state.serverBytesBefore) bytes; \(ending))")
    }

    /// Big enough that no burst reaches it while the sockets go in (TCP caps it at half the
    /// largest receive buffer).
    static let holdingLowWater = 1 << 20

    static func setReceiveLowWater(_ a: Channel, _ b: Channel, to value: Int) {
        let option = ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_RCVLOWAT))
        for ch in [a, b] { try? ch.syncOptions?.setOption(option, value: value) }
    }

    /// A socket option read on the channel's event loop (NIO has no fds to share).
    static func socketOption<Value: Sendable>(_ channel: Channel, level: CInt, name: CInt, as: Value.Type) -> Value? {
        guard let provider = channel as? SocketOptionProvider else { return nil }
        var out: Value?
        provider.unsafeGetSocketOption(level: SocketOptionLevel(level), name: SocketOptionName(name))
            .assumeIsolatedUnsafeUnchecked().whenSuccess { (v: Value) in out = v }
        return out
    }

    static func bytesWritten(_ channel: Channel) -> UInt64? {
        guard var info = socketOption(channel, level: CInt(IPPROTO_TCP), name: TCP_INFO, as: loupe_tcp_info_raw.self) else { return nil }
        return loupe_tcp_bytes_written(&info)
    }

    static func spliceSocket(_ channel: Channel) -> SpliceSocket? {
        guard let cookie = socketOption(channel, level: SOL_SOCKET, name: Self.soCookie, as: UInt64.self),
              let local = channel.localAddress, let remote = channel.remoteAddress,
              let la = addressBytes(local), let ra = addressBytes(remote),
              let lp = local.port, let rp = remote.port else { return nil }
        return SpliceSocket(cookie: cookie, localAddress: la, localPort: UInt16(lp), remoteAddress: ra, remotePort: UInt16(rp))
    }

    static let soCookie: CInt = 57 // SO_COOKIE

    static func addressBytes(_ a: NIOCore.SocketAddress) -> [UInt8]? {
        switch a {
        case .v4(let v4): withUnsafeBytes(of: v4.address.sin_addr) { Array($0) }
        case .v6(let v6): withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
        default: nil
        }
    }
}
