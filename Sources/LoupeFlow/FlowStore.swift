import Foundation

/// The agent's bounded in-memory flow log: the newest `capacity` flows, and live subscribers.
/// A subscriber's callback runs on the appending thread and must not block; a subscriber that
/// cannot keep up drops flows itself and counts them as lost events.
/// `@unchecked Sendable`: all state is behind `lock` (see there why not a `Mutex`).
public final class FlowStore: @unchecked Sendable {
    public typealias Subscriber = @Sendable (FlowRecord) -> Void

    /// Ring slots hold a reference: a `Flow` is several hundred bytes inline, and 64k inline
    /// slots cost ~30 MB of RSS before the first flow.
    fileprivate final class Slot: Sendable {
        let record: FlowRecord
        init(_ record: consuming FlowRecord) { self.record = record }
    }

    /// Kept flows as references to the ring's slots, oldest first: taking one copies a pointer
    /// per flow under the lock (a copy of 64k `FlowRecord`s was ~30 MB per API request, which
    /// the allocator kept as RSS); a flow is read out when it is visited.
    public struct Records: RandomAccessCollection, Sendable {
        fileprivate let slots: [Slot]
        public var startIndex: Int { slots.startIndex }
        public var endIndex: Int { slots.endIndex }
        public subscript(position: Int) -> FlowRecord { slots[position].record }
    }

    private struct State {
        var ring: [Slot?]
        var next = 0
        var total: UInt64 = 0
        var subscribers: [UInt64: Subscriber] = [:] {
            // What `append` calls, kept as an array: copying the dictionary's values on every
            // append allocated once per flow.
            didSet { callbacks = Array(subscribers.values) }
        }
        var callbacks: [Subscriber] = []
        var nextSubscriberID: UInt64 = 1
        var lost: [String: UInt64] = [:]
        /// Flows appended per wall-clock second over the last minute (`flowsRate`).
        var perSecond = [UInt64](repeating: 0, count: 61)
        var bucketSecond = [Int](repeating: 0, count: 61)
    }

    /// All state behind one lock. (A `Mutex<State>` copied the 64k-slot ring on every append
    /// in debug builds; a class-held state is mutated in place.)
    private let lock = NSLock()
    private var s: State
    public let capacity: Int

    public init(capacity: Int = 65_536) {
        self.capacity = max(1, capacity)
        self.s = State(ring: Array(repeating: nil, count: max(1, capacity)))
    }

    private func withState<T>(_ body: (inout State) -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body(&s)
    }

    public func append(_ flow: consuming Flow) {
        let slot = Slot(FlowRecord(flow: flow))
        // The slot it replaces comes out of the lock and is freed outside it (freeing a flow
        // is a good part of the work of appending one).
        let (subscribers, _) = withState { s -> ([Subscriber], Slot?) in
            let replaced = s.ring[s.next]
            s.ring[s.next] = slot
            s.next = (s.next + 1) % capacity
            Self.counted(1, in: &s)
            return (s.callbacks, replaced)
        }
        for sub in subscribers { sub(slot.record) }
    }

    /// Appends flows in their order, under one lock; subscribers see them in that order.
    public func append(contentsOf flows: [Flow]) {
        guard !flows.isEmpty else { return }
        var slots: [Slot?] = flows.map { Slot(FlowRecord(flow: $0)) }
        let subscribers = withState { s -> [Subscriber] in
            // Each new slot takes its place in the ring; `slots` is left holding the slots they
            // replaced, freed outside the lock.
            for i in slots.indices {
                swap(&s.ring[s.next], &slots[i])
                s.next = (s.next + 1) % capacity
            }
            Self.counted(flows.count, in: &s)
            return s.callbacks
        }
        guard !subscribers.isEmpty else { return }
        for flow in flows {
            let record = FlowRecord(flow: flow)
            for sub in subscribers { sub(record) }
        }
    }

    private static func counted(_ n: Int, in s: inout State) {
        s.total += UInt64(n)
        let second = time(nil)
        let b = second % 61
        if s.bucketSecond[b] != second {
            s.bucketSecond[b] = second
            s.perSecond[b] = 0
        }
        s.perSecond[b] += UInt64(n)
    }

    /// The newest `n` flows that satisfy `matching`, oldest first.
    public func last(_ n: Int, matching: (Flow) -> Bool = { _ in true }) -> [FlowRecord] {
        withState { Self.newest(n, in: $0, capacity: capacity, matching: matching) }
    }

    /// Atomically takes the newest `n` matching flows and subscribes to everything after them.
    public func subscribe(last n: Int, matching: (Flow) -> Bool = { _ in true },
                          _ subscriber: @escaping Subscriber) -> (id: UInt64, backlog: [FlowRecord]) {
        // Holding the lock across both steps means no flow falls between backlog and live stream.
        withState { s in
            let backlog = Self.newest(n, in: s, capacity: capacity, matching: matching)
            let id = s.nextSubscriberID
            s.nextSubscriberID += 1
            s.subscribers[id] = subscriber
            return (id, backlog)
        }
    }

    private static func newest(_ n: Int, in s: State, capacity: Int, matching: (Flow) -> Bool) -> [FlowRecord] {
        guard n > 0 else { return [] }
        var out: [FlowRecord] = []
        var i = s.next
        for _ in 0..<min(Int(s.total), capacity) {
            i = (i - 1 + capacity) % capacity
            if let r = s.ring[i]?.record, matching(r.flow) {
                out.append(r)
                if out.count == n { break }
            }
        }
        return out.reversed()
    }

    /// Every kept flow, oldest first (filter it outside the lock).
    public func records() -> Records { withState { Self.slots(in: $0, capacity: capacity) } }

    /// Atomically: every kept flow, and a subscription to everything after them.
    public func subscribeAfterRecords(_ subscriber: @escaping Subscriber) -> (id: UInt64, backlog: Records) {
        withState { s in
            let backlog = Self.slots(in: s, capacity: capacity)
            let id = s.nextSubscriberID
            s.nextSubscriberID += 1
            s.subscribers[id] = subscriber
            return (id, backlog)
        }
    }

    private static func slots(in s: State, capacity: Int) -> Records {
        let count = min(Int(s.total), capacity)
        var out: [Slot] = []
        out.reserveCapacity(count)
        var i = (s.next - count + capacity) % capacity
        for _ in 0..<count {
            if let slot = s.ring[i] { out.append(slot) }
            i = (i + 1) % capacity
        }
        return Records(slots: out)
    }

    /// Flows per second over the last minute (Hubble's `flows_rate`).
    public var flowsRate: Double {
        let now = time(nil)
        let total = withState { s in
            (0..<61).reduce(UInt64(0)) { acc, i in
                let age = now - s.bucketSecond[i]
                return age >= 1 && age <= 60 ? acc + s.perSecond[i] : acc
            }
        }
        return Double(total) / 60
    }

    public func unsubscribe(_ id: UInt64) {
        _ = withState { $0.subscribers.removeValue(forKey: id) }
    }

    /// Counts flows a consumer could not take (Hubble's lost events, by source).
    public func countLost(source: String, _ n: UInt64 = 1) {
        withState { $0.lost[source, default: 0] += n }
    }

    public var totalFlows: UInt64 { withState { $0.total } }
    public var lostEvents: [String: UInt64] { withState { $0.lost } }
    public var subscriberCount: Int { withState { $0.subscribers.count } }
}
