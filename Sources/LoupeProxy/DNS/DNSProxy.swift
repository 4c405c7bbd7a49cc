import Glibc
import Logging
import LoupeFlow
import LoupePolicy
import LoupeProtocols
import NIOCore
import Synchronization

/// The transparent DNS proxy over UDP. The tc program assigns a selected pod's datagrams to
/// this socket; each query is parsed, recorded, and forwarded — under an id of the proxy's, on
/// one marked socket per resolver — to the resolver the pod asked (the datagram's original
/// destination); the answer goes back with the pod's id restored, otherwise unchanged, from
/// that resolver's own address and port, so the pod sees an ordinary exchange. An answer whose
/// question differs from the query's is dropped and counted (spoofing, or a confused resolver).
/// Many queries are in flight at once; one without an answer within the timeout gets
/// SERVFAIL and an ERROR flow. A malformed query gets FORMERR (or, shorter than a header, is
/// dropped) and an ERROR flow naming what was wrong.
///
/// One thread with poll(2): datagram I/O with ancillary data is outside NIO's API. Datagrams
/// come in and go out in batches (recvmmsg/sendmmsg: ~10 per call under load, where a call per
/// datagram spent as much CPU as the parsing and recording).
/// `@unchecked Sendable`: its sockets and in-flight queries belong to that thread; `start` and
/// `stop` only set them up before it runs and join it before tearing them down.
public final class DNSProxy: @unchecked Sendable {
    private let environment: ProxyEnvironment
    private let logger: Logger
    private var listeners: [Int32] = []
    private var wake: [Int32] = [-1, -1]
    private var thread: pthread_t?

    /// One query waiting for its answer (touched only by the proxy thread).
    struct Pending {
        var peer: Peer
        var client: SocketAddress
        var query: DNSMessage
        var started: UInt64
        var deadline: UInt64
    }
    /// A query in flight: the resolver's socket and the id the proxy gave it there.
    struct Key: Hashable {
        var fd: Int32
        var id: UInt16
    }
    private var pending: [Key: Pending] = [:]
    /// Deadlines in the order they were set (all queries share one timeout, so this is sorted).
    private var deadlines: [(deadline: UInt64, key: Key)] = []
    private var deadlineHead = 0
    /// One connected, marked socket per resolver, and the next id to use on it.
    private var upstreams: [SocketAddress: Int32] = [:]
    private var resolverOf: [Int32: SocketAddress] = [:]
    private var nextID: [Int32: UInt16] = [:]
    /// Set when a resolver's socket is opened or closed: the poll set is built again.
    private var pollSetChanged = true
    /// Queries in flight at once; beyond this a query gets SERVFAIL at once (counted).
    static let maxInFlight = 8192
    private var replySockets: [SocketAddress: Int32] = [:]
    /// What the batch being handled sends (touched only by the proxy thread, made there).
    private var outbox: UDPSockets.Outbox!
    /// The batch's flows, recorded once it is sent (the proxy thread's, made there).
    private var pendingFlows: PendingFlows?

    public init(environment: ProxyEnvironment, logger: Logger) {
        self.environment = environment
        self.logger = logger
    }

    public func start() throws {
        let port = UInt16(environment.configuration.dnsPort)
        listeners.append(try UDPSockets.listener(v6: false, port: port))
        do { listeners.append(try UDPSockets.listener(v6: true, port: port)) } catch {
            logger.warning("IPv6 DNS socket not bound: \(error)")
        }
        guard pipe(&wake) == 0 else { throw UDPSockets.Failure(what: "pipe", code: errno) }
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            let me = Unmanaged<DNSProxy>.fromOpaque(arg!).takeRetainedValue()
            me.loop()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw UDPSockets.Failure(what: "pthread_create", code: rc)
        }
        thread = t
        logger.info("transparent DNS socket on 0.0.0.0:\(port) and [::]:\(port)")
    }

    public func stop() {
        guard let thread else { return }
        var b: UInt8 = 1
        _ = write(wake[1], &b, 1)
        pthread_join(thread, nil)
        self.thread = nil
        for fd in listeners + Array(upstreams.values) + Array(replySockets.values) + wake where fd >= 0 { close(fd) }
        listeners = []
        pending = [:]
        upstreams = [:]
        resolverOf = [:]
        replySockets = [:]
    }

    private func loop() {
        let receiver = UDPSockets.Receiver()
        outbox = UDPSockets.Outbox()
        // A batch's flows go to the store once its datagrams are sent (`flush`).
        pendingFlows = PendingFlows.installOnThisThread()
        defer { pendingFlows?.drain() }
        var fds: [pollfd] = []
        while true {
            if pollSetChanged {
                fds = ([wake[0]] + listeners + Array(upstreams.values)).map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
                pollSetChanged = false
            }
            for i in fds.indices { fds[i].revents = 0 }
            let now = monotonicNanos()
            let nextDeadline = deadlineHead < deadlines.count ? deadlines[deadlineHead].deadline : nil
            let timeout = nextDeadline.map { Int32(clamping: ($0 > now ? $0 - now : 0) / 1_000_000 + 1) } ?? -1
            let n = poll(&fds, nfds_t(fds.count), timeout)
            if n < 0 && errno != EINTR { logger.error("dns poll: \(String(cString: strerror(errno)))") }
            if fds[0].revents != 0 { return }
            for i in fds.indices.dropFirst() where fds[i].revents != 0 {
                if i <= listeners.count { queries(fds[i].fd, receiver: receiver) } else { answers(fds[i].fd, receiver: receiver) }
            }
            expire(now: monotonicNanos())
            flush()
        }
    }

    /// Every query queued on a listening socket, a batch at a time; each batch's forwarded
    /// queries (and any answers of the proxy's own) sent before the next is read.
    private func queries(_ fd: Int32, receiver: UDPSockets.Receiver) {
        while true {
            let n = receiver.receive(fd)
            for i in 0..<max(n, 0) {
                guard let client = receiver.sender(i) else { continue }
                query(Array(receiver.bytes(i)), from: client, to: receiver.originalDestination(i))
            }
            flush()
            if n < UDPSockets.Receiver.batch { return }
        }
    }

    /// What a query needs of its (client, resolver) pair: the flow context and the policy
    /// decision. Kept per pair for one inventory/policy generation (a pod asks the same resolver
    /// over and over; both cost lookups and selector matching otherwise, per query). A class:
    /// a query in flight holds it by reference, not a copy of its context.
    final class Peer {
        let resolver: SocketAddress
        /// The flow context with the client's port 0: `context(for:)` gives a query's.
        private let context: ConnectionContext
        let decision: PolicyEngine.ConnectionDecision

        init(resolver: SocketAddress, context: ConnectionContext, decision: PolicyEngine.ConnectionDecision) {
            self.resolver = resolver
            self.context = context
            self.decision = decision
        }

        /// The flow context of a query from CLIENT (its port is the query's own).
        func context(for client: SocketAddress) -> ConnectionContext {
            var c = context
            c.clientPort = Int(client.udpPort)
            return c
        }
    }
    private struct PeerKey: Hashable {
        var client: SocketAddress.AddressKey
        var resolver: SocketAddress
    }
    private var peers: [PeerKey: Peer] = [:]
    private var peersGeneration = UInt64.max
    static let maxPeers = 4096

    private func peer(client: SocketAddress, resolver: SocketAddress) -> Peer {
        let generation = environment.generation
        if generation != peersGeneration {
            peers.removeAll()
            peersGeneration = generation
        }
        let key = PeerKey(client: client.addressKey, resolver: resolver)
        if let known = peers[key] { return known }
        let clientIP = client.ip
        let snap = environment.snapshot
        let resolverIP = resolver.ip
        let p = Peer(resolver: resolver,
                     context: ConnectionContext(clientIP: clientIP, clientPort: 0, serverIP: resolverIP,
                                                serverPort: Int(resolver.udpPort), snapshot: snap,
                                                nodeName: environment.configuration.nodeName, udp: true),
                     decision: snap.policy.decide(client: snap.pod(withIP: clientIP), server: snap.pod(withIP: resolverIP),
                                                  port: resolver.udpPort, tcp: false))
        if peers.count >= Self.maxPeers { peers.removeAll() }
        peers[key] = p
        return p
    }

    private func query(_ bytes: [UInt8], from client: SocketAddress, to resolver: SocketAddress?) {
        environment.count(.dnsQueries)
        guard let resolver else {
            environment.count(.dnsNoOriginalDestination)
            return
        }
        let peer = peer(client: client, resolver: resolver)
        let c = peer.context(for: client)
        let q: DNSMessage
        switch DNSMessage.parse(bytes) {
        case .success(let m) where !m.isResponse && !m.questions.isEmpty:
            q = m
        case .success:
            reject(bytes, client: client, resolver: resolver, context: c, reason: "not a query with a question")
            return
        case .failure(let e):
            reject(bytes, client: client, resolver: resolver, context: c, reason: e.description)
            return
        }
        // Policy: a query the DNS rules do not allow (or from a peer not allowed at all) is
        // answered REFUSED by the proxy and never reaches the resolver.
        let decision = peer.decision
        if decision.isEnforced, !decision.allows(dnsQuery: q.questions[0].name) {
            environment.count(.dnsQueriesPolicyDenied)
            environment.record(DNSFlows.request(q, context: c, verdict: .dropped, dropReason: .policyDenied))
            let refused = DNSMessage.reply(to: q, rcode: .refused)
            reply(refused.serialize(), to: client, from: resolver)
            environment.record(DNSFlows.response(refused, query: q, latencyNanos: 0, context: c, verdict: .dropped, dropReason: .policyDenied))
            return
        }
        environment.record(DNSFlows.request(q, context: c))
        guard pending.count < Self.maxInFlight else {
            // Bounded: each query in flight holds a socket.
            environment.count(.dnsInflightLimit)
            fail(q, client: client, resolver: resolver, context: c, started: monotonicNanos(),
                 note: "(\(Self.maxInFlight) queries already in flight)")
            return
        }
        do {
            let fd = try upstream(for: resolver)
            let id = freshID(on: fd)
            let now = monotonicNanos()
            let key = Key(fd: fd, id: id)
            let deadline = now + UInt64(environment.configuration.dnsTimeoutMilliseconds) * 1_000_000
            pending[key] = Pending(peer: peer, client: client, query: q, started: now, deadline: deadline)
            deadlines.append((deadline, key))
            send(fd, bytes, id: id, tag: Int(id)) // in flight first: a failed send finds it (`sendFailed`)
        } catch {
            environment.count(.dnsUpstreamErrors)
            fail(q, client: client, resolver: resolver, context: c, started: monotonicNanos(), note: "(upstream \(resolver.endpoint): \(error))")
        }
    }

    /// FORMERR for a malformed query that still has a header; shorter input is dropped. Both counted.
    private func reject(_ bytes: [UInt8], client: SocketAddress, resolver: SocketAddress, context c: ConnectionContext, reason: String) {
        environment.count(.dnsMalformedQueries)
        let summary: String
        if bytes.count >= 12 {
            reply(DNSMessage.formatError(replyingTo: bytes).serialize(), to: client, from: resolver)
            summary = "DNS malformed query answered FORMERR: \(reason)"
        } else {
            summary = "DNS malformed query dropped: \(reason)"
        }
        environment.record(c.flow(verdict: .error, type: .l7, l7: Layer7(type: .request, latencyNs: 0, dns: DNS(query: "", qtypes: [])),
                                  reply: false, summary: summary, udp: true))
    }

    private func upstream(for resolver: SocketAddress) throws -> Int32 {
        if let fd = upstreams[resolver] { return fd }
        let fd = try UDPSockets.upstream(to: resolver, mark: environment.configuration.upstreamMark)
        upstreams[resolver] = fd
        resolverOf[fd] = resolver
        pollSetChanged = true
        nextID[fd] = UInt16.random(in: 0...UInt16.max)
        return fd
    }

    private func dropUpstream(_ fd: Int32) {
        if let r = resolverOf.removeValue(forKey: fd) { upstreams.removeValue(forKey: r) }
        nextID.removeValue(forKey: fd)
        pollSetChanged = true
        close(fd)
        // Queries still pending on it time out into SERVFAIL.
    }

    /// An id not in flight on this resolver's socket.
    private func freshID(on fd: Int32) -> UInt16 {
        var id = nextID[fd, default: 0]
        while pending[Key(fd: fd, id: id)] != nil { id &+= 1 }
        nextID[fd] = id &+ 1
        return id
    }

    /// Every answer queued on a resolver's socket, a batch at a time.
    private func answers(_ fd: Int32, receiver: UDPSockets.Receiver) {
        while true {
            let n = receiver.receive(fd)
            if n < 0 {
                environment.count(.dnsUpstreamErrors) // ECONNREFUSED and the like: waiting queries time out
                return
            }
            for i in 0..<n {
                let bytes = receiver.bytes(i)
                guard bytes.count >= 12 else {
                    environment.count(.dnsMalformedAnswers)
                    continue
                }
                answer(Array(bytes), fd: fd)
            }
            flush()
            if n < UDPSockets.Receiver.batch { return }
        }
    }

    private func answer(_ raw: [UInt8], fd: Int32) {
        let key = Key(fd: fd, id: UInt16(raw[0]) << 8 | UInt16(raw[1]))
        guard let p = pending.removeValue(forKey: key) else {
            environment.count(.dnsUnmatchedAnswers) // late (after SERVFAIL) or unsolicited
            return
        }
        let parsed = DNSMessage.parse(raw)
        if case .success(let r) = parsed, r.questions != p.query.questions {
            environment.count(.dnsMismatchedAnswers)
            pending[key] = p // still waiting for its own answer
            return
        }
        // The answer goes back as the resolver sent it, with the pod's id (truncated answers included).
        reply(raw, id: p.query.id, to: p.client, from: p.peer.resolver)
        let latency = monotonicNanos() &- p.started
        let context = p.peer.context(for: p.client)
        switch parsed {
        case .success(var r):
            r.id = p.query.id
            let flow = DNSFlows.response(r, query: p.query, latencyNanos: latency, context: context)
            // The flow's addresses are the answer's, already written as text.
            learn(r, query: p.query, addresses: flow.l7?.dns?.ips ?? [], client: context.clientIP)
            environment.record(flow)
        case .failure(let e):
            environment.count(.dnsMalformedAnswers)
            environment.record(context.flow(verdict: .error, type: .l7,
                                              l7: Layer7(type: .response, latencyNs: latency, dns: DNS(query: p.query.questions.first?.name ?? ".", qtypes: [])),
                                              reply: true, summary: "DNS malformed answer relayed unchanged: \(e)", udp: true))
        }
    }

    /// Addresses in the answer, remembered with the names that led to them (query, CNAMEs).
    private func learn(_ r: DNSMessage, query: DNSMessage, addresses: [String], client: String) {
        guard r.rcode == .noError, !addresses.isEmpty, let q = query.questions.first?.name else { return }
        var names: [String]
        if let known = learnedNames[q] {
            names = known
        } else {
            names = [Self.trimDot(q)]
            if learnedNames.count >= 1024 { learnedNames.removeAll() }
            learnedNames[q] = names
        }
        for rec in r.answers { if case .cname(let t) = rec.data { names.append(Self.trimDot(t)) } }
        let ttl = r.addressTTL ?? 0
        environment.fqdn.learn(client: client, names: names, addresses: addresses, ttl: ttl)
    }

    /// Query names as the FQDN cache keeps them (no trailing dot), per name asked: a pod asks
    /// the same names over and over, and trimming made a String and an array per answer.
    private var learnedNames: [String: [String]] = [:]

    /// Hubble's destination_names carry no trailing dot.
    static func trimDot(_ n: String) -> String { n.utf8.count > 1 && n.utf8.last == UInt8(ascii: ".") ? String(n.dropLast()) : n }

    private func expire(now: UInt64) {
        while deadlineHead < deadlines.count, deadlines[deadlineHead].deadline <= now {
            let key = deadlines[deadlineHead].key
            deadlineHead += 1
            guard let p = pending.removeValue(forKey: key) else { continue } // answered already
            environment.count(.dnsUpstreamTimeouts)
            fail(p.query, client: p.client, resolver: p.peer.resolver, context: p.peer.context(for: p.client), started: p.started,
                 note: "(upstream \(p.peer.resolver) did not answer within \(environment.configuration.dnsTimeoutMilliseconds) ms)")
        }
        if deadlineHead > 4096 && deadlineHead * 2 > deadlines.count {
            deadlines.removeFirst(deadlineHead)
            deadlineHead = 0
        }
    }

    /// SERVFAIL to the client and an ERROR flow.
    private func fail(_ q: DNSMessage, client: SocketAddress, resolver: SocketAddress, context c: ConnectionContext, started: UInt64, note: String) {
        let servFail = DNSMessage.reply(to: q, rcode: .servFail)
        reply(servFail.serialize(), to: client, from: resolver)
        environment.record(DNSFlows.response(servFail, query: q, latencyNanos: monotonicNanos() &- started, context: c,
                                             verdict: .error, note: note))
    }

    /// BYTES to CLIENT from RESOLVER's address (with ID as the message's id when given).
    private func reply(_ bytes: [UInt8], id: UInt16? = nil, to client: SocketAddress, from resolver: SocketAddress) {
        var fd = replySockets[resolver] ?? -1
        if fd < 0 {
            if replySockets.count >= 256 {
                flush() // what is queued for them goes first
                for s in replySockets.values { close(s) }
                replySockets.removeAll()
            }
            do {
                fd = try UDPSockets.replySocket(from: resolver)
                replySockets[resolver] = fd
            } catch {
                environment.count(.dnsReplyErrors)
                logger.error("dns: cannot answer from \(resolver.endpoint): \(error)")
                return
            }
        }
        send(fd, bytes, id: id, to: client, tag: -1)
    }

    /// Queued in the outbox (sent by `flush`, with the batch). TAG: the proxy's id of a query
    /// forwarded to a resolver, -1 for an answer to a pod.
    private func send(_ fd: Int32, _ bytes: [UInt8], id: UInt16?, to address: SocketAddress? = nil, tag: Int) {
        if outbox.add(fd, bytes, id: id, to: address, tag: tag) { return }
        flush()
        if !outbox.add(fd, bytes, id: id, to: address, tag: tag) { // larger than the whole arena: not a datagram
            if tag < 0 { environment.count(.dnsReplyErrors) } else { sendFailed(fd: fd, id: UInt16(tag), code: EMSGSIZE) }
        }
    }

    /// Sends what the outbox holds. A query that could not be sent to its resolver gets
    /// SERVFAIL (queued in turn, so this goes round until nothing is left), an answer that
    /// could not be sent to its pod is counted.
    private func flush() {
        while !outbox.isEmpty {
            for f in outbox.flush() {
                if f.tag < 0 { environment.count(.dnsReplyErrors) } else { sendFailed(fd: f.fd, id: UInt16(f.tag), code: f.code) }
            }
        }
        pendingFlows?.drain()
    }

    private func sendFailed(fd: Int32, id: UInt16, code: Int32) {
        environment.count(.dnsUpstreamErrors)
        // e.g. ECONNREFUSED left by an earlier ICMP error: start afresh next time
        if resolverOf[fd] != nil { dropUpstream(fd) }
        guard let p = pending.removeValue(forKey: Key(fd: fd, id: id)) else { return }
        let resolver = p.peer.resolver.endpoint
        fail(p.query, client: p.client, resolver: p.peer.resolver, context: p.peer.context(for: p.client), started: p.started,
             note: "(upstream \(resolver): send to \(resolver): \(String(cString: strerror(code))))")
    }
}
