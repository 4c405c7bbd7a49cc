import Synchronization

/// What happened in the agent (not in traffic), as Hubble's agent events: the agent started,
/// the policy set changed, a pod (endpoint) appeared or went away. `GetAgentEvents` serves them.
public struct AgentEventRecord: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case agentStarted
        /// The policy set changed: its policies' names (`namespace/name`), a revision that grows
        /// with each change, and how many rules it holds.
        case policyUpdated(labels: [String], revision: UInt64, ruleCount: Int)
        case endpointCreated(Endpoint)
        case endpointDeleted(Endpoint)
    }

    public struct Endpoint: Sendable, Equatable {
        public var id: UInt64
        public var namespace: String
        public var podName: String
        public var labels: [String]
        public init(id: UInt64, namespace: String, podName: String, labels: [String]) {
            self.id = id
            self.namespace = namespace
            self.podName = podName
            self.labels = labels
        }
    }

    public var seconds: Int
    public var nanoseconds: Int
    public var kind: Kind

    public init(kind: Kind) {
        let now = FlowTime.now()
        self.seconds = now.seconds
        self.nanoseconds = now.nanoseconds
        self.kind = kind
    }
}

/// The newest agent events (a small ring: they are rare) and live subscribers.
public final class AgentEventLog: Sendable {
    public typealias Subscriber = @Sendable (AgentEventRecord) -> Void
    private struct State {
        var events: [AgentEventRecord] = []
        var subscribers: [UInt64: Subscriber] = [:]
        var nextID: UInt64 = 1
    }
    private let state = Mutex(State())
    public let capacity: Int

    public init(capacity: Int = 4096) {
        self.capacity = max(1, capacity)
    }

    public func append(_ event: AgentEventRecord) {
        let subscribers = state.withLock { s -> [Subscriber] in
            s.events.append(event)
            if s.events.count > capacity { s.events.removeFirst(s.events.count - capacity) }
            return Array(s.subscribers.values)
        }
        for sub in subscribers { sub(event) }
    }

    /// Every kept event, oldest first.
    public var events: [AgentEventRecord] { state.withLock { $0.events } }

    /// Atomically: every kept event, and a subscription to all later ones.
    public func subscribe(_ subscriber: @escaping Subscriber) -> (id: UInt64, backlog: [AgentEventRecord]) {
        state.withLock { s in
            let id = s.nextID
            s.nextID += 1
            s.subscribers[id] = subscriber
            return (id, s.events)
        }
    }

    public func unsubscribe(_ id: UInt64) {
        _ = state.withLock { $0.subscribers.removeValue(forKey: id) }
    }
}
