import Synchronization

/// Names each pod learned through the DNS proxy, by answer address: later flows from that
/// pod to those addresses carry `destination_names` (Hubble's FQDN enrichment). Entries live
/// for the answer's TTL (at least `minimumTTL`, as Cilium's tofqdns-min-ttl) and each pod
/// keeps at most `maxEntriesPerPod` addresses; the oldest go first.
public final class FQDNCache: Sendable {
    public static let minimumTTL: UInt64 = 60
    public static let maxEntriesPerPod = 4096

    struct Entry {
        var names: [String]
        var expires: UInt64   // monotonic seconds
        var inserted: UInt64  // insertion order, for eviction
    }

    private let state = Mutex<(pods: [String: [String: Entry]], counter: UInt64)>(([:], 0))

    public init() {}

    /// Records `names` (query first, then the CNAME chain) for every answer address.
    public func learn(client: String, names: [String], addresses: [String], ttl: UInt32, now: UInt64 = monotonicSeconds()) {
        guard !addresses.isEmpty, !names.isEmpty else { return }
        let expires = now + max(UInt64(ttl), Self.minimumTTL)
        state.withLock { s in
            // The pod's entries are changed in place: a copy taken out of `pods` and written
            // back was copied whole (up to `maxEntriesPerPod` entries) at every answer.
            Self.learn(into: &s.pods[client, default: [:]], names: names, addresses: addresses, expires: expires, now: now,
                       counter: &s.counter)
        }
    }

    private static func learn(into pod: inout [String: Entry], names: [String], addresses: [String], expires: UInt64,
                              now: UInt64, counter: inout UInt64) {
        for a in addresses {
            counter += 1
            // The latest answer's names first, then names learned earlier for the address.
            var merged = names
            for n in pod[a]?.names ?? [] where !merged.contains(n) { merged.append(n) }
            pod[a] = Entry(names: merged, expires: expires, inserted: counter)
        }
        if pod.count > maxEntriesPerPod {
            let expired = pod.filter { $0.value.expires <= now }.map(\.key)
            for k in expired { pod.removeValue(forKey: k) }
            while pod.count > maxEntriesPerPod, let oldest = pod.min(by: { $0.value.inserted < $1.value.inserted })?.key {
                pod.removeValue(forKey: oldest)
            }
        }
    }

    /// Names `client` resolved to `address`, if still valid.
    public func names(client: String, address: String, now: UInt64 = monotonicSeconds()) -> [String] {
        state.withLock { s in
            guard let e = s.pods[client]?[address], e.expires > now else { return [] }
            return e.names
        }
    }

    /// Forgets pods that are gone.
    public func retain(clients: Set<String>) {
        state.withLock { s in s.pods = s.pods.filter { clients.contains($0.key) } }
    }
}

public func monotonicSeconds() -> UInt64 { monotonicNanos() / 1_000_000_000 }
