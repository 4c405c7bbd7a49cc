import Foundation
import GRPCCore
import GRPCProtobuf
import LoupeAPI
import LoupeFlow
import LoupeProxy
import Synchronization
import SwiftProtobuf

/// What the Hubble API says about this node.
struct HubbleNode: Sendable {
    var name: String
    var version: String
    /// `host:port` Relay dials (the TCP listener), or the unix socket when there is none.
    var address: String
    /// Set when the TCP listener serves TLS: the name in its certificate Relay checks.
    var tlsServerName: String?
    var started: ContinuousClock.Instant = .now

    var uptimeNanoseconds: UInt64 {
        let d = ContinuousClock.now - started
        return UInt64(d.components.seconds) * 1_000_000_000 + UInt64(d.components.attoseconds / 1_000_000_000)
    }
}

/// `observer.Observer`: the flow log with Cilium's local-observer semantics.
struct ObserverService: Observer_Observer.SimpleServiceProtocol {
    let environment: ProxyEnvironment
    let node: HubbleNode
    let followers: Followers
    let peers: PeerDirectory
    /// A follower's queue: beyond this many flows waiting, new flows are dropped for it and
    /// reported to it as lost events (OBSERVER_EVENTS_QUEUE).
    static let followerQueueLimit = 16_384
    /// The largest GetFlows request evaluated (filters are compiled per request).
    static let maxRequestBytes = 1 << 20

    /// Served by `ObserverRoutes` with responses encoded by `FlowWire`; this is the same stream
    /// decoded, for a caller of the generated protocol.
    func getFlows(request: Observer_GetFlowsRequest, response: RPCWriter<Observer_GetFlowsResponse>,
                  context: ServerContext) async throws {
        try await streamFlows(request: request) { batch in
            try await response.write(contentsOf: try batch.map { try Observer_GetFlowsResponse(serializedBytes: $0.bytes) })
        }
    }

    /// GetFlows: stored flows as the request selects them, then (following) every new one, each
    /// response already in protobuf's wire format.
    func streamFlows(request: Observer_GetFlowsRequest,
                     send: ([EncodedFlowsResponse]) async throws -> Void) async throws {
        let size = ((try? request.serializedBytes()) as [UInt8]?)?.count ?? 0
        if size > Self.maxRequestBytes {
            throw RPCError(code: .resourceExhausted,
                           message: "GetFlowsRequest is \(size) bytes (\(request.whitelist.count) whitelist, \(request.blacklist.count) blacklist filters); Loupe evaluates requests up to \(Self.maxRequestBytes) bytes")
        }
        let selection = try HistorySelection(number: request.number, first: request.first, follow: request.follow,
                                             since: request.hasSince ? request.since : nil,
                                             until: request.hasUntil ? request.until : nil)
        if request.hasExtensions {
            throw RPCError(code: .invalidArgument, message: "GetFlowsRequest.extensions: not supported by Loupe")
        }
        if !request.unknownFields.data.isEmpty {
            throw RPCError(code: .invalidArgument, message: "GetFlowsRequest sets a field this Loupe build does not know")
        }
        let filters: FlowFilterSet
        do {
            filters = try FlowFilterSet(whitelist: request.whitelist, blacklist: request.blacklist)
        } catch let invalid as FlowFilterMatcher.Invalid {
            throw RPCError(code: .invalidArgument, message: invalid.description)
        }
        let mask: Google_Protobuf_FieldMask? = request.hasFieldMask && !request.fieldMask.paths.isEmpty ? request.fieldMask : nil
        if let mask, !mask.isValid(for: Flow_Flow.self) {
            throw RPCError(code: .invalidArgument, message: "GetFlowsRequest.field_mask: \(mask.paths.joined(separator: ",")) names no field of flow.Flow")
        }
        let nodeName = node.name
        func message(_ record: FlowRecord) -> (EncodedFlowsResponse, Google_Protobuf_Timestamp)? {
            let parsed = record.flow.timestamp
            let time = parsed.map { Google_Protobuf_Timestamp(seconds: Int64($0.seconds), nanos: Int32($0.nanoseconds)) }
                ?? Google_Protobuf_Timestamp()
            // Hubble's filters and field masks read the message; a flow they leave whole is
            // written as it is stored.
            if !filters.isEmpty || mask != nil {
                var flow = Flow_Flow(record.flow)
                guard filters.matches(flow) else { return nil }
                if let mask {
                    flow.trim(keeping: mask)
                    var r = Observer_GetFlowsResponse()
                    r.flow = flow
                    r.nodeName = nodeName
                    r.time = time
                    return (EncodedFlowsResponse(r), time)
                }
            }
            return (EncodedFlowsResponse(bytes: FlowWire.getFlowsResponse(record, time: parsed, nodeName: nodeName)), time)
        }
        let store = environment.flows
        guard request.follow else {
            try await send(selection.select(store.records(), message))
            return
        }

        // Follow: the backlog and the live stream are taken atomically, so no flow falls between.
        let queue = FollowerQueue<FlowRecord>(limit: Self.followerQueueLimit)
        let (subscription, backlog) = store.subscribeAfterRecords { record in
            if !queue.push(record) { store.countLost(source: "observer") }
        }
        let follower = followers.add { queue.finish() }
        defer {
            store.unsubscribe(subscription)
            followers.remove(follower)
            queue.finish()
        }
        try await send(selection.select(backlog, message))
        try await withRPCCancellationHandler {
            var signals = queue.signals.makeAsyncIterator()
            while true {
                let (records, lost) = queue.take()
                if records.isEmpty && lost == 0 {
                    guard await signals.next() != nil else { return }
                    continue
                }
                var batch: [EncodedFlowsResponse] = []
                batch.reserveCapacity(records.count)
                for record in records {
                    guard let (r, time) = message(record) else { continue }
                    if selection.pastUntil(time) {
                        try await send(batch)
                        return
                    }
                    if selection.inWindow(time) { batch.append(r) }
                }
                try await send(batch)
                // Said in the stream where it happened: flows are dropped only while the queue
                // is full, so every flow of this batch came before the loss.
                if lost > 0 { try await send([EncodedFlowsResponse(lostEvents(lost))]) }
            }
        } onCancelRPC: {
            queue.finish()
        }
    }

    private func lostEvents(_ n: UInt64) -> Observer_GetFlowsResponse {
        var r = Observer_GetFlowsResponse()
        r.lostEvents = .with {
            $0.source = .observerEventsQueue
            $0.numEventsLost = n
        }
        r.nodeName = node.name
        r.time = Google_Protobuf_Timestamp(date: Date())
        return r
    }

    func getAgentEvents(request: Observer_GetAgentEventsRequest, response: RPCWriter<Observer_GetAgentEventsResponse>,
                        context: ServerContext) async throws {
        let selection = try HistorySelection(number: request.number, first: request.first, follow: request.follow,
                                             since: request.hasSince ? request.since : nil,
                                             until: request.hasUntil ? request.until : nil)
        let nodeName = node.name
        func message(_ e: AgentEventRecord) -> (Observer_GetAgentEventsResponse, Google_Protobuf_Timestamp)? {
            let time = Google_Protobuf_Timestamp(seconds: Int64(e.seconds), nanos: Int32(e.nanoseconds))
            var r = Observer_GetAgentEventsResponse()
            r.agentEvent = Flow_AgentEvent(e)
            r.nodeName = nodeName
            r.time = time
            return (r, time)
        }
        let log = environment.agentEvents
        guard request.follow else {
            try await response.write(contentsOf: selection.select(log.events, message))
            return
        }
        let (stream, continuation) = AsyncStream<AgentEventRecord>.makeStream()
        let (subscription, backlog) = log.subscribe { continuation.yield($0) }
        let follower = followers.add { continuation.finish() }
        defer {
            log.unsubscribe(subscription)
            followers.remove(follower)
            continuation.finish()
        }
        try await response.write(contentsOf: selection.select(backlog, message))
        try await withRPCCancellationHandler {
            for await e in stream {
                guard let (r, time) = message(e) else { continue }
                if selection.pastUntil(time) { return }
                if selection.inWindow(time) { try await response.write(r) }
            }
        } onCancelRPC: {
            continuation.finish()
        }
    }

    /// Loupe's datapath reports outcomes as counters (`loupe status`), not debug events: the
    /// stream is empty, and a follower waits until it hangs up.
    func getDebugEvents(request: Observer_GetDebugEventsRequest, response: RPCWriter<Observer_GetDebugEventsResponse>,
                        context: ServerContext) async throws {
        _ = try HistorySelection(number: request.number, first: request.first, follow: request.follow,
                                 since: request.hasSince ? request.since : nil, until: request.hasUntil ? request.until : nil)
        if request.follow { await waitUntilEnded(followers) }
    }

    /// This node with its flow counts, then the other nodes of the cluster (`PeerDirectory`):
    /// CONNECTED when their Hubble API answered the last probe, UNAVAILABLE when it did not,
    /// UNKNOWN before the first probe.
    func getNodes(request: Observer_GetNodesRequest, context: ServerContext) async throws -> Observer_GetNodesResponse {
        let store = environment.flows
        let others: [Observer_Node] = peers.reachability.filter { $0.peer.name != node.name }.map { peer, answering in
            .with { n in
                n.name = peer.name
                n.address = peer.address
                n.state = answering.map { $0 ? .nodeConnected : .nodeUnavailable } ?? .unknownNodeState
                n.tls = .with {
                    $0.enabled = peer.tlsServerName != nil
                    $0.serverName = peer.tlsServerName ?? ""
                }
            }
        }
        return .with {
            $0.nodes = [.with { n in
                n.name = node.name
                n.version = node.version
                n.address = node.address
                n.state = .nodeConnected
                n.tls = .with {
                    $0.enabled = node.tlsServerName != nil
                    $0.serverName = node.tlsServerName ?? ""
                }
                n.uptimeNs = node.uptimeNanoseconds
                n.seenFlows = store.totalFlows
                n.maxFlows = UInt64(store.capacity)
                n.numFlows = min(n.seenFlows, n.maxFlows)
            }] + others
        }
    }

    /// Namespaces of the flows of the last hour.
    func getNamespaces(request: Observer_GetNamespacesRequest, context: ServerContext) async throws -> Observer_GetNamespacesResponse {
        let cutoff = Int(Date().timeIntervalSince1970) - 3600
        var names = Set<String>()
        for r in environment.flows.records() {
            guard let t = r.flow.timestamp, t.seconds >= cutoff else { continue }
            for ns in [r.flow.source.namespace, r.flow.destination.namespace] { if let ns, !ns.isEmpty { names.insert(ns) } }
        }
        return .with { $0.namespaces = names.sorted().map { ns in .with { $0.namespace = ns } } }
    }

    func serverStatus(request: Observer_ServerStatusRequest, context: ServerContext) async throws -> Observer_ServerStatusResponse {
        let store = environment.flows
        return .with {
            $0.seenFlows = store.totalFlows
            $0.maxFlows = UInt64(store.capacity)
            $0.numFlows = min($0.seenFlows, $0.maxFlows)
            $0.uptimeNs = node.uptimeNanoseconds
            $0.version = node.version
            $0.flowsRate = store.flowsRate
            $0.numConnectedNodes = .init(1)
            $0.numUnavailableNodes = .init(0)
        }
    }
}

extension Flow_AgentEvent {
    init(_ e: AgentEventRecord) {
        self.init()
        switch e.kind {
        case .agentStarted:
            type = .agentStarted
            agentStart = .with { $0.time = .init(seconds: Int64(e.seconds), nanos: Int32(e.nanoseconds)) }
        case .policyUpdated(let labels, let revision, let ruleCount):
            type = .policyUpdated
            policyUpdate = .with {
                $0.labels = labels
                $0.revision = revision
                $0.ruleCount = Int64(ruleCount)
            }
        case .endpointCreated(let ep), .endpointDeleted(let ep):
            if case .endpointCreated = e.kind { type = .endpointCreated } else { type = .endpointDeleted }
            endpointUpdate = .with {
                $0.id = ep.id
                $0.labels = ep.labels
                $0.podName = ep.podName
                $0.namespace = ep.namespace
            }
        }
    }
}

/// A GetFlowsResponse already in protobuf's wire format, sent as it is.
struct EncodedFlowsResponse: Sendable {
    var bytes: [UInt8]
    init(bytes: [UInt8]) { self.bytes = bytes }
    /// A message SwiftProtobuf encodes (lost events, masked flows); it cannot fail for a
    /// message built in memory, whose fields are all set.
    init(_ message: Observer_GetFlowsResponse) {
        bytes = (try? message.serializedBytes()) ?? []
    }

    struct Serializer: MessageSerializer {
        func serialize<Bytes: GRPCContiguousBytes>(_ message: EncodedFlowsResponse) throws -> Bytes { Bytes(message.bytes) }
    }
}

/// The Observer service as the server registers it: the generated routes, with GetFlows
/// answering in `EncodedFlowsResponse`s (its stream is every flow the node records).
struct ObserverRoutes: RegistrableRPCService {
    let service: ObserverService

    func registerMethods<Transport: ServerTransport>(with router: inout RPCRouter<Transport>) {
        service.registerMethods(with: &router)
        router.registerHandler(forMethod: Observer_Observer.Method.GetFlows.descriptor,
                               deserializer: ProtobufDeserializer<Observer_GetFlowsRequest>(),
                               serializer: EncodedFlowsResponse.Serializer()) { [service] request, _ in
            let single = try await ServerRequest(stream: request)
            return StreamingServerResponse(metadata: [:]) { writer in
                try await service.streamFlows(request: single.message) { try await writer.write(contentsOf: $0) }
                return [:]
            }
        }
    }
}
