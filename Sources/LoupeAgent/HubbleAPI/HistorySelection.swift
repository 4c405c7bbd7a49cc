import GRPCCore
import LoupeAPI
import SwiftProtobuf

/// The part of Hubble's `number` / `first` / `follow` / `since` / `until` request that picks
/// stored events, shared by GetFlows and GetAgentEvents (Cilium's local observer semantics):
/// - `first`: the oldest `number` matching events (0 = all); not with `follow`.
/// - otherwise the newest `number` matching events (0 = all, or none when following without
///   `since`), oldest first;
/// - `since` / `until` bound the events' time (inclusive).
struct HistorySelection {
    var number: UInt64
    var first: Bool
    var follow: Bool
    var since: (Int64, Int32)?
    var until: (Int64, Int32)?

    init(number: UInt64, first: Bool, follow: Bool, since: Google_Protobuf_Timestamp?, until: Google_Protobuf_Timestamp?) throws {
        if first && follow {
            throw RPCError(code: .invalidArgument, message: "first cannot be combined with follow (first reads from the oldest stored event; follow streams new ones)")
        }
        for (name, t) in [("since", since), ("until", until)] {
            if let t, !(t.nanos >= 0 && t.nanos < 1_000_000_000 && t.seconds >= -62_135_596_800 && t.seconds <= 253_402_300_799) {
                throw RPCError(code: .invalidArgument, message: "\(name) is not a valid timestamp")
            }
        }
        self.number = number
        self.first = first
        self.follow = follow
        self.since = since.map { ($0.seconds, $0.nanos) }
        self.until = until.map { ($0.seconds, $0.nanos) }
    }

    func inWindow(_ t: Google_Protobuf_Timestamp) -> Bool {
        if let since, (t.seconds, t.nanos) < since { return false }
        if let until, (t.seconds, t.nanos) > until { return false }
        return true
    }

    /// Past `until`: a follower's stream ends there.
    func pastUntil(_ t: Google_Protobuf_Timestamp) -> Bool {
        guard let until else { return false }
        return (t.seconds, t.nanos) > until
    }

    /// The stored events to send, oldest first. `convert` turns a stored item into the
    /// event (nil = does not match the filters) and its time.
    func select<Items: BidirectionalCollection, Event>(_ items: Items, _ convert: (Items.Element) -> (Event, Google_Protobuf_Timestamp)?) -> [Event] {
        if follow && number == 0 && since == nil { return [] }
        if first {
            var out: [Event] = []
            for item in items {
                guard let (e, t) = convert(item), inWindow(t) else { continue }
                out.append(e)
                if number > 0 && out.count >= number { break }
            }
            return out
        }
        var out: [Event] = []
        for item in items.reversed() {
            guard let (e, t) = convert(item) else { continue }
            guard inWindow(t) else { continue }
            out.append(e)
            if number > 0 && out.count >= number { break }
        }
        return out.reversed()
    }
}
