import Foundation
import Glibc
import Logging
import LoupeFlow
import ServiceLifecycle

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
/// proxy's threads); a writer thread appends them and rotates by size. A full queue (the disk
/// cannot keep up) drops flows for the export only, counted as lost events (`exporter`).
public final class FlowExporter: Service, @unchecked Sendable {
    private let configuration: FlowExportConfiguration
    private let store: FlowStore
    private let logger: Logger
    private let condition = NSCondition()
    private var queue: [String] = []
    private var stopping = false
    static let queueLimit = 65_536

    public init(configuration: FlowExportConfiguration, store: FlowStore, logger: Logger) {
        self.configuration = configuration
        self.store = store
        self.logger = logger
    }

    public func run() async throws {
        let file = try ExportFile(configuration: configuration)
        let writer = Thread { [self] in writeLoop(file) }
        writer.name = "loupe-export"
        writer.start()
        let cfg = configuration
        let (id, _) = store.subscribe(last: 0) { [self] record in
            guard cfg.exports(record.flow) else { return }
            enqueue(FlowEncoding.jsonLine(record) + "\n")
        }
        logger.info("exporting flows to \(configuration.path) (rotating at \(configuration.maxSizeBytes) bytes, \(configuration.maxBackups) backups)")
        try? await gracefulShutdown()
        store.unsubscribe(id)
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in stop { done.resume() } }
    }

    private func enqueue(_ line: String) {
        condition.lock()
        let full = queue.count >= Self.queueLimit
        if !full {
            queue.append(line)
            condition.signal()
        }
        condition.unlock()
        if full { store.countLost(source: "exporter") }
    }

    /// Lets the writer finish what is queued, then calls `then` (on the writer's thread).
    private func stop(then: @escaping @Sendable () -> Void) {
        condition.lock()
        stopping = true
        let done = writerDone
        if !done { onStopped = then }
        condition.signal()
        condition.unlock()
        if done { then() }
    }

    private var writerDone = false
    private var onStopped: (@Sendable () -> Void)?

    private func writeLoop(_ file: ExportFile) {
        while true {
            condition.lock()
            while queue.isEmpty && !stopping { condition.wait() }
            let batch = queue
            queue.removeAll(keepingCapacity: true)
            let stop = stopping
            condition.unlock()
            do { try file.append(batch) } catch {
                logger.error("flow export: \(error)")
                store.countLost(source: "exporter", UInt64(batch.count))
            }
            if stop && batch.isEmpty { break }
        }
        file.close()
        condition.lock()
        writerDone = true
        let then = onStopped
        condition.unlock()
        then?()
    }
}

/// The export file and its size-based rotation: `PATH` → `PATH.1` → … → `PATH.<maxBackups>`.
/// `@unchecked Sendable`: made by `FlowExporter.run`, then handed to the writer thread, which is
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
