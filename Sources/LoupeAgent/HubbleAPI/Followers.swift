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
