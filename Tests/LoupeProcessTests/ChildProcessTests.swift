import Glibc
import LoupeProcess
import Testing

/// `ChildProcess` with real children (/bin/sh, cat, /proc): what they inherit and how their
/// output is read.
@Suite struct ChildProcessTests {
    /// A `SigXxx:` mask line of the child's /proc/self/status, as the child printed it.
    private func mask(_ name: String, in status: String) -> String? {
        status.split(separator: "\n").first { $0.hasPrefix(name + ":") }.map { String($0.dropFirst(name.count + 1)).filter { !$0.isWhitespace } }
    }

    @Test func aChildOfAThreadWithBlockedAndIgnoredSignalsStartsClean() throws {
        // What a Swift concurrency or NIO thread looks like: most signals blocked, SIGPIPE ignored.
        var all = sigset_t(), old = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_BLOCK, &all, &old)
        let oldPipe = signal(SIGPIPE, SIG_IGN)
        defer {
            pthread_sigmask(SIG_SETMASK, &old, nil)
            signal(SIGPIPE, oldPipe)
        }
        let r = try ChildProcess.run(["cat", "/proc/self/status"])
        #expect(r.status == 0)
        #expect(mask("SigBlk", in: r.stdout) == "0000000000000000")
        // Signals 32 and 33 are glibc's own (thread cancellation, setxid): no program can set
        // them, and glibc's exec start-up installs its handlers for them anyway.
        let ignored = UInt64(mask("SigIgn", in: r.stdout) ?? "", radix: 16)
        #expect(ignored.map { $0 & ~UInt64(0x3 << 31) } == 0, "SigIgn \(String(ignored ?? 0, radix: 16))")
    }

    @Test func theChildLeadsItsOwnSession() throws {
        let r = try ChildProcess.run(["sh", "-c", "echo $$; cut -d' ' -f6 /proc/$$/stat"])
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.count == 2 && lines[0] == lines[1], "pid and session id: \(lines)")
    }

    @Test func stdoutAndStderrAreReadTogetherWithoutDeadlock() throws {
        // 1 MiB on stderr before any stdout: reading stdout to EOF first would block forever
        // once the stderr pipe (64 KiB) is full.
        let script = "head -c 1048576 /dev/zero | tr '\\0' e >&2; head -c 1048576 /dev/zero | tr '\\0' o"
        let r = try ChildProcess.run(["sh", "-c", script])
        #expect(r.stderr.utf8.count == 1_048_576 && r.stdout.utf8.count == 1_048_576)
    }

    @Test func exitStatusesAndSignalsAreReported() throws {
        #expect(try ChildProcess.run(["sh", "-c", "exit 3"]).status == 3)
        #expect(try ChildProcess.run(["sh", "-c", "kill -TERM $$"]).status == 128 + SIGTERM)
        #expect(throws: ChildProcess.Failure.self) { try ChildProcess.check(["sh", "-c", "echo nope >&2; exit 1"]) }
        #expect(throws: ChildProcess.Failure.self) { try ChildProcess.run(["/nonexistent/loupe-test-binary"]) }
    }

    @Test func environmentAndWorkingDirectoryApply() throws {
        let r = try ChildProcess.run(["sh", "-c", "echo $LOUPE_TEST_VAR; pwd"], environment: ["LOUPE_TEST_VAR": "x y"], cwd: "/tmp")
        #expect(r.stdout == "x y\n/tmp\n")
    }

    @Test func aDetachedChildWritesItsLogAndIsItsOwnSession() throws {
        let log = "/tmp/loupe-childprocess-test-\(getpid()).log"
        defer { unlink(log) }
        let pid = try ChildProcess.spawnDetached(["sh", "-c", "echo out; echo err >&2; grep SigBlk /proc/self/status"],
                                                 log: log, cwd: "/", environment: [:])
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        let text = try readFile(log)
        #expect(text.contains("out\n") && text.contains("err\n"))
        #expect(mask("SigBlk", in: text) == "0000000000000000")
    }

    private func readFile(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
