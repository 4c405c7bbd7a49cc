import Foundation

/// Runs the external network tools the lab is built with (`ip`, `nsenter`): the lab is test
/// scaffolding, so it uses the same commands an operator would type.
public enum Shell {
    public struct Failure: Error, CustomStringConvertible {
        public var command: [String]
        public var status: Int32
        public var output: String
        public var description: String { "`\(command.joined(separator: " "))` exited \(status): \(output.trimmingCharacters(in: .whitespacesAndNewlines))" }
    }

    /// Runs `argv`, returns its stdout; throws with stderr on a non-zero exit.
    @discardableResult
    public static func run(_ argv: [String], allowFailure: Bool = false) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = argv
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        if p.terminationStatus != 0 && !allowFailure {
            throw Failure(command: argv, status: p.terminationStatus, output: String(decoding: e, as: UTF8.self))
        }
        return String(decoding: o, as: UTF8.self)
    }

    /// Starts `argv` in the background, output appended to `log`; the process writes its own PID
    /// to `pidFile` before it execs, so the PID recorded is exactly the one running `argv`.
    public static func spawnDetached(_ argv: [String], log: String, pidFile: String, cwd: String, environment: [String: String]) throws {
        FileManager.default.createFile(atPath: log, contents: nil)
        guard let fh = FileHandle(forWritingAtPath: log) else { throw Failure(command: argv, status: -1, output: "cannot open \(log)") }
        fh.seekToEndOfFile()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "echo $$ > \"$0\"; exec \"$@\"", pidFile] + argv
        p.standardOutput = fh
        p.standardError = fh
        p.standardInput = FileHandle.nullDevice
        p.currentDirectoryURL = URL(fileURLWithPath: cwd)
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        p.environment = env
        try p.run()
    }
}
