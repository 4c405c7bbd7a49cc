import Foundation
import Logging
import LoupeBPF
import LoupeFlow
import LoupeProxy
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// Service: the agent's local API on a unix socket. A client sends one JSON line:
/// `{"flows":{"last":N,"follow":true}}` → the newest N flows then every new one, as JSON lines
/// (`hubble observe -o json` records); `{"status":{}}` → one JSON object with counters.
public final class FlowAPIService: Service, Sendable {
    private let group: EventLoopGroup
    private let path: String
    private let environment: ProxyEnvironment
    private let datapathCounters: @Sendable () -> [DatapathCounter: UInt64]
    private let logger: Logger

    public init(group: EventLoopGroup, path: String, environment: ProxyEnvironment,
                datapathCounters: @escaping @Sendable () -> [DatapathCounter: UInt64], logger: Logger) {
        self.group = group
        self.path = path
        self.environment = environment
        self.datapathCounters = datapathCounters
        self.logger = logger
    }

    public func run() async throws {
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        unlink(path)
        let env = environment
        let counters = datapathCounters
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineDecoder()))
                    try ch.pipeline.syncOperations.addHandler(APIConnectionHandler(environment: env, datapathCounters: counters))
                }
            }
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        chmod(path, 0o600)
        logger.info("local API on \(path)")
        try? await gracefulShutdown()
        try? await channel.close()
        unlink(path)
    }
}

/// Splits the request stream into lines (requests are one JSON line each, ≤ 64 KiB).
struct LineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer
    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if let nl = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let line = buffer.readSlice(length: nl - buffer.readerIndex)!
            buffer.moveReaderIndex(forwardBy: 1)
            context.fireChannelRead(wrapInboundOut(line))
            return .continue
        }
        if buffer.readableBytes > 65_536 { throw AgentError("API request line too long") }
        return .needMoreData
    }
}

/// One API client. Streaming uses a bounded queue: when the client reads slower than flows
/// arrive, the overflow is dropped and counted as lost events (source `observer`), never
/// buffered without bound.
final class APIConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    static let queueLimit = 16_384
    let environment: ProxyEnvironment
    let datapathCounters: @Sendable () -> [DatapathCounter: UInt64]
    private var subscription: UInt64?
    /// Flows waiting to be written, whether a drain is scheduled, and how many this stream lost:
    /// filled by the store's subscriber on the proxy's threads, drained on this channel's loop.
    final class Queue: Sendable {
        let state = Mutex<(items: [FlowRecord], scheduled: Bool, lost: UInt64)>(([], false, 0))
    }
    private let queue = Queue()

    init(environment: ProxyEnvironment, datapathCounters: @escaping @Sendable () -> [DatapathCounter: UInt64]) {
        self.environment = environment
        self.datapathCounters = datapathCounters
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let line = String(buffer: unwrapInboundIn(data))
        guard let obj = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else {
            reply(context, ["error": "request must be one JSON object per line"], close: true)
            return
        }
        if let flows = obj["flows"] as? [String: Any] {
            let last = flows["last"] as? Int ?? 20
            let follow = flows["follow"] as? Bool ?? false
            do {
                let filter = try FlowFilter(dictionary: flows["filter"] as? [String: [String]] ?? [:])
                stream(context: context, last: last, follow: follow, filter: filter)
            } catch {
                reply(context, ["error": "\(error)"], close: true)
            }
        } else if obj["status"] != nil {
            reply(context, status(), close: true)
        } else {
            reply(context, ["error": "unknown request; expected \"flows\" or \"status\""], close: true)
        }
    }

    private func stream(context: ChannelHandlerContext, last: Int, follow: Bool, filter: FlowFilter) {
        let store = environment.flows
        if !follow {
            var buf = context.channel.allocator.buffer(capacity: 4096)
            for r in store.last(last, matching: filter.matches) { buf.writeBytes(FlowEncoding.jsonLineBytes(r)) }
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(buf)).whenComplete { _ in channel.close(promise: nil) }
            return
        }
        let loop = context.eventLoop
        let channel = context.channel
        let queue = self.queue
        // The handler itself is touched on its own loop only.
        let handler = NIOLoopBound(self, eventLoop: loop)
        let (id, backlog) = store.subscribe(last: last, matching: filter.matches) { record in
            guard filter.matches(record.flow) else { return }
            let (schedule, dropped) = queue.state.withLock { q -> (Bool, Bool) in
                if q.items.count >= Self.queueLimit {
                    q.lost += 1
                    return (false, true)
                }
                q.items.append(record)
                if q.scheduled { return (false, false) }
                q.scheduled = true
                return (true, false)
            }
            if dropped { store.countLost(source: "observer") }
            if schedule { loop.execute { handler.value.drain(channel) } }
        }
        subscription = id
        var buf = context.channel.allocator.buffer(capacity: 4096)
        for r in backlog { buf.writeBytes(FlowEncoding.jsonLineBytes(r)) }
        context.writeAndFlush(wrapOutboundOut(buf), promise: nil)
    }

    /// Writes queued flows while the client keeps up; resumes on writability.
    private func drain(_ channel: Channel) {
        guard channel.isActive else { return }
        while channel.isWritable {
            let (batch, lost) = queue.state.withLock { q -> ([FlowRecord], UInt64) in
                var b: [FlowRecord] = []
                swap(&b, &q.items) // takes the queue's storage (a copy then removeAll reallocated it)
                let lost = q.lost
                q.lost = 0
                if b.isEmpty { q.scheduled = false }
                return (b, lost)
            }
            if batch.isEmpty && lost == 0 { break }
            // Chunks of bounded size: one buffer per batch grew to megabytes and cost page faults.
            var buf = channel.allocator.buffer(capacity: Self.chunkBytes + 2048)
            // Said in the stream where it happened, as Hubble does (`lost_events` records).
            if lost > 0 { buf.writeString(FlowEncoding.lostEventsLine(count: lost, nodeName: environment.configuration.nodeName) + "\n") }
            for r in batch {
                buf.writeBytes(FlowEncoding.jsonLineBytes(r))
                if buf.readableBytes >= Self.chunkBytes {
                    channel.write(buf, promise: nil)
                    buf = channel.allocator.buffer(capacity: Self.chunkBytes + 2048)
                }
            }
            channel.writeAndFlush(buf, promise: nil)
        }
    }

    static let chunkBytes = 128 * 1024

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { drain(context.channel) }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let subscription { environment.flows.unsubscribe(subscription) }
        subscription = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    private func status() -> [String: Any] {
        var datapath: [String: UInt64] = [:]
        for (k, v) in datapathCounters() { datapath[k.name] = v }
        let store = environment.flows
        return [
            "node_name": environment.configuration.nodeName,
            "datapath": datapath,
            "proxy": environment.counterValues.filter { !$0.key.hasPrefix("splice_") },
            "splice": environment.spliceStatus,
            "flows": ["total": store.totalFlows, "capacity": store.capacity, "subscribers": store.subscriberCount],
            "lost_events": store.lostEvents,
        ]
    }

    private func reply(_ context: ChannelHandlerContext, _ obj: [String: Any], close: Bool) {
        let data = (try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])) ?? Data("{}".utf8)
        var buf = context.channel.allocator.buffer(capacity: data.count + 1)
        buf.writeBytes(data)
        buf.writeString("\n")
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buf)).whenComplete { _ in if close { channel.close(promise: nil) } }
    }
}
