import Foundation
import Logging
import Synchronization

/// The objects of one resource as the API's list and watch semantics define them, with no I/O:
/// a list replaces everything (objects missing from it are gone); ADDED/MODIFIED/DELETED
/// change one object; BOOKMARK only advances the version; an ERROR with code 410 means the
/// version is too old and the caller must list again. Objects are kept as `decode` made them
/// (the model's values, not the API's JSON: 50,000 pods as JSON dictionaries cost ~16 KB each).
public struct InformerStore<Value: Sendable>: Sendable {
    public enum Outcome: Equatable, Sendable {
        case changed
        case bookmark
        /// 410 Gone: relist.
        case gone
        case error(code: Int, message: String)
        case ignored(String)
    }

    public private(set) var objects: [String: Value] = [:]
    public private(set) var resourceVersion = ""
    private let decode: @Sendable (KubeObject) -> Value

    public init(decode: @escaping @Sendable (KubeObject) -> Value) {
        self.decode = decode
    }

    public mutating func replace(with items: [KubeObject], resourceVersion: String) {
        objects = Dictionary(items.map { ($0.key, decode($0)) }, uniquingKeysWith: { _, b in b })
        self.resourceVersion = resourceVersion
    }

    public mutating func apply(_ event: WatchEvent) -> Outcome {
        let object = event.object
        switch event.type {
        case "ADDED", "MODIFIED":
            objects[object.key] = decode(object)
        case "DELETED":
            objects[object.key] = nil
        case "BOOKMARK":
            if !object.resourceVersion.isEmpty { resourceVersion = object.resourceVersion }
            return .bookmark
        case "ERROR":
            // The object is a metav1.Status.
            let code = object.json["code"] as? Int ?? 0
            let message = object.json["message"] as? String ?? "(no message)"
            return code == 410 ? .gone : .error(code: code, message: message)
        default:
            return .ignored("unknown watch event type \(event.type)")
        }
        if !object.resourceVersion.isEmpty { resourceVersion = object.resourceVersion }
        return .changed
    }
}

/// How one resource's informer is doing, for `loupe status` and the metrics.
public struct InformerStatus: Sendable {
    public var synced = false
    /// An optional resource whose CRD is not installed.
    public var absent = false
    public var objects = 0
    public var resourceVersion = ""
    public var watchErrors: UInt64 = 0
    public var relists: UInt64 = 0
    public var lastError = ""
}

/// Timing of the informers (tests shorten them).
public struct InformerTiming: Sendable {
    public var pageSize = 500
    /// Each watch asks the server to end it after this many seconds (jittered up to 2×, as
    /// client-go does), then it is re-opened from the last version.
    public var watchTimeoutSeconds = 300
    public var backoffInitial: Duration = .milliseconds(200)
    public var backoffMax: Duration = .seconds(30)
    /// How often an absent CRD is looked for again.
    public var absentRecheck: Duration = .seconds(60)

    public init() {}
}

/// List-then-watch of one resource, forever: paginated list → watch from its version with
/// bookmarks → re-watch when the server ends it; 410 Gone → relist (replacing the state);
/// a broken connection → re-watch from the last version after a jittered backoff. Each change
/// calls `changed`; the reader takes `objects()` when it rebuilds (so a burst of events costs
/// one copy of the set per rebuild, not one per event).
final class Informer<Value: Sendable>: Sendable {
    let resource: KubernetesResource
    private let client: KubernetesClient
    private let timing: InformerTiming
    private let logger: Logger
    private let changed: @Sendable () -> Void
    private let state = Mutex(InformerStatus())
    /// The informer's state, mutated in place under the lock; readers' snapshots are released
    /// after each rebuild, so an event normally mutates without copying the set.
    private let store: Mutex<(store: InformerStore<Value>, listed: Bool)>

    init(resource: KubernetesResource, client: KubernetesClient, timing: InformerTiming, logger: Logger,
         decode: @escaping @Sendable (KubeObject) -> Value, changed: @escaping @Sendable () -> Void) {
        store = Mutex((InformerStore(decode: decode), false))
        self.resource = resource
        self.client = client
        self.timing = timing
        self.logger = logger
        self.changed = changed
    }

    /// The loop's own facts, with the object count and version read from the store.
    var status: InformerStatus {
        var s = state.withLock { $0 }
        store.withLock {
            s.objects = $0.store.objects.count
            s.resourceVersion = $0.store.resourceVersion
        }
        return s
    }

    /// The current objects; nil until the first list.
    func objects() -> [String: Value]? { store.withLock { $0.listed ? $0.store.objects : nil } }

    func run() async {
        var needsList = true
        var backoff = timing.backoffInitial
        var announcedAbsent = false
        while !Task.isCancelled {
            do {
                if resource.optional && needsList {
                    guard try await client.serves(resource) else {
                        if !announcedAbsent {
                            logger.info("\(resource.name).\(resource.groupVersion) is not served (CRD not installed): none applied; looking again every \(timing.absentRecheck)")
                            announcedAbsent = true
                        }
                        store.withLock { s in
                            s.store.replace(with: [], resourceVersion: "")
                            s.listed = true
                        }
                        state.withLock { $0.absent = true; $0.synced = true }
                        changed()
                        try await Task.sleep(for: timing.absentRecheck)
                        continue
                    }
                    if announcedAbsent { logger.info("\(resource.name).\(resource.groupVersion) is served now: following it") }
                    announcedAbsent = false
                    state.withLock { $0.absent = false }
                }
                if needsList {
                    try await list()
                    needsList = false
                    changed()
                }
                let timeout = timing.watchTimeoutSeconds + Int.random(in: 0...timing.watchTimeoutSeconds)
                let from = store.withLock { $0.store.resourceVersion }
                let events = try await client.watch(resource, resourceVersion: from, timeoutSeconds: timeout)
                state.withLock { $0.synced = true; $0.lastError = "" }
                backoff = timing.backoffInitial
                watching: for try await event in events {
                    switch store.withLock({ $0.store.apply(event) }) {
                    case .changed:
                        changed()
                    case .bookmark:
                        break
                    case .gone:
                        logger.info("\(resource.name): watch from \(from) is too old (410 Gone): listing again")
                        needsList = true
                        break watching
                    case .error(let code, let message):
                        throw KubernetesAPIError.status(code: code, path: resource.path, message: "watch ERROR event: \(message)")
                    case .ignored(let why):
                        logger.warning("\(resource.name): \(why)")
                    }
                }
            } catch is CancellationError {
                return
            } catch KubernetesAPIError.gone(let message) {
                logger.info("\(resource.name): 410 Gone (\(message)): listing again")
                needsList = true
            } catch {
                if Task.isCancelled { return }
                let text = "\(error)"
                let previous = state.withLock { s -> String in
                    let p = s.lastError
                    s.synced = false
                    s.watchErrors += 1
                    s.lastError = text
                    return p
                }
                if previous != text { logger.error("kubernetes \(resource.name): \(text); the last good state stays in force, retrying") }
                // Full jitter: anywhere up to the current step, which doubles to the cap.
                let step = backoff
                backoff = min(backoff * 2, timing.backoffMax)
                let ms = Int(step.components.seconds * 1000 + step.components.attoseconds / 1_000_000_000_000_000)
                try? await Task.sleep(for: .milliseconds(Int.random(in: max(1, ms / 2)...max(1, ms))))
            }
        }
    }

    private func list() async throws {
        var items: [KubeObject] = []
        var token: String?
        var version = ""
        repeat {
            let page = try await client.list(resource, limit: timing.pageSize, continue: token)
            items += page.items
            version = page.resourceVersion
            token = page.continue
        } while token != nil
        store.withLock { s in
            s.store.replace(with: items, resourceVersion: version)
            s.listed = true
        }
        let count = items.count
        state.withLock { $0.relists += 1; $0.synced = true; $0.lastError = "" }
        logger.info("kubernetes \(resource.name): listed \(count) at resourceVersion \(version)")
    }
}
