import GRPCCore
import LoupeAPI
import LoupeBPF
import LoupeProxy

/// `peer.Peer`: the nodes Hubble Relay should dial (`PeerDirectory`): every one as PEER_ADDED,
/// then the changes until the client hangs up or the agent shuts down.
struct PeerService: Peer_Peer.SimpleServiceProtocol {
    let directory: PeerDirectory
    let followers: Followers

    func notify(request: Peer_NotifyRequest, response: RPCWriter<Peer_ChangeNotification>, context: ServerContext) async throws {
        let (id, peers, changes) = directory.subscribe()
        let end = followers.add { directory.cancel(id) }
        defer {
            followers.remove(end)
            directory.cancel(id)
        }
        for peer in peers { try await response.write(PeerDirectory.notification(peer, .peerAdded)) }
        try await withRPCCancellationHandler {
            for await change in changes { try await response.write(change) }
        } onCancelRPC: {
            directory.cancel(id)
        }
    }
}

/// `grpc.health.v1.Health`: SERVING for the server as a whole ("") and each service it serves
/// (`hubble status` asks for `hubble.server.Observer`; Kubernetes gRPC probes for "").
struct HealthService: Grpc_Health_V1_Health.SimpleServiceProtocol {
    let followers: Followers
    static let services = ["", "hubble.server.Observer", "observer.Observer", "peer.Peer", "loupe.v1.Agent", "grpc.health.v1.Health"]

    func check(request: Grpc_Health_V1_HealthCheckRequest, context: ServerContext) async throws -> Grpc_Health_V1_HealthCheckResponse {
        guard Self.services.contains(request.service) else {
            throw RPCError(code: .notFound, message: "unknown service \"\(request.service)\"")
        }
        return .with { $0.status = .serving }
    }

    func list(request: Grpc_Health_V1_HealthListRequest, context: ServerContext) async throws -> Grpc_Health_V1_HealthListResponse {
        .with { r in for s in Self.services { r.statuses[s] = .with { $0.status = .serving } } }
    }

    func watch(request: Grpc_Health_V1_HealthCheckRequest, response: RPCWriter<Grpc_Health_V1_HealthCheckResponse>,
               context: ServerContext) async throws {
        try await response.write(.with { $0.status = Self.services.contains(request.service) ? .serving : .serviceUnknown })
        await waitUntilEnded(followers)
    }
}

/// `loupe.v1.Agent`: what `loupe status` prints — datapath, proxy and splice counters Hubble
/// has no RPC for, and the flow log's fill and losses.
struct AgentStatusService: Loupe_V1_Agent.SimpleServiceProtocol {
    let environment: ProxyEnvironment
    let node: HubbleNode
    let readings: AgentReadings

    func status(request: Loupe_V1_StatusRequest, context: ServerContext) async throws -> Loupe_V1_StatusResponse {
        let store = environment.flows
        return .with {
            $0.nodeName = node.name
            $0.version = node.version
            $0.uptimeNs = node.uptimeNanoseconds
            for (k, v) in readings.datapathCounters() { $0.datapath[k.name] = v }
            $0.source = readings.source
            $0.endpoints = readings.endpoints().map { e in
                .with {
                    $0.pod = e.pod
                    $0.interface = e.interface ?? ""
                    $0.shape = e.shape
                    $0.problem = e.problem ?? ""
                }
            }
            for (resource, s) in readings.kubernetes() {
                $0.kubernetes[resource] = .with {
                    $0.synced = s.synced
                    $0.absent = s.absent
                    $0.objects = UInt64(s.objects)
                    $0.resourceVersion = s.resourceVersion
                    $0.watchErrors = s.watchErrors
                    $0.relists = s.relists
                    $0.lastError = s.lastError
                }
            }
            $0.rejectedPolicies = readings.rejectedPolicies()
            $0.proxy = environment.counterValues.filter { !$0.key.hasPrefix("splice_") }
            $0.splice = environment.spliceStatus
            $0.flows = .with {
                $0.total = store.totalFlows
                $0.capacity = UInt64(store.capacity)
                $0.subscribers = UInt64(store.subscriberCount)
            }
            $0.lostEvents = store.lostEvents
        }
    }
}
