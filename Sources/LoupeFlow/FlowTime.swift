import Glibc
import Synchronization

/// Wall-clock timestamps as Hubble prints them: RFC 3339 with nanoseconds, UTC.
public enum FlowTime {
    public static func now() -> (seconds: Int, nanoseconds: Int) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return (ts.tv_sec, ts.tv_nsec)
    }

    /// `2026-11-24T22:45:32.123456789Z`
    public static func rfc3339(seconds: Int, nanoseconds: Int) -> String {
        guard (0..<1_000_000_000).contains(nanoseconds) else { return datePrefix(seconds) + "\(nanoseconds)Z" }
        // The date-and-second part is formatted once per second and reused (formatting it in
        // full cost ~5 % of the DNS proxy's CPU at 20k queries/s).
        var prefix = secondPrefix.withLock { cache -> String in
            if cache.second != seconds { cache = (seconds, datePrefix(seconds)) }
            return cache.prefix
        }
        // Written in one allocation: the prefix, nine digits of nanoseconds, "Z".
        return prefix.withUTF8 { head in
            String(unsafeUninitializedCapacity: head.count + 10) { out in
                _ = out.initialize(fromContentsOf: head)
                var v = nanoseconds
                for i in stride(from: head.count + 8, through: head.count, by: -1) {
                    out[i] = UInt8(ascii: "0") + UInt8(v % 10)
                    v /= 10
                }
                out[head.count + 9] = UInt8(ascii: "Z")
                return head.count + 10
            }
        }
    }

    /// `2026-11-24T22:45:32.`
    static func datePrefix(_ seconds: Int) -> String {
        var t = time_t(seconds)
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        return "\(pad(Int(tm.tm_year) + 1900, 4))-\(pad(Int(tm.tm_mon) + 1, 2))-\(pad(Int(tm.tm_mday), 2))T"
            + "\(pad(Int(tm.tm_hour), 2)):\(pad(Int(tm.tm_min), 2)):\(pad(Int(tm.tm_sec), 2))."
    }

    private static let secondPrefix = Mutex<(second: Int, prefix: String)>((Int.min, ""))

    public static func nowRFC3339() -> String {
        let n = now()
        return rfc3339(seconds: n.seconds, nanoseconds: n.nanoseconds)
    }

    /// Seconds and nanoseconds since the epoch of an RFC 3339 UTC timestamp as `rfc3339` writes
    /// it (`2026-11-24T22:45:32.123456789Z`; fewer fraction digits, or none, also read); nil
    /// for anything else.
    public static func parse(_ text: String) -> (seconds: Int, nanoseconds: Int)? {
        let b = Array(text.utf8)
        func num(_ r: Range<Int>) -> Int? {
            guard r.upperBound <= b.count else { return nil }
            var v = 0
            for i in r {
                guard (48...57).contains(b[i]) else { return nil }
                v = v * 10 + Int(b[i] - 48)
            }
            return v
        }
        guard b.count >= 20, b[4] == 45, b[7] == 45, b[10] == 84, b[13] == 58, b[16] == 58, b.last == 90,
              let year = num(0..<4), let month = num(5..<7), let day = num(8..<10),
              let hour = num(11..<13), let minute = num(14..<16), let second = num(17..<19) else { return nil }
        var nanos = 0
        if b.count > 20 {
            guard b[19] == 46, b.count - 21 <= 9, let fraction = num(20..<(b.count - 1)) else { return nil }
            nanos = fraction
            for _ in 0..<(9 - (b.count - 21)) { nanos *= 10 }
        }
        var tm = Glibc.tm()
        tm.tm_year = Int32(year - 1900)
        tm.tm_mon = Int32(month - 1)
        tm.tm_mday = Int32(day)
        tm.tm_hour = Int32(hour)
        tm.tm_min = Int32(minute)
        tm.tm_sec = Int32(second)
        return (Int(timegm(&tm)), nanos)
    }

    /// `Nov 24 22:45:32.123` (`Dec  2 …`: the day padded with a space) from an RFC 3339
    /// timestamp, as `hubble observe` prints it.
    public static func compact(_ rfc3339: String) -> String {
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        let chars = Array(rfc3339)
        guard chars.count >= 19, let month = Int(String(chars[5...6])), (1...12).contains(month) else { return rfc3339 }
        let day = chars[8] == "0" ? " " + String(chars[9]) : String(chars[8...9])
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

/// Version-4 UUIDs for flows. Flow IDs need uniqueness, not secrecy: a SplitMix64 sequence
/// seeded once from the system RNG gives 122 random-looking bits without a getrandom(2) per
/// flow (which cost a fifth of the proxy's CPU at 8k requests/s).
public enum FlowUUID {
    private static let state = Atomic<UInt64>(UInt64.random(in: .min ... .max))
    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    static func next() -> UInt64 {
        var z = state.wrappingAdd(0x9E37_79B9_7F4A_7C15, ordering: .relaxed).newValue
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public static func make() -> String {
        let (hi, lo) = bits()
        return text(hi, lo)
    }

    /// A fresh id's 128 bits, version and variant set.
    public static func bits() -> (UInt64, UInt64) {
        let hi = (next() & ~0xF000) | 0x4000                            // version 4
        let lo = (next() & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000 // RFC 4122 variant
        return (hi, lo)
    }

    /// `xxxxxxxx-xxxx-4xxx-Nxxx-xxxxxxxxxxxx`
    public static func text(_ hi: UInt64, _ lo: UInt64) -> String {
        String(unsafeUninitializedCapacity: 36) { buf in
            var i = 0
            func put(_ v: UInt64, _ nibbles: Int) {
                for n in stride(from: nibbles - 1, through: 0, by: -1) {
                    buf[i] = hex[Int((v >> (UInt64(n) * 4)) & 0xF)]
                    i += 1
                }
            }
            put(hi >> 32, 8); buf[i] = UInt8(ascii: "-"); i += 1
            put((hi >> 16) & 0xFFFF, 4); buf[i] = UInt8(ascii: "-"); i += 1
            put(hi & 0xFFFF, 4); buf[i] = UInt8(ascii: "-"); i += 1
            put(lo >> 48, 4); buf[i] = UInt8(ascii: "-"); i += 1
            put(lo & 0xFFFF_FFFF_FFFF, 12)
            return i
        }
    }
}
