import Glibc

/// Errors raised while loading, attaching or using the BPF datapath; each says where it came from.
public struct BPFError: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var detail: String
    public init(_ operation: String, errno code: Int32) {
        self.operation = operation
        self.detail = String(cString: strerror(code < 0 ? -code : code))
    }
    public init(_ operation: String, detail: String) {
        self.operation = operation
        self.detail = detail
    }
    public var description: String { "bpf: \(operation): \(detail)" }
}
