@testable import LoupeProxy
@testable import LoupeProtocols
import Testing

/// The connection's life without channels: each test reports events as the handlers would and
/// checks the actions and states that come back.
@Suite struct ConnectionStateMachineTests {
    typealias Machine = ConnectionStateMachine
    static let hello = hello("api.example.test", ["h2", "http/1.1"])

    static func hello(_ serverName: String?, _ alpn: [String]) -> TLSClientHello {
        TLSClientHello(legacyVersion: 0x0303, serverName: serverName, alpn: alpn, supportedVersions: [0x0304],
                       cipherSuiteCount: 1, extensionTypes: [], recordBytes: 200)
    }

    func detecting() -> Machine {
        var m = Machine()
        #expect(m.accepted(deniesConnection: false) == .connectUpstream)
        #expect(m.upstreamConnected() == .startReading)
        #expect(m.state == .detecting)
        return m
    }

    @Test func anL3L4DenyResetsBeforeConnecting() {
        var m = Machine()
        #expect(m.accepted(deniesConnection: true) == .deny)
        #expect(m.state == .closed)
        #expect(m.upstreamConnected() == .closeUpstream, "a late upstream socket is closed")
    }

    @Test func aRefusedConnectIsRecordedOnce() {
        var m = Machine()
        _ = m.accepted(deniesConnection: false)
        let first = m.upstreamConnectFailed(), second = m.upstreamConnectFailed()
        #expect(first && !second)
        #expect(m.state == .closed)
    }

    /// An HTTPS port whose destination has a shared HTTP/2 connection: the pod is read first and
    /// a socket of its own connected only if what it sent needs one.
    @Test func aSharedDestinationIsConnectedOnlyWhenNeeded() {
        var m = Machine()
        #expect(m.accepted(deniesConnection: false, connectWhenNeeded: true) == .detectFirst)
        #expect(m.state == .detecting && m.upstreamDeferred)
        let d = m.detected(.tls(.hello(Self.hello("api.example.test", ["h2"]))), facts: Machine.Facts(visibility: .https))
        #expect(d.action == .interceptTLS(serverName: "api.example.test", alpn: ["h2"]))
        // It could not share after all: its socket is connected now, and the handshake goes on.
        #expect(m.upstreamConnected() == .resume)
        #expect(!m.upstreamDeferred)
        #expect(m.upstreamConnected() == .closeUpstream, "one socket per connection")

        var fin = Machine()
        _ = fin.accepted(deniesConnection: false, connectWhenNeeded: true)
        #expect(fin.inputClosed(from: .client, facts: Machine.Facts()) == .closeAll, "nothing to pass the FIN to")

        var refused = Machine()
        _ = refused.accepted(deniesConnection: false, connectWhenNeeded: true)
        _ = refused.detected(.http1, facts: Machine.Facts(visibility: .https))
        let first = refused.upstreamConnectFailed(), second = refused.upstreamConnectFailed()
        #expect(first && !second, "a refusal after reading the pod is recorded once")
        #expect(refused.state == .closed)
    }

    @Test func detectThenTLSInterceptionThenHTTP2ThenTunnelThenSplice() {
        // HTTPS port: the ClientHello is intercepted, the destination chooses h2.
        var m = detecting()
        let facts = Machine.Facts(visibility: .https, splice: true)
        let detection = m.detected(.tls(.hello(Self.hello)), facts: facts)
        let (notes, action) = (detection.notes, detection.action)
        #expect(notes == [.hello(.hello(Self.hello))])
        #expect(action == .interceptTLS(serverName: "api.example.test", alpn: ["h2", "http/1.1"]))
        #expect(m.upstreamHandshakeDone(.success("h2")) == .handshakeWithPod(serverName: "api.example.test", offering: "h2", refused: nil))
        #expect(m.podHandshakeDone(.success("h2")) == .install(.http2))
        #expect(m.state == .http2)
        #expect(m.tunnelOpened(by: "CONNECT", splice: true) == nil, "HTTP/2 has no HTTP/1 tunnel")

        // Cleartext HTTP/1 → Upgrade: websocket → tunnel → splice.
        var h1 = detecting()
        #expect(h1.detected(.http1, facts: facts).action == .install(.http1))
        #expect(h1.tunnelOpened(by: "Upgrade: websocket", splice: true) == .opaque(.tunnel(opening: "Upgrade: websocket"), splice: true))
        #expect(h1.holdsReads)
        h1.drainReadStarted(.client)
        #expect(h1.drainReadPending(.client) && !h1.drainReadPending(.server))
        #expect(!h1.drainReadsDone)
        h1.relayed(10, from: .client)
        h1.drainReadDone(.client)
        #expect(h1.drainReadsDone)
        #expect(h1.drained() == .insert)
        let splice = SpliceState(downstreamCookie: 1, upstreamCookie: 2, writtenToClientBase: 0, writtenToServerBase: 0,
                                 clientBytesBefore: 10, serverBytesBefore: 0)
        h1.spliced(splice)
        #expect(h1.splice == splice)
        #expect(h1.inputClosed(from: .server, facts: facts) == .shutPeerWhenForwarded)
        #expect(h1.inputClosed(from: .client, facts: facts) == .shutPeerWhenForwarded)
        #expect(h1.closed(.client) == .closePeerWhenForwarded)
        #expect(h1.finish() == nil, "a spliced connection's flow waits for both sockets")
        #expect(h1.closed(.server) == .closePeerWhenForwarded)
        let ended = h1.spliceEnded()
        #expect(ended?.0 == .tunnel(opening: "Upgrade: websocket"))
        #expect(ended?.1.firstFIN == "server")
        #expect(h1.spliceEnded() == nil, "recorded once")
    }

    @Test func upstreamRefusedDuringTLS() {
        var m = detecting()
        _ = m.detected(.tls(.hello(Self.hello)), facts: Machine.Facts(visibility: .https))
        let refused = "TLS handshake failed: certificate verify failed"
        #expect(m.upstreamHandshakeDone(.failure(refused)) == .handshakeWithPod(serverName: "api.example.test", offering: nil, refused: refused))
        #expect(m.closed(.server) == .none, "the destination's close does not end the pod's connection")
        #expect(m.upstreamHandshakeDone(.success("h2")) == .none, "one upstream result")
        #expect(m.podHandshakeDone(.success(nil)) == .badGateway(refused))
        #expect(m.state == .badGateway)
        #expect(m.closed(.server) == .none)
        #expect(m.closed(.client) == .closePeer)
        #expect(m.finish() == nil)
    }

    @Test func thePodsFailedHandshakeCloses() {
        var m = detecting()
        _ = m.detected(.tls(.hello(Self.hello)), facts: Machine.Facts(visibility: .https))
        _ = m.upstreamHandshakeDone(.success("http/1.1"))
        #expect(m.podHandshakeDone(.failure("alert unknown_ca")) == .fail(serverName: "api.example.test", reason: "alert unknown_ca"))
        #expect(m.state == .closed)
    }

    @Test func finBeforeTheSpliceIsDecidedKeepsTheConnectionInUserspace() {
        var m = detecting()
        #expect(m.detected(.opaque, facts: Machine.Facts(splice: true)).action == .install(.opaque(.raw, splice: true)))
        #expect(m.inputClosed(from: .client, facts: Machine.Facts(splice: true)) == .shutPeer(detect: nil))
        #expect(m.drained() == .fallback(.halfClosed))
        #expect(!m.holdsReads, "reads resume: the relay finishes the connection")
        #expect(m.closed(.client) == .closePeer)
        m.relayed(5, from: .client)
        #expect(m.finish() == .raw, "its closing flow is recorded now")
        #expect(m.bytesFromClient == 5)
        #expect(m.state == .closed)
    }

    @Test func aClientThatEndsBeforeDetectionIsRelayed() {
        var m = detecting()
        let action = m.inputClosed(from: .client, facts: Machine.Facts())
        guard case .shutPeer(let detect?) = action else { Issue.record("expected detection first: \(action)"); return }
        #expect(detect.action == .install(.opaque(.raw, splice: false)))
        var connecting = Machine()
        _ = connecting.accepted(deniesConnection: false)
        #expect(connecting.inputClosed(from: .client, facts: Machine.Facts()) == .closeAll)
    }

    @Test func portsWithHTTPRulesCarryHTTPOnly() {
        let rules = Machine.Facts(requiresHTTP: true)
        var m = detecting()
        #expect(m.detected(.opaque, facts: rules).action == .refuse("TCP connection denied: not HTTP on a port with HTTP policy rules"))
        #expect(m.state == .closed)
        var h2 = detecting()
        #expect(h2.detected(.http2, facts: Machine.Facts(requiresHTTP: true, interceptHTTP2: false)).action
            == .refuse("TCP connection denied: not HTTP on a port with HTTP policy rules"))
        var tls = detecting()
        let unreadable = tls.detected(.tls(.malformed("bad record")), facts: Machine.Facts(requiresHTTP: true, visibility: .https))
        #expect(unreadable.action == .refuse("TLS connection denied: its ClientHello cannot be intercepted and HTTP policy rules apply"))
        var noCA = detecting()
        let facts = Machine.Facts(requiresHTTP: true, visibility: .https, interceptionUnavailable: "HTTPS interception unavailable (no CA)")
        #expect(noCA.detected(.tls(.hello(Self.hello)), facts: facts).action
            == .refuse("HTTPS interception unavailable (no CA): connection denied, HTTP policy rules apply to this port"))
    }

    @Test func visibilityOnlyFallbacks() {
        var noSNI = detecting()
        let hello = Self.hello(nil, [])
        let r = noSNI.detected(.tls(.hello(hello)), facts: Machine.Facts(visibility: .https, splice: true))
        #expect(r.notes == [.hello(.hello(hello)), .tlsVisibilityOnly("HTTPS interception needs SNI: relayed with TLS visibility only")])
        #expect(r.action == .install(.opaque(.tls(serverName: ""), splice: true)))
        var notTLS = detecting()
        let n = notTLS.detected(.http1, facts: Machine.Facts(visibility: .tls))
        #expect(n.notes == [.notTLSOnTLSPort(firstBytes: "http1")])
        #expect(n.action == .install(.opaque(.raw, splice: false)))
        var dns = detecting()
        #expect(dns.detected(.http1, facts: Machine.Facts(carriesDNS: true, splice: true)).action == .install(.opaque(.dns, splice: false)),
                "DNS over TCP is inspected, never spliced, whatever its first bytes")
    }

    /// The destination's side of HTTP/2 is an `HTTP2Intercept.Upstream`, which drains the client
    /// itself when the destination goes: the connection only ever sees its client close.
    @Test func anHTTP2ConnectionEndsWithItsClient() {
        var m = detecting()
        _ = m.detected(.http2, facts: Machine.Facts())
        #expect(m.closed(.client) == .closePeer)
        #expect(m.finish() == nil)
        #expect(m.detected(.http1, facts: Machine.Facts()).action == .none, "closed: nothing more is installed")
    }

    @Test func aPolicyChangeMidConnectionAppliesToTheNextRequest() {
        var cache = DecisionCache("allow", generation: 1)
        var recomputed = 0
        #expect(cache.get(generation: 1) { recomputed += 1; return ("deny", 2) } == "allow")
        #expect(recomputed == 0, "same generation: the cached decision")
        #expect(cache.get(generation: 2) { recomputed += 1; return ("deny", 2) } == "deny")
        #expect(cache.get(generation: 2) { recomputed += 1; return ("other", 2) } == "deny")
        #expect(recomputed == 1)
    }
}
