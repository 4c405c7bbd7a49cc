import Foundation
import Yams

/// Where the API server is and how to authenticate to it: in-cluster (the service account's
/// token and CA) or a kubeconfig file's current context. Every problem names the file and field.
public struct KubeConfig: Sendable, Equatable {
    public enum Credential: Sendable, Equatable {
        case none
        case token(String)
        /// Re-read on every request: kubelet rotates projected service-account tokens.
        case tokenFile(String)
        case clientCertificate(certificatePEM: [UInt8], keyPEM: [UInt8])
    }

    public var server: String
    public var caPEM: [UInt8]?
    public var insecureSkipTLSVerify = false
    public var credential: Credential = .none
    /// Where this came from, for messages.
    public var origin: String

    public init(server: String, caPEM: [UInt8]? = nil, credential: Credential = .none, origin: String) {
        self.server = server
        self.caPEM = caPEM
        self.credential = credential
        self.origin = origin
    }

    public static let serviceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount"

    /// `KUBERNETES_SERVICE_HOST`/`_PORT`, the service account's `token` and `ca.crt`.
    public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment,
                                 directory: String = serviceAccountDirectory) throws -> KubeConfig {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty,
              let port = environment["KUBERNETES_SERVICE_PORT"], !port.isEmpty else {
            throw KubeConfigError(origin: "in-cluster", field: "KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT",
                                  message: "not set: not running in a pod (use --kubeconfig FILE)")
        }
        let token = directory + "/token"
        guard FileManager.default.isReadableFile(atPath: token) else {
            throw KubeConfigError(origin: "in-cluster", field: token, message: "cannot read the service account token")
        }
        let ca = FileManager.default.contents(atPath: directory + "/ca.crt").map { Array($0) }
        let h = host.contains(":") ? "[\(host)]" : host
        return KubeConfig(server: "https://\(h):\(port)", caPEM: ca, credential: .tokenFile(token), origin: "in-cluster")
    }

    /// A kubeconfig's current context: its cluster (server, CA data or file, insecure flag) and
    /// user (token, token file, client certificate and key as data or files). Relative file paths
    /// are relative to the kubeconfig, as kubectl reads them.
    public static func load(file: String) throws -> KubeConfig {
        guard let data = FileManager.default.contents(atPath: file), let text = String(data: data, encoding: .utf8) else {
            throw KubeConfigError(origin: file, field: "(file)", message: "cannot read")
        }
        return try parse(text, file: file)
    }

    public static func parse(_ text: String, file: String) throws -> KubeConfig {
        let root: Any?
        do { root = try Yams.load(yaml: text) } catch {
            throw KubeConfigError(origin: file, field: "(document)", message: "not valid YAML: \(error)")
        }
        guard let doc = root as? [String: Any] else {
            throw KubeConfigError(origin: file, field: "(document)", message: "expected a kubeconfig mapping (apiVersion: v1, kind: Config)")
        }
        let dir = URL(fileURLWithPath: file).deletingLastPathComponent().path
        func path(_ p: String) -> String { p.hasPrefix("/") ? p : dir + "/" + p }
        func named(_ list: String, _ name: String, _ key: String) throws -> [String: Any] {
            guard let entries = doc[list] as? [Any] else {
                throw KubeConfigError(origin: file, field: list, message: "missing (a list of named \(key) entries)")
            }
            for case let e as [String: Any] in entries where e["name"] as? String == name {
                guard let body = e[key] as? [String: Any] else {
                    throw KubeConfigError(origin: file, field: "\(list)[name=\(name)].\(key)", message: "missing")
                }
                return body
            }
            throw KubeConfigError(origin: file, field: list, message: "no entry named \"\(name)\"")
        }
        guard let current = doc["current-context"] as? String, !current.isEmpty else {
            throw KubeConfigError(origin: file, field: "current-context", message: "missing: no context to use")
        }
        let context = try named("contexts", current, "context")
        guard let clusterName = context["cluster"] as? String else {
            throw KubeConfigError(origin: file, field: "contexts[name=\(current)].context.cluster", message: "missing")
        }
        let cluster = try named("clusters", clusterName, "cluster")
        guard let server = cluster["server"] as? String, let url = URL(string: server), let scheme = url.scheme,
              ["https", "http"].contains(scheme), url.host != nil else {
            throw KubeConfigError(origin: file, field: "clusters[name=\(clusterName)].cluster.server",
                                  message: "expected an https:// URL, got \(String(describing: cluster["server"] ?? "nothing"))")
        }
        var config = KubeConfig(server: server.hasSuffix("/") ? String(server.dropLast()) : server, origin: file)
        config.insecureSkipTLSVerify = cluster["insecure-skip-tls-verify"] as? Bool ?? false
        if let b64 = cluster["certificate-authority-data"] as? String {
            guard let d = Data(base64Encoded: b64, options: .ignoreUnknownCharacters) else {
                throw KubeConfigError(origin: file, field: "clusters[name=\(clusterName)].cluster.certificate-authority-data", message: "not base64")
            }
            config.caPEM = Array(d)
        } else if let f = cluster["certificate-authority"] as? String {
            guard let d = FileManager.default.contents(atPath: path(f)) else {
                throw KubeConfigError(origin: file, field: "clusters[name=\(clusterName)].cluster.certificate-authority", message: "cannot read \(path(f))")
            }
            config.caPEM = Array(d)
        }
        if let userName = context["user"] as? String {
            let user = try named("users", userName, "user")
            let at = "users[name=\(userName)].user"
            func bytes(_ dataKey: String, _ fileKey: String) throws -> [UInt8]? {
                if let b64 = user[dataKey] as? String {
                    guard let d = Data(base64Encoded: b64, options: .ignoreUnknownCharacters) else {
                        throw KubeConfigError(origin: file, field: "\(at).\(dataKey)", message: "not base64")
                    }
                    return Array(d)
                }
                if let f = user[fileKey] as? String {
                    guard let d = FileManager.default.contents(atPath: path(f)) else {
                        throw KubeConfigError(origin: file, field: "\(at).\(fileKey)", message: "cannot read \(path(f))")
                    }
                    return Array(d)
                }
                return nil
            }
            if let token = user["token"] as? String {
                config.credential = .token(token)
            } else if let f = user["tokenFile"] as? String {
                config.credential = .tokenFile(path(f))
            } else if let cert = try bytes("client-certificate-data", "client-certificate") {
                guard let key = try bytes("client-key-data", "client-key") else {
                    throw KubeConfigError(origin: file, field: "\(at).client-key-data", message: "a client certificate needs its key")
                }
                config.credential = .clientCertificate(certificatePEM: cert, keyPEM: key)
            } else if user["exec"] != nil || user["auth-provider"] != nil {
                throw KubeConfigError(origin: file, field: "\(at).exec", message: "exec and auth-provider credentials are not supported (use a token or a client certificate)")
            }
        }
        return config
    }
}

public struct KubeConfigError: Error, CustomStringConvertible, Sendable, Equatable {
    public var origin: String
    public var field: String
    public var message: String
    public var description: String { "\(origin): \(field): \(message)" }
}
