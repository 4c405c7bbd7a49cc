@testable import LoupeProxy
@testable import LoupeProtocols
import Testing

/// The type-name arrays DNS flows share: the same names as said one by one, whatever the types.
@Suite struct DNSFlowsTests {
    @Test func sharedTypeNamesAreExactlyTheTypesNames() {
        let sets: [[UInt16]] = [[], [1], [28], [5, 1], [1, 5], [1, 1, 1], [1, 1], [0x8001], [1, 0x8001], [0xffff, 0xffff, 0xffff],
                                [1, 28, 5, 1], [0x8001, 1, 1, 1], [1, 2, 3, 4, 5, 6]]
        for _ in 0..<2 { // the second round comes from the cache
            for set in sets {
                let types = set.map { DNSType(rawValue: $0) }
                #expect(DNSFlows.typeNames(types) == types.map(\.description), "\(set)")
            }
        }
        #expect(DNSFlows.typeNames([DNSType.a, .aaaa]) == ["A", "AAAA"])
        #expect(DNSFlows.typeNames([DNSType(rawValue: 0x8001)]) == ["TYPE32769"])
    }
}
