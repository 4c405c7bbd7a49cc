/// gRPC status codes (grpc/doc/statuscodes.md): the numbers carried in `grpc-status`
/// trailers and the names flows and `loupe observe --grpc-status` use for them.
public enum GRPCStatus {
    public static let names = [
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
        "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
    ]

    /// `5` → `NOT_FOUND`; a code outside the table has no name.
    public static func name(of code: Int) -> String? {
        names.indices.contains(code) ? names[code] : nil
    }

    /// `5`, `NOT_FOUND` or `not_found` → 5.
    public static func code(_ spec: String) -> Int? {
        if let n = Int(spec), n >= 0 { return n }
        return names.firstIndex(of: spec.uppercased())
    }

    /// Whether the request or response headers say gRPC (`content-type: application/grpc[+proto|…]`).
    public static func isGRPC(contentType: String?) -> Bool {
        guard let contentType else { return false }
        return contentType.lowercased().hasPrefix("application/grpc")
    }
}
