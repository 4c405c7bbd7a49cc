import LoupeFlow
import LoupePolicy
import Synchronization

/// What the proxy consults per connection: the current inventory (for identities and the rule
/// that selected the connection) and where flows go. Swapped atomically on inventory changes.
public final class ProxyEnvironment: Sendable {
    private let current: Mutex<(Inventory, RedirectPlan)>
    public let flows: FlowStore
    public let configuration: ProxyConfiguration
    private let counters = Mutex<[String: UInt64]>([:])

    public init(inventory: Inventory, flows: FlowStore, configuration: ProxyConfiguration) {
        self.current = Mutex((inventory, RedirectPlan(inventory: inventory)))
        self.flows = flows
        self.configuration = configuration
    }

    public func update(inventory: Inventory) {
        let plan = RedirectPlan(inventory: inventory)
        current.withLock { $0 = (inventory, plan) }
    }

    public var snapshot: (inventory: Inventory, plan: RedirectPlan) {
        current.withLock { ($0.0, $0.1) }
    }

    public func record(_ flow: Flow) { flows.append(flow) }

    /// Proxy-level counters (connections, upstream errors, parse errors) for `loupe status`.
    public func count(_ name: String, _ n: UInt64 = 1) {
        counters.withLock { $0[name, default: 0] += n }
    }

    public var counterValues: [String: UInt64] { counters.withLock { $0 } }
}
