import Foundation

/// Talks to the agent's unix socket: one JSON request line out, lines back.
struct APIClient {
    var path: String

    struct Unreachable: Error, CustomStringConvertible {
        var path: String
        var reason: String
        var description: String {
            "cannot reach the Loupe agent at \(path): \(reason). Is it running? (`loupe agent --lab`, or --server PATH)"
        }
    }

    /// Sends `request` and calls `line` for each line received until the agent closes or `line` returns false.
    func request(_ request: [String: Any], line: (String) -> Bool) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Unreachable(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw Unreachable(path: path, reason: "path too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { buf in
            for (i, b) in bytes.enumerated() { buf[i] = b }
            buf[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw Unreachable(path: path, reason: String(cString: strerror(errno))) }
        var data = try JSONSerialization.data(withJSONObject: request)
        data.append(UInt8(ascii: "\n"))
        _ = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }

        var pending = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { break }
            pending.append(contentsOf: chunk[0..<n])
            var start = 0
            while let nl = pending[start...].firstIndex(of: UInt8(ascii: "\n")) {
                let text = String(decoding: pending[start..<nl], as: UTF8.self)
                start = nl + 1
                if !line(text) { return }
            }
            pending.removeFirst(start)
        }
    }
}

/// The default agent socket (`/run/loupe/loupe.sock`), or `LOUPE_SERVER`.
let defaultServerPath = ProcessInfo.processInfo.environment["LOUPE_SERVER"] ?? "/run/loupe/loupe.sock"
