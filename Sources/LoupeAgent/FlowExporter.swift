import Foundation
import Glibc
import Logging
import LoupeFlow
import ServiceLifecycle
import Synchronization

/// What the flow export writes and keeps (Hubble's exporter options).
public struct FlowExportConfiguration: Sendable {
    /// JSON lines, exactly as `hubble observe -o json` prints them.
    public var path: String
    /// Rotate when the file would pass this size; keep this many rotated files (`PATH.1` newest).
    public var maxSizeBytes: Int = 10 << 20
    public var maxBackups: Int = 5
    /// A flow is exported when it matches one of `allow` (or `allow` is empty) and none of `deny`.
    public var allow: [FlowFilter] = []
    public var deny: [FlowFilter] = []

    public init(path: String) { self.path = path }

    func exports(_ flow: Flow) -> Bool {
        (allow.isEmpty || allow.contains { $0.matches(flow) }) && !deny.contains { $0.matches(flow) }
    }
}

/// Service: the flow export file. The store's subscriber only queues lines (it runs on the
/// proxy's threads) and wakes the writer through an `AsyncStream`; the writer task takes the
/// whole queue per wake-up (one write per batch, not per flow), appends and rotates by size.
/// A full queue (the disk cannot keep up) drops flows for the export only, counted as lost
/// events (`exporter`). On shutdown the writer finishes what is queued, then closes the file.
public final class FlowExporter: Service, Sendable {
    private let configuration: FlowExportConfiguration
    private let store: FlowStore
    private let logger: Logger
    private let queue = Mutex<[String]>([])
    static let queueLimit = 65_536

    public init(configuration: FlowExportConfiguration, store: FlowStore, logger: Logger) {
        self.configuration = configuration
        self.store = store
        self.logger = logger
    }

    public func run() async throws {
        let file = try ExportFile(configuration: configuration)
        // One pending wake-up is enough: the writer drains everything queued when it wakes.
        let (wakeups, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let cfg = configuration, store = store
        let (id, _) = store.subscribe(last: 0) { [self] record in
            guard cfg.exports(record.flow) else { return }
            let line = FlowEncoding.jsonLine(record) + "\n"
            let queued = self.queue.withLock { q in
                guard q.count < Self.queueLimit else { return false }
                q.append(line)
                return true
            }
            if queued { wake.yield() } else { store.countLost(source: "exporter") }
        }
        logger.info("exporting flows to \(configuration.path) (rotating at \(configuration.maxSizeBytes) bytes, \(configuration.maxBackups) backups)")
        let writer = Task.detached { [self] in
            for await _ in wakeups { writeQueued(file) }
            writeQueued(file) // what came after the last wake-up
            file.close()
        }
        try? await gracefulShutdown()
        store.unsubscribe(id)
        wake.finish()
        await writer.value
    }

    /// Appends everything queued, in one batch.
    private func writeQueued(_ file: ExportFile) {
        let batch = queue.withLock { q in
            let all = q
            q.removeAll(keepingCapacity: true)
            return all
        }
        guard !batch.isEmpty else { return }
        do { try file.append(batch) } catch {
            logger.error("flow export: \(error)")
            store.countLost(source: "exporter", UInt64(batch.count))
        }
    }
}

/// The export file and its size-based rotation: `PATH` → `PATH.1` → … → `PATH.<maxBackups>`.
/// `@unchecked Sendable`: made by `FlowExporter.run`, then handed to the writer task, which is
/// the only one that touches it from then on.
final class ExportFile: @unchecked Sendable {
    private let configuration: FlowExportConfiguration
    private var fd: Int32 = -1
    private var size = 0

    struct Failure: Error, CustomStringConvertible { var description: String }

    init(configuration: FlowExportConfiguration) throws {
        self.configuration = configuration
        let dir = (configuration.path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        try open()
    }

    private func open() throws {
        fd = Glibc.open(configuration.path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw Failure(description: "cannot open \(configuration.path): \(String(cString: strerror(errno)))") }
        var st = stat()
        size = fstat(fd, &st) == 0 ? Int(st.st_size) : 0
    }

    /// Appends lines with one write per run between rotations (not one per flow).
    func append(_ lines: [String]) throws {
        var pending: [UInt8] = []
        for line in lines {
            let bytes = line.utf8
            if size + pending.count > 0 && size + pending.count + bytes.count > configuration.maxSizeBytes {
                try write(&pending)
                try rotate()
            }
            pending.append(contentsOf: bytes)
        }
        try write(&pending)
    }

    private func write(_ bytes: inout [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + off, $0.count - off) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "write \(configuration.path): \(String(cString: strerror(errno)))")
            }
            off += n
        }
        size += bytes.count
        bytes.removeAll(keepingCapacity: true)
    }

    private func rotate() throws {
        Glibc.close(fd)
        let p = configuration.path
        if configuration.maxBackups > 0 {
            unlink("\(p).\(configuration.maxBackups)")
            for i in stride(from: configuration.maxBackups - 1, through: 1, by: -1) { rename("\(p).\(i)", "\(p).\(i + 1)") }
            rename(p, "\(p).1")
        } else {
            unlink(p)
        }
        try open()
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }
}
