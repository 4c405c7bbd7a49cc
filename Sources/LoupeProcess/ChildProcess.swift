import CLoupeProcess
import Glibc

/// Every child process Loupe starts — lab pods and lab hosts, the `ip`/`nsenter` helpers, the
/// agent's re-exec into the lab's node netns — starts here: with an empty signal mask, default
/// signal dispositions and its own session. A child started from a Swift thread otherwise
/// inherits that thread's blocked signals and NIO's ignored SIGPIPE: a dnsmasq so started
/// never reaps its TCP children (SIGCHLD blocked) and never stops on SIGTERM.
public enum ChildProcess {
    public struct Failure: Error, CustomStringConvertible {
        public var command: [String]
        /// Exit status (128 + N when killed by signal N), or -1 when it could not start.
        public var status: Int32
        public var output: String
        public var description: String {
            "`\(command.joined(separator: " "))` \(status < 0 ? "could not start" : "exited \(status)"): \(output.trimmingWhitespace)"
        }
    }

    public struct Output: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// Runs `argv` (looked up in PATH) to completion with stdin from /dev/null, capturing
    /// stdout and stderr. Both pipes are drained together (poll), so a child that fills one
    /// while the other is read cannot deadlock with us.
    public static func run(_ argv: [String], environment: [String: String] = [:], cwd: String? = nil) throws -> Output {
        // (Other children spawned meanwhile cannot inherit these: loupe_spawn closes every
        // descriptor above 2 in the child.)
        var outPipe: [Int32] = [-1, -1], errPipe: [Int32] = [-1, -1]
        guard pipe(&outPipe) == 0 else { throw Failure(command: argv, status: -1, output: "pipe: \(errnoText())") }
        guard pipe(&errPipe) == 0 else {
            close(outPipe[0]); close(outPipe[1])
            throw Failure(command: argv, status: -1, output: "pipe: \(errnoText())")
        }
        let pid: pid_t
        do {
            pid = try spawn(argv, environment: environment, cwd: cwd, stdout: outPipe[1], stderr: errPipe[1])
        } catch {
            for fd in outPipe + errPipe { close(fd) }
            throw error
        }
        close(outPipe[1]); close(errPipe[1])
        let (out, err) = drain(outPipe[0], errPipe[0])
        close(outPipe[0]); close(errPipe[0])
        return Output(status: wait(pid), stdout: String(decoding: out, as: UTF8.self), stderr: String(decoding: err, as: UTF8.self))
    }

    /// `run` that throws (with stderr) on a non-zero exit and returns stdout.
    @discardableResult
    public static func check(_ argv: [String], environment: [String: String] = [:]) throws -> String {
        let r = try run(argv, environment: environment)
        guard r.status == 0 else { throw Failure(command: argv, status: r.status, output: r.stderr) }
        return r.stdout
    }

    /// Starts `argv` in the background in a new session: stdout and stderr appended to `log`,
    /// stdin from /dev/null, working directory `cwd`, `environment` added to ours. Returns its PID
    /// (the child is not waited for: a short-lived caller leaves it to init).
    public static func spawnDetached(_ argv: [String], log: String, cwd: String, environment: [String: String]) throws -> pid_t {
        let fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Failure(command: argv, status: -1, output: "cannot open \(log): \(errnoText())") }
        defer { close(fd) }
        return try spawn(argv, environment: environment, cwd: cwd, stdout: fd, stderr: fd)
    }

    /// Replaces this process with `argv` (PATH lookup), with the signal mask emptied and ignored
    /// signals back at their defaults — an exec keeps both otherwise.
    public static func exec(_ argv: [String]) throws -> Never {
        var cargs = argv.map { strdup($0) }
        cargs.append(nil)
        _ = loupe_exec(&cargs)
        let why = errnoText()
        for p in cargs { free(p) }
        throw Failure(command: argv, status: -1, output: "exec \(argv.first ?? ""): \(why)")
    }

    // MARK: building blocks

    /// posix_spawn with the clean signal state and a new session (CLoupeProcess).
    static func spawn(_ argv: [String], environment: [String: String], cwd: String?, stdout: Int32, stderr: Int32) throws -> pid_t {
        guard !argv.isEmpty else { throw Failure(command: argv, status: -1, output: "empty command") }
        var env = currentEnvironment()
        for (k, v) in environment { env[k] = v }
        var cargs = argv.map { strdup($0) } + [nil]
        var cenv = env.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in cargs { free(p) }
            for p in cenv { free(p) }
        }
        var pid: pid_t = 0
        let rc = cwd.map { dir in dir.withCString { loupe_spawn(&cargs, &cenv, $0, -1, stdout, stderr, 1, &pid) } }
            ?? loupe_spawn(&cargs, &cenv, nil, -1, stdout, stderr, 1, &pid)
        guard rc == 0 else { throw Failure(command: argv, status: -1, output: String(cString: strerror(rc))) }
        return pid
    }

    /// Reads both descriptors to EOF, whichever has data first.
    static func drain(_ a: Int32, _ b: Int32) -> ([UInt8], [UInt8]) {
        var out: [[UInt8]] = [[], []]
        var fds = [pollfd(fd: a, events: Int16(POLLIN), revents: 0), pollfd(fd: b, events: Int16(POLLIN), revents: 0)]
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while fds.contains(where: { $0.fd >= 0 }) {
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            for i in fds.indices where fds[i].fd >= 0 && fds[i].revents != 0 {
                let n = read(fds[i].fd, &chunk, chunk.count)
                if n > 0 {
                    out[i] += chunk[0..<n]
                } else if n == 0 || (errno != EINTR && errno != EAGAIN) {
                    fds[i].fd = -1 // EOF (poll ignores negative descriptors)
                }
            }
        }
        return (out[0], out[1])
    }

    /// Waits for `pid`; the exit status, or 128 + the signal that ended it.
    static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    static func currentEnvironment() -> [String: String] {
        var env: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        return env
    }

    static func errnoText() -> String { String(cString: strerror(errno)) }
}

/// This process's own standard output.
public enum StandardOutput {
    /// Line-buffered even into a pipe: a follower sees each line as it is printed.
    public static func lineBuffered() { loupe_stdout_line_buffered() }
}

fileprivate extension String {
    var trimmingWhitespace: String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s.removeFirst() }
        while let c = s.last, c.isWhitespace { s.removeLast() }
        return String(s)
    }
}
