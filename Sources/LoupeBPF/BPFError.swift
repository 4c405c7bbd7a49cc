import Glibc

/// Errors raised while loading, attaching or using the BPF datapath; each says where it came from.
public struct BPFError: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var detail: String
    /// The errno behind the error, 0 when there was none.
    public var errno: Int32 = 0
    public init(_ operation: String, errno code: Int32) {
        self.operation = operation
        self.errno = code < 0 ? -code : code
        self.detail = String(cString: strerror(self.errno))
    }
    public init(_ operation: String, detail: String) {
        self.operation = operation
        self.detail = detail
    }
    public var description: String { "bpf: \(operation): \(detail)" }
}
