import Glibc

/// Wall-clock timestamps as Hubble prints them: RFC 3339 with nanoseconds, UTC.
public enum FlowTime {
    public static func now() -> (seconds: Int, nanoseconds: Int) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return (ts.tv_sec, ts.tv_nsec)
    }

    /// `2026-11-24T22:45:32.123456789Z`
    public static func rfc3339(seconds: Int, nanoseconds: Int) -> String {
        var t = time_t(seconds)
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        return "\(pad(Int(tm.tm_year) + 1900, 4))-\(pad(Int(tm.tm_mon) + 1, 2))-\(pad(Int(tm.tm_mday), 2))T"
            + "\(pad(Int(tm.tm_hour), 2)):\(pad(Int(tm.tm_min), 2)):\(pad(Int(tm.tm_sec), 2)).\(pad(nanoseconds, 9))Z"
    }

    public static func nowRFC3339() -> String {
        let n = now()
        return rfc3339(seconds: n.seconds, nanoseconds: n.nanoseconds)
    }

    /// `Nov 24 22:45:32.123` from an RFC 3339 timestamp, as `hubble observe` prints it.
    public static func compact(_ rfc3339: String) -> String {
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        let chars = Array(rfc3339)
        guard chars.count >= 19, let month = Int(String(chars[5...6])), (1...12).contains(month) else { return rfc3339 }
        let day = String(chars[8...9])
        let clock = String(chars[11...18])
        var millis = ""
        if chars.count > 23, chars[19] == "." { millis = "." + String(chars[20...22]) }
        return "\(months[month - 1]) \(day) \(clock)\(millis)"
    }

    static func pad(_ v: Int, _ width: Int) -> String {
        let s = String(v)
        return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
    }
}

/// Random version-4 UUIDs for flows.
public enum FlowUUID {
    public static func make() -> String {
        var g = SystemRandomNumberGenerator()
        var bytes = (0..<16).map { _ in UInt8.random(in: 0...255, using: &g) }
        bytes[6] = (bytes[6] & 0x0f) | 0x40
        bytes[8] = (bytes[8] & 0x3f) | 0x80
        let hex = bytes.map { b -> String in
            let s = String(b, radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined()
        let c = Array(hex)
        return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-" + String(c[16..<20]) + "-" + String(c[20..<32])
    }
}
