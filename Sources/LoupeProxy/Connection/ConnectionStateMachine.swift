import LoupePolicy
import LoupeProtocols

/// The life of one proxied connection, with no I/O: `ProxyConnection` reports what happened
/// (accepted, upstream connected, first bytes detected, a handshake done, a FIN, a close) and
/// carries out the action returned. One `State` whose cases hold only what that step needs:
///
///   connecting → detecting → http1 | http2 | opaque(kind, splice phase)
///                          ↘ tlsHandshake → http1 | http2 | badGateway
///   http1 → opaque(tunnel)      any → closed
///
/// Opaque connections (raw TCP, TLS relayed after its hello, tunnels, DNS over TCP) carry a
/// splice phase: relayed in userspace, draining (reads stopped, the last read of each side
/// pending) or spliced into the kernel's sockmap.
struct ConnectionStateMachine: Sendable {
    enum Side: Hashable, Sendable {
        /// The pod's socket (accepted).
        case client
        /// Our socket to the original destination.
        case server

        var peer: Side { self == .client ? .server : .client }
    }

    /// What an opaque connection carries, for its closing flow.
    enum Opaque: Equatable, Sendable {
        case raw
        /// TLS relayed as it is, after its ClientHello ("" without SNI).
        case tls(serverName: String)
        /// What turned an HTTP/1 connection into a tunnel (`Upgrade: websocket`, `CONNECT`).
        case tunnel(opening: String)
        /// DNS over TCP: frames inspected in the relay, never spliced.
        case dns
    }

    enum SplicePhase: Equatable, Sendable {
        /// In the userspace relay (splicing off, declined, or the connection not eligible).
        case relaying
        /// Reads stopped; the last read of these sides (emptying their sockets) is still to come.
        case draining(reads: Set<Side>)
        /// The kernel carries the bytes.
        case spliced(SpliceState)
    }

    struct TLSHandshake: Equatable, Sendable {
        var serverName: String
        /// The destination failed verification: the pod still completes its handshake, to be told (502).
        var refused: String?
    }

    enum State: Equatable, Sendable {
        case connecting
        case detecting
        case tlsHandshake(TLSHandshake)
        case http1
        case http2
        case opaque(Opaque, SplicePhase)
        /// HTTPS interception of a refused destination: the pod gets its 502 on its own connection.
        case badGateway
        case closed
    }

    private(set) var state: State = .connecting
    /// A side sent FIN before a splice was decided: the connection finishes in userspace.
    private(set) var sawInputClosed = false
    /// Bytes relayed in userspace, per side they came from.
    private(set) var bytesFromClient: UInt64 = 0
    private(set) var bytesFromServer: UInt64 = 0
    private var finished = false

    init() {}

    // MARK: - Accept and connect

    enum AcceptAction: Equatable, Sendable {
        case connectUpstream
        /// Read the pod first; connect only when what it sent needs a socket of its own (an
        /// HTTPS port whose destination already has a shared HTTP/2 connection from here).
        case detectFirst
        /// L3/L4 deny: DROPPED flow, reset the pod's socket.
        case deny
    }

    /// `connectWhenNeeded`: the destination may not need a socket of this connection's own.
    mutating func accepted(deniesConnection: Bool, connectWhenNeeded: Bool = false) -> AcceptAction {
        guard !deniesConnection else {
            state = .closed
            return .deny
        }
        guard connectWhenNeeded else { return .connectUpstream }
        state = .detecting
        upstreamDeferred = true
        return .detectFirst
    }

    /// Accepted with `.detectFirst` and no socket to the destination made (yet).
    private(set) var upstreamDeferred = false

    enum ConnectedAction: Equatable, Sendable {
        /// Start reading the pod's socket: its first bytes decide the protocol.
        case startReading
        /// Connected later (`.detectFirst`): the step that needed the socket goes on.
        case resume
        /// The connection ended meanwhile: close the new socket.
        case closeUpstream
    }

    mutating func upstreamConnected() -> ConnectedAction {
        if upstreamDeferred && state != .closed {
            upstreamDeferred = false
            return .resume
        }
        guard state == .connecting else { return .closeUpstream }
        state = .detecting
        return .startReading
    }

    /// The destination could not be reached: true when this is news (ERROR flow), false when
    /// the connection had already ended. Either way the pod's socket is reset.
    mutating func upstreamConnectFailed() -> Bool {
        guard state == .connecting || (upstreamDeferred && state != .closed) else { return false }
        state = .closed
        return true
    }

    private var isTLSHandshake: Bool {
        if case .tlsHandshake = state { true } else { false }
    }

    // MARK: - Detection

    /// What the client's first bytes are (for TLS: with what its ClientHello says).
    enum Detected: Equatable, Sendable {
        case http1, http2, opaque
        case tls(TLSClientHello.Result)
    }

    /// What the policy and the configuration say about the connection once its protocol is known.
    struct Facts: Equatable, Sendable {
        /// The port carries DNS over TCP (its visibility rule says DNS, or DNS rules apply).
        var carriesDNS = false
        /// HTTP rules apply to the port: anything the proxy cannot read per request is refused.
        var requiresHTTP = false
        var interceptHTTP2 = true
        /// The visibility rule's protocol (`<…/TCP/HTTPS>`, `<…/TCP/TLS>`…).
        var visibility: VisibilityRule.L7?
        var splice = false
        /// HTTPS interception cannot run (no node CA): why. Only looked at for HTTPS ports.
        var interceptionUnavailable: String?
    }

    /// A flow to record on the way (they come before the action's own).
    enum Note: Equatable, Sendable {
        /// The ClientHello of a TLS connection (SNI, ALPN), or why it could not be read.
        case hello(TLSClientHello.Result)
        /// A TLS visibility port that carried something else.
        case notTLSOnTLSPort(firstBytes: String)
        /// HTTPS interception could not run: relayed with TLS visibility only.
        case tlsVisibilityOnly(String)
    }

    enum Install: Equatable, Sendable {
        case http1, http2
        /// The byte relay (DNS frames inspected in it); `splice`: hand it to the kernel once drained.
        case opaque(Opaque, splice: Bool)
    }

    enum DetectAction: Equatable, Sendable {
        case install(Install)
        /// A port with HTTP rules carries HTTP only: DROPPED flow with this summary, reset.
        case refuse(String)
        /// HTTPS interception: the destination's handshake first, offering these protocols.
        case interceptTLS(serverName: String, alpn: [String])
        /// Not detecting any more (decided already, or closed).
        case none
    }

    /// What detection decided: flows to record first, then the action.
    struct Detection: Equatable, Sendable {
        var notes: [Note]
        var action: DetectAction
    }

    mutating func detected(_ detected: Detected, facts: Facts) -> Detection {
        guard state == .detecting else { return Detection(notes: [], action: .none) }
        // A DNS port carries DNS over TCP, whatever its first bytes look like.
        let detected = facts.carriesDNS ? .opaque : detected
        var notes: [Note] = []
        var opaque = facts.carriesDNS ? Opaque.dns : .raw
        switch detected {
        case .http1:
            return intercept(.http1, named: "http1", opaque, facts)
        case .http2 where facts.interceptHTTP2:
            return intercept(.http2, named: "http2", opaque, facts)
        case .http2, .opaque:
            if facts.requiresHTTP { return refuse([], "TCP connection denied: not HTTP on a port with HTTP policy rules") }
            if facts.visibility == .tls { notes.append(.notTLSOnTLSPort(firstBytes: detected == .opaque ? "opaque" : "http2")) }
            return relay(notes: notes, opaque, facts)
        case .tls(let result):
            // Only an HTTPS port's TLS is intercepted (then HTTP rules apply per request).
            if facts.visibility != .https && facts.requiresHTTP {
                return refuse([], "TCP connection denied: not HTTP on a port with HTTP policy rules")
            }
            notes.append(.hello(result))
            guard case .hello(let hello) = result else {
                if facts.visibility == .https && facts.requiresHTTP {
                    // An unreadable hello cannot be intercepted; relayed, it would bypass the rules.
                    return refuse(notes, "TLS connection denied: its ClientHello cannot be intercepted and HTTP policy rules apply")
                }
                return relay(notes: notes, opaque, facts)
            }
            opaque = .tls(serverName: hello.serverName ?? "")
            guard facts.visibility == .https else { return relay(notes: notes, opaque, facts) }
            let why = hello.serverName == nil ? "HTTPS interception needs SNI" : facts.interceptionUnavailable
            if let why {
                if facts.requiresHTTP { return refuse(notes, "\(why): connection denied, HTTP policy rules apply to this port") }
                notes.append(.tlsVisibilityOnly("\(why): relayed with TLS visibility only"))
                return relay(notes: notes, opaque, facts)
            }
            let serverName = hello.serverName! // checked above
            state = .tlsHandshake(TLSHandshake(serverName: serverName))
            // Offer the destination what the pod offered (that the proxy speaks).
            let alpn = hello.alpn.filter { ($0 == "h2" && facts.interceptHTTP2) || $0 == "http/1.1" }
            return Detection(notes: notes, action: .interceptTLS(serverName: serverName, alpn: alpn))
        }
    }

    /// HTTP the proxy reads per request; on a TLS visibility port it is relayed as it is, and said so.
    private mutating func intercept(_ install: Install, named name: String, _ opaque: Opaque,
                                    _ facts: Facts) -> Detection {
        if facts.visibility == .tls { return relay(notes: [.notTLSOnTLSPort(firstBytes: name)], opaque, facts) }
        state = install == .http1 ? .http1 : .http2
        return Detection(notes: [], action: .install(install))
    }

    private mutating func refuse(_ notes: [Note], _ summary: String) -> Detection {
        state = .closed
        return Detection(notes: notes, action: .refuse(summary))
    }

    private mutating func relay(notes: [Note], _ opaque: Opaque, _ facts: Facts) -> Detection {
        let splice = facts.splice && opaque != .dns
        state = .opaque(opaque, splice ? .draining(reads: []) : .relaying)
        return Detection(notes: notes, action: .install(.opaque(opaque, splice: splice)))
    }

    // MARK: - HTTPS interception

    enum HandshakeResult: Equatable, Sendable {
        /// Done; the negotiated protocol (ALPN), if any.
        case success(String?)
        case failure(String)
    }

    enum UpstreamHandshakeAction: Equatable, Sendable {
        /// The pod's handshake with a minted leaf, offering the destination's protocol; or, for
        /// a refused destination (ERROR flow, upstream closed), offering nothing, to answer 502.
        case handshakeWithPod(serverName: String, offering: String?, refused: String?)
        case none
    }

    mutating func upstreamHandshakeDone(_ result: HandshakeResult) -> UpstreamHandshakeAction {
        guard case .tlsHandshake(var h) = state, h.refused == nil else { return .none }
        switch result {
        case .success(let proto):
            return .handshakeWithPod(serverName: h.serverName, offering: proto, refused: nil)
        case .failure(let reason):
            h.refused = reason
            state = .tlsHandshake(h)
            return .handshakeWithPod(serverName: h.serverName, offering: nil, refused: reason)
        }
    }

    enum PodHandshakeAction: Equatable, Sendable {
        case install(Install)
        /// The destination was refused: answer the pod's request with 502 and this reason.
        case badGateway(String)
        /// The pod's handshake failed (typically: it does not trust the node CA): ERROR flow, close.
        case fail(serverName: String, reason: String)
        case none
    }

    mutating func podHandshakeDone(_ result: HandshakeResult) -> PodHandshakeAction {
        guard case .tlsHandshake(let h) = state else { return .none }
        switch result {
        case .failure(let reason):
            state = .closed
            return .fail(serverName: h.serverName, reason: reason)
        case .success(let proto):
            if let refused = h.refused {
                state = .badGateway
                return .badGateway(refused)
            }
            state = proto == "h2" ? .http2 : .http1
            return .install(proto == "h2" ? .http2 : .http1)
        }
    }

    // MARK: - Tunnels

    /// The HTTP exchange opened a tunnel (101, CONNECT 2xx): both directions become opaque
    /// bytes. Returns the relay to install (nil: not an HTTP/1 connection any more).
    mutating func tunnelOpened(by opening: String, splice: Bool) -> Install? {
        guard state == .http1 else { return nil }
        let kind = Opaque.tunnel(opening: opening)
        state = .opaque(kind, splice ? .draining(reads: []) : .relaying)
        return .opaque(kind, splice: splice)
    }

    // MARK: - Relay and splice

    mutating func relayed(_ n: UInt64, from side: Side) {
        if side == .client { bytesFromClient += n } else { bytesFromServer += n }
    }

    /// Reads are held while the connection goes to the kernel (and for good once it is there).
    var holdsReads: Bool {
        guard case .opaque(_, let phase) = state else { return false }
        return phase != .relaying
    }

    /// The one last read that empties a side's socket before the splice.
    func drainReadPending(_ side: Side) -> Bool {
        guard case .opaque(_, .draining(let reads)) = state else { return false }
        return reads.contains(side)
    }

    var isDraining: Bool {
        guard case .opaque(_, .draining) = state else { return false }
        return true
    }

    var drainReadsDone: Bool {
        guard case .opaque(_, .draining(let reads)) = state else { return true }
        return reads.isEmpty
    }

    mutating func drainReadStarted(_ side: Side) {
        guard case .opaque(let kind, .draining(var reads)) = state else { return }
        reads.insert(side)
        state = .opaque(kind, .draining(reads: reads))
    }

    mutating func drainReadDone(_ side: Side) {
        guard case .opaque(let kind, .draining(var reads)) = state, reads.remove(side) != nil else { return }
        state = .opaque(kind, .draining(reads: reads))
    }

    /// Drain reads that did not come by the deadline are given up (out-of-order bytes only).
    mutating func drainReadsAbandoned() {
        guard case .opaque(let kind, .draining) = state else { return }
        state = .opaque(kind, .draining(reads: []))
    }

    enum SpliceAction: Equatable, Sendable {
        /// Put both sockets into the kernel's sockmap.
        case insert
        /// It stays in userspace: count why, resume reading.
        case fallback(SpliceFallback)
        /// No longer draining (closed meanwhile).
        case none
    }

    /// Drained: splice, unless a side already sent FIN (its half-close is under way here).
    mutating func drained() -> SpliceAction {
        guard case .opaque(let kind, .draining) = state else { return .none }
        if sawInputClosed {
            state = .opaque(kind, .relaying)
            return .fallback(.halfClosed)
        }
        return .insert
    }

    mutating func spliced(_ splice: SpliceState) {
        guard case .opaque(let kind, .draining) = state else { return }
        state = .opaque(kind, .spliced(splice))
    }

    /// The kernel did not take it (`drained()` said insert): back to the relay.
    mutating func spliceFailed() {
        guard case .opaque(let kind, .draining) = state else { return }
        state = .opaque(kind, .relaying)
    }

    var splice: SpliceState? {
        guard case .opaque(_, .spliced(let s)) = state else { return nil }
        return s
    }

    // MARK: - FIN and close

    enum InputClosedAction: Equatable, Sendable {
        /// Spliced: shut the peer's write side once the kernel has written all it forwarded.
        case shutPeerWhenForwarded
        /// Shut the peer's write side once what is queued toward it is written. `detect`: the
        /// client ended before its bytes decided the protocol: install this first.
        case shutPeer(detect: Detection?)
        /// The client ended before the destination answered the connect: nothing to wait for.
        case closeAll
    }

    /// A side sent FIN: it is passed on, as a direct TCP connection would.
    mutating func inputClosed(from side: Side, facts: Facts) -> InputClosedAction {
        if case .opaque(let kind, .spliced(var s)) = state {
            if s.firstFIN == nil { s.firstFIN = side == .client ? "client" : "server" }
            state = .opaque(kind, .spliced(s))
            return .shutPeerWhenForwarded
        }
        sawInputClosed = true
        if state == .connecting { return side == .client ? .closeAll : .shutPeer(detect: nil) }
        // Read first and the destination not yet known to be shared: nothing to pass the FIN to.
        if upstreamDeferred && side == .client && (state == .detecting || isTLSHandshake) { return .closeAll }
        // A client that ends before its bytes decided the protocol: relay what it sent.
        if side == .client && state == .detecting { return .shutPeer(detect: detected(.opaque, facts: facts)) }
        return .shutPeer(detect: nil)
    }

    enum ClosedAction: Equatable, Sendable {
        /// Spliced: close the peer once the kernel has written all it forwarded.
        case closePeerWhenForwarded
        /// Close the peer once what is queued toward it is written.
        case closePeer
        /// The destination of a refused HTTPS interception: the pod is told why on its own.
        case none
    }

    mutating func closed(_ side: Side) -> ClosedAction {
        if case .opaque(_, .spliced) = state { return .closePeerWhenForwarded }
        if side == .server {
            if state == .badGateway { return .none }
            if case .tlsHandshake(let h) = state, h.refused != nil { return .none }
        }
        return .closePeer
    }

    /// The first close of either socket ends the connection's userspace life: an opaque one not
    /// spliced has its closing flow now (a spliced one once both sockets closed, `spliceEnded`).
    mutating func finish() -> Opaque? {
        guard !finished else { return nil }
        finished = true
        if case .opaque(_, .spliced) = state { return nil }
        defer { state = .closed }
        if case .opaque(let kind, _) = state, kind != .dns { return kind }
        return nil
    }

    /// Both spliced sockets closed: the splice's facts for the closing flow, once.
    mutating func spliceEnded() -> (Opaque, SpliceState)? {
        guard case .opaque(let kind, .spliced(let s)) = state else { return nil }
        state = .closed
        return (kind, s)
    }

    /// What an opaque connection is, for its closing flow.
    static func describe(_ kind: Opaque) -> String {
        switch kind {
        case .raw, .dns: "TCP opaque connection"
        case .tls(let sni): sni.isEmpty ? "TLS connection without SNI" : "TLS connection to \(sni)"
        case .tunnel(let opening):
            // The HTTP/1 → HTTP/2 upgrade is not intercepted: say so rather than look complete.
            "TCP tunnel after \(opening)" + (opening.lowercased() == "upgrade: h2c" ? " (HTTP/2 streams inside not inspected)" : "")
        }
    }
}

/// A connection whose bytes the kernel carries (sockmap splice, `bpf/splice.bpf.c`).
struct SpliceState: Equatable, Sendable {
    var downstreamCookie: UInt64
    var upstreamCookie: UInt64
    /// What the proxy had written into each socket when the kernel took over (tcp_info):
    /// a half-close waits until the kernel's forwarded bytes are written on top of it.
    var writtenToClientBase: UInt64
    var writtenToServerBase: UInt64
    /// Bytes relayed in userspace before the splice.
    var clientBytesBefore: UInt64
    var serverBytesBefore: UInt64
    /// The side whose FIN came first ("client", "server"), for the closing flow.
    var firstFIN: String?
}

/// A connection's policy decision, recomputed when the policy set or the inventory changed
/// (so a reload applies to the next request of a connection that is already open).
struct DecisionCache<Decision> {
    private var value: Decision
    private var generation: UInt64

    init(_ value: Decision, generation: UInt64) {
        self.value = value
        self.generation = generation
    }

    mutating func get(generation current: UInt64, recompute: () -> (Decision, UInt64)) -> Decision {
        if current != generation { (value, generation) = recompute() }
        return value
    }
}
