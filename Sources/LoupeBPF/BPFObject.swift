import CLoupeBPF
import Glibc

/// A loaded BPF object file: its programs and maps. Maps with `LIBBPF_PIN_BY_NAME` are pinned
/// under `pinRoot` (existing pins are reused, so a restarted agent finds the same maps; with
/// `replacingPins`, removed first and made anew).
public final class BPFObject {
    private var object: OpaquePointer?
    public let path: String
    public let pinRoot: String

    public init(path: String, pinRoot: String, replacingPins: Bool = false) throws {
        self.path = path
        self.pinRoot = pinRoot
        try BPFFilesystem.ensureMounted()
        try BPFFilesystem.makeDirectory(pinRoot)
        loupe_libbpf_quiet(1)
        var err = [CChar](repeating: 0, count: 256)
        guard let obj = loupe_object_load(path, pinRoot, replacingPins ? 1 : 0, &err, err.count) else {
            throw BPFError("load", detail: err.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        }
        self.object = obj
    }

    deinit { close() }

    /// Closes the object; pinned maps stay until `unpinAll()`.
    public func close() {
        if let object { bpf_object__close(object) }
        object = nil
    }

    public func programFD(_ name: String) throws -> Int32 {
        guard let object, let prog = bpf_object__find_program_by_name(object, name) else {
            throw BPFError("program \(name)", detail: "not found in \(path)")
        }
        return bpf_program__fd(prog)
    }

    public func map(_ name: String) throws -> BPFMap {
        guard let object, let map = bpf_object__find_map_by_name(object, name) else {
            throw BPFError("map \(name)", detail: "not found in \(path)")
        }
        return BPFMap(name: name, fd: bpf_map__fd(map))
    }

    /// Removes the pins of every map of this object and the pin directory when empty.
    public func unpinAll() {
        guard let object else { return }
        var map = bpf_object__next_map(object, nil)
        while let m = map {
            if let p = bpf_map__pin_path(m) { unlink(p) }
            map = bpf_object__next_map(object, m)
        }
        rmdir(pinRoot)
    }
}

/// One BPF map, by fd. Keys and values are the C structs of `loupe_datapath.h`.
public struct BPFMap: Sendable {
    public let name: String
    public let fd: Int32

    public func update<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, _ value: V) throws {
        var k = key, v = value
        let rc = bpf_map_update_elem(fd, &k, &v, UInt64(BPF_ANY))
        if rc != 0 { throw BPFError("update \(name)", errno: errno) }
    }

    /// Adds `key` only when absent (BPF_NOEXIST).
    public func insert<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, _ value: V) throws(BPFError) {
        var k = key, v = value
        let rc = bpf_map_update_elem(fd, &k, &v, UInt64(BPF_NOEXIST))
        if rc != 0 { throw BPFError("insert into \(name)", errno: errno) }
    }

    public func delete<K: BitwiseCopyable>(_ key: K) {
        var k = key
        _ = bpf_map_delete_elem(fd, &k)
    }

    public func contains<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, valueType: V.Type) -> Bool {
        var k = key
        let v = UnsafeMutablePointer<V>.allocate(capacity: 1)
        defer { v.deallocate() }
        return bpf_map_lookup_elem(fd, &k, v) == 0
    }

    /// All keys currently in a hash map.
    public func keys<K: BitwiseCopyable>(_ type: K.Type) -> [K] {
        var result: [K] = []
        let next = UnsafeMutablePointer<K>.allocate(capacity: 1)
        defer { next.deallocate() }
        var rc = bpf_map_get_next_key(fd, nil, next)
        while rc == 0 {
            result.append(next.pointee)
            var cur = next.pointee
            rc = bpf_map_get_next_key(fd, &cur, next)
        }
        return result
    }

    /// Sum over CPUs of a per-CPU array of u64 at `index`.
    public func perCPUSum(index: UInt32) -> UInt64 {
        let cpus = Int(libbpf_num_possible_cpus())
        guard cpus > 0 else { return 0 }
        var values = [UInt64](repeating: 0, count: cpus)
        var k = index
        guard bpf_map_lookup_elem(fd, &k, &values) == 0 else { return 0 }
        return values.reduce(0, &+)
    }

    /// Zeroes a per-CPU array slot.
    public func perCPUReset(index: UInt32) {
        let cpus = Int(libbpf_num_possible_cpus())
        guard cpus > 0 else { return }
        var values = [UInt64](repeating: 0, count: cpus)
        var k = index
        _ = bpf_map_update_elem(fd, &k, &values, UInt64(BPF_ANY))
    }
}

/// bpffs housekeeping: a fresh machine has none mounted at /sys/fs/bpf.
public enum BPFFilesystem {
    public static let defaultRoot = "/sys/fs/bpf"

    public static func ensureMounted() throws {
        if loupe_is_bpffs(defaultRoot) != 0 { return }
        mkdir(defaultRoot, 0o755)
        if mount("bpf", defaultRoot, "bpf", 0, nil) != 0 {
            throw BPFError("mount bpffs at \(defaultRoot)", errno: errno)
        }
    }

    public static func makeDirectory(_ path: String) throws {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw BPFError("mkdir \(path)", errno: errno)
        }
    }

    /// Removes every pin in `dir` and the directory (crash leftovers).
    public static func removePins(in dir: String) {
        guard let d = opendir(dir) else { return }
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name == "." || name == ".." { continue }
            unlink(dir + "/" + name)
        }
        closedir(d)
        rmdir(dir)
    }
}
