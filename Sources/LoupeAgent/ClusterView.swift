import LoupePolicy
import Synchronization

/// The cluster as a source other than the inventory file sees it (the Kubernetes informers):
/// namespaces and pods of every node, and the CiliumNetworkPolicies that parsed. The datapath
/// reads it by version; writers replace it whole.
public final class ClusterView: Sendable {
    public struct State: Sendable {
        public var version = 0
        public var inventory = Inventory()
        public var policies: [CiliumNetworkPolicy] = []
        /// False until every resource has been listed once: nothing is applied before that
        /// (a half-listed cluster would detach pods that simply were not listed yet).
        public var ready = false
    }

    private let state = Mutex(State())

    public init() {}

    public func read() -> State { state.withLock { $0 } }

    public func replace(inventory: Inventory, policies: [CiliumNetworkPolicy]) {
        state.withLock { s in
            s.version += 1
            s.inventory = inventory
            s.policies = policies
            s.ready = true
        }
    }
}
