import CLoupeBPF
import Glibc
import LoupeBPF
import LoupeFlow
import NIOCore

/// A connection whose bytes the kernel carries (sockmap splice, `bpf/splice.bpf.c`).
struct SpliceState {
    var downstreamCookie: UInt64
    var upstreamCookie: UInt64
    /// What the proxy had written into each socket when the kernel took over (tcp_info):
    /// a half-close waits until the kernel's forwarded bytes are written on top of it.
    var writtenToClientBase: UInt64
    var writtenToServerBase: UInt64
    /// Bytes relayed in userspace before the splice.
    var clientBytesBefore: UInt64
    var serverBytesBefore: UInt64
    /// The side whose FIN came first ("client", "server"), for the closing flow.
    var firstFIN: String?
}

extension ProxyConnection {
    /// Step 5: an opaque connection (raw TCP, TLS after its hello, a tunnel after an upgrade)
    /// has nothing left to teach the proxy: stop reading both sockets, let what the proxy holds
    /// reach them, then hand both to the kernel. Returns false when splicing is off (the
    /// caller keeps reading).
    @discardableResult
    func spliceWhenDrained() -> Bool {
        guard environment.configuration.splice, mode == .opaque, !carriesDNS, let upstream else { return false }
        spliceRequested = true
        try? downstream.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
        try? upstream.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
        // Next tick: the one-shot handlers removed in this one have handed over their bytes.
        downstream.eventLoop.execute { self.drainForSplice() }
        return true
    }

    /// The kernel hands the verdict whole skbs, also one the proxy has read part of (its start
    /// would be sent twice). A read that does not fill its buffer leaves no partial skb, so a
    /// socket with bytes queued gets one last read with a buffer larger than its queue can be.
    private func drainForSplice() {
        guard mode == .opaque, splice == nil, let upstream else { return }
        for (isDownstream, channel) in [(true, downstream), (false, upstream)] where Self.hasQueuedBytes(channel) {
            try? channel.syncOptions?.setOption(ChannelOptions.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: Self.drainReadBytes))
            spliceDrainReads.insert(isDownstream)
            channel.read()
        }
        waitForDrainReads(until: .now() + .milliseconds(Self.drainReadWaitMilliseconds))
    }

    /// Queued bytes that were out of order only are not read: past the deadline the splice goes on.
    private func waitForDrainReads(until deadline: NIODeadline) {
        guard mode == .opaque, splice == nil, let upstream else { return }
        if !spliceDrainReads.isEmpty && NIODeadline.now() < deadline {
            downstream.eventLoop.scheduleTask(in: .milliseconds(1)) { self.waitForDrainReads(until: deadline) }
            return
        }
        // NIO still reads the EOF of a spliced socket: with ordinary buffers, unless a drain
        // read is still pending (it must not read part of an skb).
        if spliceDrainReads.isEmpty { Self.useAdaptiveReads(downstream, upstream) }
        spliceDrainReads.removeAll()
        downstream.flush()
        upstream.flush()
        let queued = [lastWriteToServer, lastWriteToClient].compactMap { $0 }
        EventLoopFuture.andAllComplete(queued, on: downstream.eventLoop).whenComplete { _ in self.spliceNow() }
    }

    /// The relay saw the drain read of one side.
    func spliceDrainReadDone(downstream isDownstream: Bool) {
        spliceDrainReads.remove(isDownstream)
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
        guard mode == .opaque, splice == nil, let upstream, downstream.isActive, upstream.isActive else { return }
        // A half-closed connection finishes in userspace (its half-close is already under way).
        if sawInputClosed { return spliceFallback("half_closed") }
        guard let maps = environment.spliceMaps else {
            return spliceFallback("unavailable")
        }
        if environment.configuration.spliceInjectFailure { return spliceFallback("injected") }
        guard let down = Self.spliceSocket(downstream), let up = Self.spliceSocket(upstream),
              let toClient = Self.bytesWritten(downstream), let toServer = Self.bytesWritten(upstream) else {
            return spliceFallback("socket_info")
        }
        // Below the low-water mark TCP does not call data_ready, so what arrives while the two
        // sockets go in one after the other waits in their receive queues; setting it back
        // calls data_ready, and the verdict takes the queue in order.
        Self.setReceiveLowWater(downstream, upstream, to: Self.holdingLowWater)
        do {
            try maps.insert(downstream: down, upstream: up)
        } catch {
            Self.setReceiveLowWater(downstream, upstream, to: 1)
            return spliceFallback(error.reason)
        }
        splice = SpliceState(downstreamCookie: down.cookie, upstreamCookie: up.cookie,
                             writtenToClientBase: toClient, writtenToServerBase: toServer,
                             clientBytesBefore: bytesFromClient, serverBytesBefore: bytesFromServer)
        Self.setReceiveLowWater(downstream, upstream, to: 1)
        environment.count("splice_started")
        let loop = downstream.eventLoop
        EventLoopFuture.andAllComplete([downstream.closeFuture, upstream.closeFuture], on: loop).whenComplete { _ in
            self.spliceEnded(maps)
        }
    }

    /// The kernel did not take the connection: it stays in the userspace relay, counted.
    private func spliceFallback(_ reason: String) {
        environment.count("splice_fallback_" + reason)
        spliceRequested = false
        guard let upstream else { return }
        for channel in [downstream, upstream] {
            try? channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
        }
        downstream.read()
        upstream.read()
    }

    /// A FIN on a spliced socket: shut the peer's write side once everything before it is
    /// written there.
    func splicedInputClosed(fromClient: Bool) {
        guard var state = splice else { return }
        if state.firstFIN == nil { state.firstFIN = fromClient ? "client" : "server" }
        splice = state
        afterForwarded(fromClient: fromClient) { $0.close(mode: .output, promise: nil) }
    }

    /// A spliced socket closed (both its halves done, or reset): close the peer once
    /// everything that came before is written there.
    func splicedSideClosed(fromClient: Bool) {
        afterForwarded(fromClient: fromClient) { $0.close(promise: nil) }
    }

    /// Runs `then` on the socket opposite the `fromClient` side once the kernel has written
    /// into it everything it forwarded from that side (its queue toward the peer is worked off
    /// asynchronously: closing or shutting the peer earlier would drop the tail), and what the
    /// proxy relayed itself.
    private func afterForwarded(fromClient: Bool, then: @escaping (Channel) -> Void) {
        guard let state = splice, let upstream, let maps = environment.spliceMaps else { return }
        let target = fromClient ? upstream : downstream
        let source = fromClient ? state.downstreamCookie : state.upstreamCookie
        let base = fromClient ? state.writtenToServerBase : state.writtenToClientBase
        let deadline = NIODeadline.now() + .seconds(Self.halfCloseGraceSeconds)
        // Bytes the kernel left in the socket (its verdict runs on data_ready; a FIN is no
        // data) are read by NIO with the EOF and relayed here: they go out first, too.
        let relayed = (fromClient ? lastWriteToServer : lastWriteToClient) ?? target.eventLoop.makeSucceededVoidFuture()
        func attempt(_ wait: Int64) {
            guard target.isActive else { return }
            let written = (Self.bytesWritten(target) ?? .max) &- base
            if written >= maps.forwardedBytes(from: source) || NIODeadline.now() > deadline {
                if NIODeadline.now() > deadline { environment.count("splice_close_wait_timeouts") }
                then(target)
                return
            }
            // A slow reader on the peer can take long: back off (1, 2, 4 … 50 ms).
            target.eventLoop.scheduleTask(in: .milliseconds(wait)) { attempt(min(wait * 2, 50)) }
        }
        relayed.whenComplete { _ in attempt(1) }
    }

    /// Both sockets closed: the connection's flow, with what the kernel carried.
    private func spliceEnded(_ maps: SpliceMaps) {
        guard let state = splice else { return }
        let fromClient = maps.forwardedBytes(from: state.downstreamCookie)
        let fromServer = maps.forwardedBytes(from: state.upstreamCookie)
        maps.remove(state.downstreamCookie, state.upstreamCookie)
        environment.count("splice_ended")
        let ending = state.firstFIN.map { "\($0) closed first" } ?? "ended without FIN (reset or abort)"
        environment.record(context.flow(
            verdict: .forwarded, type: .l3l4, l7: nil, reply: false,
            summary: "\(opaqueDescription) closed: \(bytesFromClient + fromClient) bytes from client, \(bytesFromServer + fromServer) bytes from server "
                + "(spliced into the kernel after \(state.clientBytesBefore)+\(state.serverBytesBefore) bytes; \(ending))"))
    }

    /// Big enough that no burst reaches it while the sockets go in (TCP caps it at half the
    /// largest receive buffer).
    static let holdingLowWater = 1 << 20

    static func setReceiveLowWater(_ a: Channel, _ b: Channel, to value: Int) {
        let option = ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_RCVLOWAT))
        for ch in [a, b] { try? ch.syncOptions?.setOption(option, value: value) }
    }

    /// A socket option read on the channel's event loop (NIO has no fds to share).
    static func socketOption<Value>(_ channel: Channel, level: CInt, name: CInt, as: Value.Type) -> Value? {
        guard let provider = channel as? SocketOptionProvider else { return nil }
        var out: Value?
        provider.unsafeGetSocketOption(level: SocketOptionLevel(level), name: SocketOptionName(name)).whenSuccess { (v: Value) in out = v }
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
