import Glibc

/// One agent per datapath: an exclusive `flock` on a file named after the pin root, held for
/// the agent's life (the kernel drops it when the process ends, a crash included). A second
/// `loupe agent` for the same pins is refused before it touches anything — it used to load the
/// datapath over the running agent's, fail to bind the proxy's ports, and on its way out detach
/// the datapath and remove the routing rules the running agent depends on.
struct AgentLock: ~Copyable {
    struct Held: Error, CustomStringConvertible {
        var path: String
        var holder: String
        var description: String {
            "another loupe agent\(holder.isEmpty ? "" : " (pid \(holder))") runs this datapath (lock \(path) is held): stop it first"
        }
    }

    static let directory = "/run/loupe"

    private let fd: Int32

    /// Takes the lock for the agent whose pins are under `pinRoot`.
    init(pinRoot: String) throws {
        let name = pinRoot.split(separator: "/").joined(separator: "-")
        let path = "\(Self.directory)/agent-\(name.isEmpty ? "root" : name).lock"
        mkdir(Self.directory, 0o755)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemError(what: "open \(path)", errno: errno) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let e = errno
            var bytes = [UInt8](repeating: 0, count: 32)
            let n = read(fd, &bytes, bytes.count)
            close(fd)
            guard e == EWOULDBLOCK else { throw SystemError(what: "flock \(path)", errno: e) }
            let holder = n > 0 ? String(decoding: bytes[..<n], as: UTF8.self).filter(\.isNumber) : ""
            throw Held(path: path, holder: holder)
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        self.fd = fd
    }

    deinit { close(fd) }

    struct SystemError: Error, CustomStringConvertible {
        var what: String
        var errno: Int32
        var description: String { "\(what): \(String(cString: strerror(errno)))" }
    }
}
