import GRPCCore
import Synchronization

/// The streams that follow (GetFlows/GetAgentEvents/GetDebugEvents/Peer/Health watch with no
/// end of their own): ended together when the agent shuts down, so the server's graceful
/// shutdown does not wait for clients that never hang up.
final class Followers: Sendable {
    private let state = Mutex<(next: UInt64, ends: [UInt64: @Sendable () -> Void], closed: Bool)>((1, [:], false))

    /// Registers `end`; runs it at once when shutdown already began. Returns the handle for `remove`.
    func add(_ end: @escaping @Sendable () -> Void) -> UInt64 {
        let (id, closed) = state.withLock { s -> (UInt64, Bool) in
            let id = s.next
            s.next += 1
            if !s.closed { s.ends[id] = end }
            return (id, s.closed)
        }
        if closed { end() }
        return id
    }

    func remove(_ id: UInt64) {
        _ = state.withLock { $0.ends.removeValue(forKey: id) }
    }

    var count: Int { state.withLock { $0.ends.count } }

    func endAll() {
        let ends = state.withLock { s -> [@Sendable () -> Void] in
            s.closed = true
            defer { s.ends = [:] }
            return Array(s.ends.values)
        }
        for end in ends { end() }
    }
}

/// Suspends until the RPC is cancelled (the client went away) or the agent shuts down.
func waitUntilEnded(_ followers: Followers) async {
    let (stream, continuation) = AsyncStream<Never>.makeStream()
    let id = followers.add { continuation.finish() }
    defer { followers.remove(id) }
    await withRPCCancellationHandler {
        for await _ in stream {}
    } onCancelRPC: {
        continuation.finish()
    }
}

/// One follower's queue: filled by the flow store on the recording threads (never blocking
/// them), emptied in batches by the follower's RPC. Beyond `limit` queued items, items are
/// dropped and counted; the count is handed to the consumer with the next batch, or on its own
/// when nothing else is queued, so a loss is reported even when the burst that caused it was
/// the last.
final class FollowerQueue<Element: Sendable>: Sendable {
    private let state = Mutex<(items: [Element], lost: UInt64)>(([], 0))
    private let signal: AsyncStream<Void>.Continuation
    let signals: AsyncStream<Void>
    let limit: Int

    init(limit: Int) {
        self.limit = limit
        (signals, signal) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Queues `item`; false when the queue was full and it was counted lost instead.
    @discardableResult
    func push(_ item: Element) -> Bool {
        let (queued, wake) = state.withLock { s -> (Bool, Bool) in
            if s.items.count >= limit {
                s.lost += 1
                return (false, s.lost == 1)
            }
            s.items.append(item)
            return (true, s.items.count == 1)
        }
        if wake { signal.yield() }
        return queued
    }

    /// Everything queued and the losses since the last take.
    func take() -> (items: [Element], lost: UInt64) {
        state.withLock { s in
            var items: [Element] = []
            swap(&items, &s.items)
            defer { s.lost = 0 }
            return (items, s.lost)
        }
    }

    /// Ends the consumer's wait for good.
    func finish() { signal.finish() }
}
