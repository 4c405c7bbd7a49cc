import Foundation
import LoupeFlow
import LoupePolicy
@testable import LoupeProxy
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// Flows recorded on an event loop reach the store once the loop's round of I/O is over, all of
/// them and in order; a thread that drains its own flows (the DNS proxy's) holds them until it
/// does; anywhere else a flow is stored at once.
@Suite struct PendingFlowsTests {
    static func flow(_ n: Int) -> Flow {
        Flow(verdict: .forwarded, ip: IPInfo(source: "198.18.0.1", destination: "198.18.0.2"),
             l4: Layer4(tcp: .init(sourcePort: n, destinationPort: 80)),
             source: Endpoint(id: nil, identity: 2, namespace: nil, labels: [], podName: nil),
             destination: Endpoint(id: nil, identity: 2, namespace: nil, labels: [], podName: nil),
             type: .l7, nodeName: "node", isReply: false, trafficDirection: .egress)
    }

    static func ports(_ store: FlowStore) -> [Int] { store.records().map { $0.flow.l4.tcp?.sourcePort ?? -1 } }

    @Test func onAnEventLoopFlowsAreStoredAfterTheRoundInOrder() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let store = FlowStore(capacity: 4)
        let seen = Mutex<[Int]>([])
        _ = store.subscribe(last: 0) { r in seen.withLock { $0.append(r.flow.l4.tcp?.sourcePort ?? -1) } }
        let env = ProxyEnvironment(inventory: Inventory(), flows: store, configuration: ProxyConfiguration())
        let duringRound = try group.next().submit { () -> Int in
            for n in 1...6 { env.record(Self.flow(n)) }
            return Int(store.totalFlows)
        }.wait()
        #expect(duringRound == 0, "held until the loop's round is over")
        try group.next().submit {}.wait() // the drain task ran before this one
        #expect(store.totalFlows == 6)
        #expect(Self.ports(store) == [3, 4, 5, 6], "the ring keeps the newest, oldest first")
        #expect(seen.withLock { $0 } == [1, 2, 3, 4, 5, 6], "subscribers see every flow in order")
    }

    @Test func twoStoresOnOneLoopEachGetTheirOwnInOrder() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let a = FlowStore(capacity: 8), b = FlowStore(capacity: 8)
        let envA = ProxyEnvironment(inventory: Inventory(), flows: a, configuration: ProxyConfiguration())
        let envB = ProxyEnvironment(inventory: Inventory(), flows: b, configuration: ProxyConfiguration())
        try group.next().submit {
            envA.record(Self.flow(1))
            envB.record(Self.flow(2))
            envA.record(Self.flow(3))
        }.wait()
        try group.next().submit {}.wait()
        #expect(Self.ports(a) == [1, 3])
        #expect(Self.ports(b) == [2])
    }

    @Test func aThreadThatDrainsItselfHoldsFlowsUntilItDoes() throws {
        let store = FlowStore(capacity: 8)
        let env = ProxyEnvironment(inventory: Inventory(), flows: store, configuration: ProxyConfiguration())
        let counts = Mutex<[UInt64]>([])
        let thread = Thread {
            let pending = PendingFlows.installOnThisThread()
            env.record(Self.flow(1))
            env.record(Self.flow(2))
            counts.withLock { $0.append(store.totalFlows) }
            pending.drain()
            counts.withLock { $0.append(store.totalFlows) }
        }
        thread.start()
        while counts.withLock({ $0.count }) < 2 { usleep(1000) }
        #expect(counts.withLock { $0 } == [0, 2])
        #expect(Self.ports(store) == [1, 2])
    }

    @Test func elsewhereAFlowIsStoredAtOnce() {
        let store = FlowStore(capacity: 8)
        let env = ProxyEnvironment(inventory: Inventory(), flows: store, configuration: ProxyConfiguration())
        env.record(Self.flow(7))
        #expect(Self.ports(store) == [7])
    }
}
