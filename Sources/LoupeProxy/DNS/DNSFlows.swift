import LoupeFlow
import LoupeProtocols
import Synchronization

/// Hubble's DNS flows for one query and its answer (pure: messages in, flows out). Their
/// summaries are said from the DNS record when read (`DNS.querySummary`, `answerSummary`),
/// unless they say more than it: a note, or an address TTL the record cannot tell from none.
enum DNSFlows {
    static func request(_ q: DNSMessage, context c: ConnectionContext, verdict: Verdict = .forwarded, dropReason: DropReason? = nil,
                        udp: Bool = true) -> Flow {
        let query = q.questions.first?.name ?? "."
        let qtypes = typeNames(q.questions.lazy.map(\.type))
        return c.flow(verdict: verdict, type: .l7,
                      l7: Layer7(type: .request, latencyNs: 0, dns: DNS(query: query, qtypes: qtypes)),
                      reply: false, dropReason: dropReason, udp: udp)
    }

    /// `DNS Answer "198.19.0.20" TTL: 300 (Proxy api.example.test. A)` /
    /// `DNS Answer RCode: Non-Existent Domain TTL: 4294967295 (Proxy nx.example.test. A)`.
    static func response(_ r: DNSMessage, query q: DNSMessage, latencyNanos: UInt64, context c: ConnectionContext,
                         verdict: Verdict = .forwarded, dropReason: DropReason? = nil, note: String? = nil, udp: Bool = true) -> Flow {
        let query = q.questions.first?.name ?? r.questions.first?.name ?? "."
        let qtypes = typeNames(q.questions.lazy.map(\.type))
        let addresses = r.answers.compactMap(\.address)
        let ttl = r.addressTTL ?? UInt32.max
        let cnames = r.answers.compactMap { rec -> String? in if case .cname(let t) = rec.data { return t } else { return nil } }
        let rrtypes = typeNames(r.answers.lazy.map(\.type))
        let dns = DNS(query: query, ips: addresses, ttl: ttl == UInt32.max ? 0 : ttl, cnames: cnames,
                      rcode: UInt32(r.rcode.rawValue), qtypes: qtypes, rrtypes: rrtypes)
        // Said here when it says more than the record: a note, or addresses with a TTL of
        // 4294967295 (kept as 0, which Hubble's JSON omits).
        let summary = note == nil && (addresses.isEmpty || ttl != UInt32.max) ? ""
            : dns.answerSummary(ttl: ttl) + (note.map { " \($0)" } ?? "")
        return c.flow(verdict: verdict, type: .l7, l7: Layer7(type: .response, latencyNs: latencyNanos, dns: dns),
                      reply: true, summary: summary, dropReason: dropReason, udp: udp)
    }

    /// Type mnemonics as a flow's `qtypes` / `rrtypes`. The arrays for up to three types are
    /// made once and shared: an array per flow was an allocation when it was recorded and a
    /// free (of memory long cold) when it left the flow ring.
    static func typeNames<C: Collection>(_ types: C) -> [String] where C.Element == DNSType {
        guard types.count <= 3 else { return types.map(\.description) }
        var key = UInt64(types.count) // then 16 bits per type: exact for any three
        for t in types { key = key << 16 | UInt64(t.rawValue) }
        if let known = typeNameCache.withLock({ $0[key] }) { return known }
        let names = types.map(\.description)
        typeNameCache.withLock { cache in
            if cache.count >= 1024 { cache.removeAll() }
            cache[key] = names
        }
        return names
    }

    private static let typeNameCache = Mutex<[UInt64: [String]]>([:])
}
