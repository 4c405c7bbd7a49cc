import Foundation
import LoupePolicy

/// The policy set of a directory: every `*.yaml`/`*.yml` file, parsed as CiliumNetworkPolicy
/// YAML. All or nothing: one bad file rejects the new set (the caller keeps the last good one).
struct PolicyDirectory {
    let path: String

    /// A cheap fingerprint (names, sizes, mtimes) to notice edits without re-parsing.
    func signature() -> [String] {
        files().map { f in
            var st = stat()
            guard stat(f, &st) == 0 else { return f }
            return "\(f):\(st.st_size):\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec):\(st.st_ino)"
        }
    }

    func files() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.filter { ($0.hasSuffix(".yaml") || $0.hasSuffix(".yml")) && !$0.hasPrefix(".") }
            .sorted().map { path + "/" + $0 }
    }

    func load() -> (policies: [CiliumNetworkPolicy], errors: [PolicyError]) {
        var policies: [CiliumNetworkPolicy] = []
        var errors: [PolicyError] = []
        for f in files() {
            guard let text = try? String(contentsOfFile: f, encoding: .utf8) else {
                errors.append(PolicyError(file: f, line: 0, field: "(file)", message: "cannot read"))
                continue
            }
            let r = PolicyParser.parse(text, file: f)
            policies += r.policies
            errors += r.errors
        }
        var seen = Set<String>()
        for p in policies {
            let key = "\(p.isClusterwide ? "clusterwide" : p.namespace!)/\(p.name)"
            if !seen.insert(key).inserted {
                errors.append(PolicyError(file: p.file, line: p.line, field: "metadata.name",
                                          message: "policy \(key) is defined twice in \(path)"))
            }
        }
        return (errors.isEmpty ? policies : [], errors)
    }
}
