import LoupeFlow
import NIOCore
import NIOPosix

/// Flows recorded on an event loop wait for the end of the loop's current round of I/O, then go
/// to the store together (one lock, one pass over the subscribers): the bytes that a request or
/// response came with are written first. When one wake-up brings a burst of requests (ten
/// clients sending at once), each is forwarded without waiting for the flows of those read
/// before it; the flows are in the store in the same round, microseconds later, in the order
/// they were recorded. The DNS proxy's thread, which batches its datagrams, hands its flows
/// over after each batch is sent (`installOnThisThread`, `drain`). Elsewhere (tests on an
/// embedded channel) a flow goes to the store at once.
/// `@unchecked Sendable`: each instance is used only on its own thread.
final class PendingFlows: @unchecked Sendable {
    private static let perThread = ThreadSpecificVariable<PendingFlows>()

    /// The event loop that drains this after each round of I/O; nil: drained by the thread itself.
    private let loop: (any EventLoop)?
    private var store: FlowStore?
    private var flows: [Flow] = []
    /// The batch being handed over (kept to reuse its storage).
    private var draining: [Flow] = []

    private init(loop: (any EventLoop)?) { self.loop = loop }

    /// This thread's pending flows: an event loop's (made on first use), or the ones installed
    /// (`installOnThisThread`); nil elsewhere.
    static var onThisThread: PendingFlows? {
        if let pending = perThread.currentValue { return pending }
        guard let loop = MultiThreadedEventLoopGroup.currentEventLoop else { return nil }
        let pending = PendingFlows(loop: loop)
        perThread.currentValue = pending
        return pending
    }

    /// For a thread that is not an event loop and drains its flows itself (`drain`).
    static func installOnThisThread() -> PendingFlows {
        let pending = PendingFlows(loop: nil)
        perThread.currentValue = pending
        return pending
    }

    func add(_ flow: consuming Flow, to store: FlowStore) {
        if let waiting = self.store, waiting !== store { drain() } // another proxy's store (tests): keep each store's order
        if flows.isEmpty {
            self.store = store
            // Tasks run once the loop has handled every event of this wake-up.
            loop?.execute { self.drain() }
        }
        flows.append(flow)
    }

    /// Hands what is pending to the store.
    func drain() {
        guard let store, !flows.isEmpty else { return }
        swap(&flows, &draining)
        self.store = nil
        store.append(contentsOf: draining)
        draining.removeAll(keepingCapacity: true)
    }
}
