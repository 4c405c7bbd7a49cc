/// A Kubernetes label selector as Cilium reads it: `matchLabels` and `matchExpressions`
/// (In, NotIn, Exists, DoesNotExist). Keys may carry Cilium's `k8s:` or `any:` source prefix.
public struct LabelSelector: Sendable, Equatable {
    public enum Operator: String, Sendable, Equatable { case `in` = "In", notIn = "NotIn", exists = "Exists", doesNotExist = "DoesNotExist" }
    public struct Expression: Sendable, Equatable {
        public var key: String
        public var op: Operator
        public var values: [String]
    }

    public var matchLabels: [String: String]
    public var matchExpressions: [Expression]

    /// The label Cilium gives every pod for its namespace.
    public static let namespaceLabel = "io.kubernetes.pod.namespace"

    public init(matchLabels: [String: String] = [:], matchExpressions: [Expression] = []) {
        self.matchLabels = Dictionary(uniqueKeysWithValues: matchLabels.map { (Self.normalize($0.key), $0.value) })
        self.matchExpressions = matchExpressions.map { Expression(key: Self.normalize($0.key), op: $0.op, values: $0.values) }
    }

    /// `k8s:app` and `any:app` mean `app` here: every label Loupe knows comes from Kubernetes.
    static func normalize(_ key: String) -> String {
        for prefix in ["k8s:", "any:"] where key.hasPrefix(prefix) { return String(key.dropFirst(prefix.count)) }
        return key
    }

    public var isEmpty: Bool { matchLabels.isEmpty && matchExpressions.isEmpty }

    /// True when the selector constrains the namespace itself (then a namespaced policy's
    /// implicit own-namespace restriction does not apply).
    public var mentionsNamespace: Bool {
        matchLabels[Self.namespaceLabel] != nil || matchExpressions.contains { $0.key == Self.namespaceLabel }
    }

    /// `labels` must include the namespace label.
    public func matches(_ labels: [String: String]) -> Bool {
        for (k, v) in matchLabels where labels[k] != v { return false }
        for e in matchExpressions {
            let value = labels[e.key]
            switch e.op {
            case .in: if value == nil || !e.values.contains(value!) { return false }
            case .notIn: if let value, e.values.contains(value) { return false }
            case .exists: if value == nil { return false }
            case .doesNotExist: if value != nil { return false }
            }
        }
        return true
    }
}

extension Pod {
    /// The labels selectors see: the pod's own plus its namespace label.
    public var selectorLabels: [String: String] {
        var l = labels
        l[LabelSelector.namespaceLabel] = namespace
        return l
    }
}
