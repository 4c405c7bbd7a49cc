import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Logging
import LoupeAPI
import LoupeFlow
import ServiceLifecycle
import SwiftProtobuf
import Synchronization

/// Service: follows `GetFlows` on the Hubble API as Hubble UI's backend does (follow, the last
/// `history` flows first), feeds the service graph and the live subscribers, and keeps
/// following across outages: on a broken stream it retries with backoff and resumes from the
/// last flow's time (flows already seen are skipped by UUID). Lost events the server reports
/// are counted and shown, never hidden.
public final class FlowFollower: Service, Sendable {
    public struct UpstreamStatus: Sendable, Codable {
        public var server: String
        public var connected: Bool
        public var error: String?
        /// Unix seconds of the last change.
        public var since: Int64
        public var flowsSeen: UInt64
        public var lostEvents: UInt64
        public var version: UInt64
    }

    let endpoint: HubbleEndpoint
    let history: UInt64
    let logger: Logger
    let state: Mutex<State>
    /// Set when the follower stops (shutdown): the live streams end with it, so the web server's
    /// graceful shutdown is not held open by browsers.
    let stopped = Atomic<Bool>(false)
    public var isStopped: Bool { stopped.load(ordering: .relaxed) }

    struct State {
        var graph = ServiceGraph()
        var connected = false
        var error: String? = "connecting"
        var since = Int64(Date().timeIntervalSince1970)
        var lostEvents: UInt64 = 0
        var subscribers: [UInt64: LiveSubscriber] = [:]
        var nextSubscriber: UInt64 = 0
        /// The newest flow's time, to resume after an outage (`since`).
        var lastTime = Google_Protobuf_Timestamp()
        /// The last `recentCapacity` UUIDs: what a resumed stream sends again is skipped, while
        /// flows that arrive out of order (Relay merging nodes) still count.
        var recent: Set<String> = []
        var recentOrder: [String] = []
        var recentNext = 0
    }

    static let recentCapacity = 4_096

    public init(endpoint: HubbleEndpoint, history: UInt64, logger: Logger) {
        self.endpoint = endpoint
        self.history = history
        self.logger = logger
        self.state = Mutex(State())
    }

    public var status: UpstreamStatus {
        state.withLock { s in
            UpstreamStatus(server: endpoint.name, connected: s.connected, error: s.error, since: s.since,
                           flowsSeen: s.graph.flowsSeen, lostEvents: s.lostEvents, version: s.graph.version)
        }
    }

    /// The map for `q` (computed on a copy: the follower keeps adding meanwhile).
    public func graph(_ q: GraphQuery) -> GraphSnapshot {
        let g = state.withLock { $0.graph }
        return g.snapshot(q)
    }

    public func subscribe(_ s: LiveSubscriber) -> UInt64 {
        state.withLock { st in
            st.nextSubscriber += 1
            st.subscribers[st.nextSubscriber] = s
            return st.nextSubscriber
        }
    }

    public func unsubscribe(_ id: UInt64) {
        _ = state.withLock { $0.subscribers.removeValue(forKey: id) }
    }

    public func run() async throws {
        defer { stopped.store(true, ordering: .relaxed) }
        var backoff = Duration.milliseconds(250)
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await cancelWhenGracefulShutdown {
                    try await self.follow()
                }
                // The server ended the stream (it is shutting down): reconnect.
                if setDisconnected("the Hubble API ended the flow stream") { backoff = .milliseconds(250) }
            } catch {
                if Task.isCancelled || Task.isShuttingDownGracefully { break }
                let problem = HubbleEndpoint.problem(error, server: endpoint.name)
                if setDisconnected(problem.message) { backoff = .milliseconds(250) }
            }
            // Retry soon after a stream that worked; back off (to 4 s) while the server is away.
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(4))
        }
    }

    /// Records the outage; returns whether the stream had been connected until now.
    @discardableResult
    private func setDisconnected(_ message: String) -> Bool {
        let (wasConnected, changed) = state.withLock { s -> (Bool, Bool) in
            let was = s.connected
            let changed = was || s.error != message
            if was { s.since = Int64(Date().timeIntervalSince1970) }
            s.connected = false
            s.error = message
            return (was, changed)
        }
        if changed { logger.warning("\(message); retrying") }
        return wasConnected
    }

    private func follow() async throws {
        try await endpoint.withObserver { observer in
            try await HubbleEndpoint.checkServerStatus(observer)
            var request = Observer_GetFlowsRequest()
            request.follow = true
            let resume = state.withLock { s -> Google_Protobuf_Timestamp? in
                s.connected = true
                s.error = nil
                s.since = Int64(Date().timeIntervalSince1970)
                return s.lastTime == Google_Protobuf_Timestamp() ? nil : s.lastTime
            }
            logger.info("following flows on \(endpoint.name)")
            if let resume { request.since = resume } else { request.number = history }
            try await observer.getFlows(request, options: HubbleEndpoint.options) { response in
                for try await message in response.messages {
                    switch message.responseTypes {
                    case .flow(let f)?: self.ingest(f)
                    case .lostEvents(let l)?: self.state.withLock { $0.lostEvents += l.numEventsLost }
                    default: break
                    }
                }
            }
        }
    }

    /// One flow: skipped if just seen (a resumed stream repeats the flows at its `since`), else
    /// into the graph and to the subscribers.
    func ingest(_ f: Flow_Flow) {
        let subscribers = state.withLock { s -> [LiveSubscriber]? in
            if !f.uuid.isEmpty {
                guard s.recent.insert(f.uuid).inserted else { return nil }
                if s.recentOrder.count < Self.recentCapacity {
                    s.recentOrder.append(f.uuid)
                } else {
                    s.recent.remove(s.recentOrder[s.recentNext])
                    s.recentOrder[s.recentNext] = f.uuid
                    s.recentNext = (s.recentNext + 1) % Self.recentCapacity
                }
            }
            if (f.time.seconds, f.time.nanos) > (s.lastTime.seconds, s.lastTime.nanos) { s.lastTime = f.time }
            s.graph.add(f)
            return s.subscribers.isEmpty ? [] : Array(s.subscribers.values)
        }
        guard let subscribers else { return }
        for sub in subscribers { sub.offer(f) }
    }
}

/// One live stream (`/api/events`): the flows matching its filters, at most `perTick` per tick
/// (the rest counted as skipped and said so — a browser cannot show 50k flows/s, and must not
/// pretend it did).
public final class LiveSubscriber: Sendable {
    public static let capacity = 100
    let filters: FlowFilterSet
    let extra: FlowFilter?
    let pending = Mutex<(flows: [Flow_Flow], skipped: UInt64)>(([], 0))

    public init(filters: FlowFilterSet, extra: FlowFilter?) {
        self.filters = filters
        self.extra = extra
    }

    func offer(_ f: Flow_Flow) {
        guard filters.matches(f) else { return }
        if let extra, !extra.matches(Flow(f)) { return }
        pending.withLock { p in
            if p.flows.count < Self.capacity { p.flows.append(f) } else { p.skipped += 1 }
        }
    }

    /// What arrived since the last call, and how many were skipped.
    public func drain() -> ([Flow_Flow], UInt64) {
        pending.withLock { p in
            let out = (p.flows, p.skipped)
            p = ([], 0)
            return out
        }
    }
}
