import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL

/// A Kubernetes object as the API returned it (decoded JSON). `@unchecked Sendable`: the
/// dictionary is never mutated after decoding.
public struct KubeObject: @unchecked Sendable {
    public let json: [String: Any]
    public init(_ json: [String: Any]) { self.json = json }

    public var metadata: [String: Any] { json["metadata"] as? [String: Any] ?? [:] }
    public var name: String { metadata["name"] as? String ?? "" }
    public var namespace: String? { metadata["namespace"] as? String }
    public var resourceVersion: String { metadata["resourceVersion"] as? String ?? "" }
    /// `namespace/name`, or `name` for cluster-scoped objects.
    public var key: String { namespace.map { "\($0)/\(name)" } ?? name }
}

/// A resource the agent lists and watches.
public struct KubernetesResource: Sendable, Hashable {
    public var name: String
    /// `v1` or `group/version`.
    public var groupVersion: String
    public var optional: Bool

    public var path: String { groupVersion == "v1" ? "/api/v1/\(name)" : "/apis/\(groupVersion)/\(name)" }

    public static let namespaces = KubernetesResource(name: "namespaces", groupVersion: "v1", optional: false)
    public static let pods = KubernetesResource(name: "pods", groupVersion: "v1", optional: false)
    public static let nodes = KubernetesResource(name: "nodes", groupVersion: "v1", optional: false)
    public static let ciliumNetworkPolicies = KubernetesResource(name: "ciliumnetworkpolicies", groupVersion: "cilium.io/v2", optional: true)
    public static let ciliumClusterwideNetworkPolicies = KubernetesResource(name: "ciliumclusterwidenetworkpolicies", groupVersion: "cilium.io/v2", optional: true)
}

/// What the API server said when it said no.
public enum KubernetesAPIError: Error, CustomStringConvertible {
    /// 410 Gone: the resourceVersion is too old; list again.
    case gone(String)
    case status(code: Int, path: String, message: String)
    case unreachable(server: String, reason: String)
    case malformed(path: String, reason: String)

    public var description: String {
        switch self {
        case .gone(let m): return "410 Gone: \(m)"
        case .status(401, let path, let m): return "401 Unauthorized on \(path): the token or client certificate was refused (expired or revoked?): \(m)"
        case .status(403, let path, let m): return "403 Forbidden on \(path): the service account may not do this (RBAC): \(m)"
        case .status(let code, let path, let m): return "HTTP \(code) on \(path): \(m)"
        case .unreachable(let server, let reason): return "cannot reach the API server \(server): \(reason)"
        case .malformed(let path, let reason): return "malformed response on \(path): \(reason)"
        }
    }
}

/// One watch event: ADDED, MODIFIED, DELETED, BOOKMARK or ERROR with its object.
public struct WatchEvent: Sendable {
    public var type: String
    public var object: KubeObject
}

/// The API server over AsyncHTTPClient: GET of lists (paginated), watches as streams of JSON
/// lines, discovery. Authentication per `KubeConfig`; a token file is read for each request.
public final class KubernetesClient: Sendable {
    public let config: KubeConfig
    private let http: HTTPClient

    public init(config: KubeConfig) throws {
        self.config = config
        var tls = TLSConfiguration.makeClientConfiguration()
        do {
            if let ca = config.caPEM {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(ca))
            }
            if config.insecureSkipTLSVerify { tls.certificateVerification = .none }
            if case .clientCertificate(let cert, let key) = config.credential {
                tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(cert).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: key, format: .pem))
            }
        } catch {
            throw KubeConfigError(origin: config.origin, field: "certificates", message: "not usable PEM: \(error)")
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls, timeout: .init(connect: .seconds(5), read: nil))
        configuration.httpVersion = .http1Only
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    public func shutdown() async {
        try? await http.shutdown()
    }

    private func request(_ pathAndQuery: String) throws -> HTTPClientRequest {
        var r = HTTPClientRequest(url: config.server + pathAndQuery)
        r.headers.add(name: "Accept", value: "application/json")
        r.headers.add(name: "User-Agent", value: "loupe/\(LoupeVersion.current)")
        switch config.credential {
        case .token(let t): r.headers.add(name: "Authorization", value: "Bearer \(t)")
        case .tokenFile(let f):
            guard let t = try? String(contentsOfFile: f, encoding: .utf8) else {
                throw KubeConfigError(origin: config.origin, field: f, message: "cannot read the token")
            }
            r.headers.add(name: "Authorization", value: "Bearer \(t.trimmingCharacters(in: .whitespacesAndNewlines))")
        case .none, .clientCertificate: break
        }
        return r
    }

    private func send(_ pathAndQuery: String, deadline: NIODeadline) async throws -> HTTPClientResponse {
        let r = try request(pathAndQuery)
        do {
            return try await http.execute(r, deadline: deadline)
        } catch {
            throw KubernetesAPIError.unreachable(server: config.server, reason: "\(error)")
        }
    }

    /// GET returning a JSON object; non-2xx statuses become `KubernetesAPIError`.
    public func get(_ pathAndQuery: String, timeout: TimeAmount = .seconds(30)) async throws -> [String: Any] {
        let response = try await send(pathAndQuery, deadline: .now() + timeout)
        let body = try await response.body.collect(upTo: 512 << 20)
        let json = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any]
        try Self.check(response.status.code, path: pathAndQuery, json: json)
        guard let json else { throw KubernetesAPIError.malformed(path: pathAndQuery, reason: "not a JSON object") }
        return json
    }

    static func check(_ code: UInt, path: String, json: [String: Any]?) throws {
        guard !(200..<300).contains(code) else { return }
        let message = json?["message"] as? String ?? "(no message)"
        if code == 410 { throw KubernetesAPIError.gone(message) }
        throw KubernetesAPIError.status(code: Int(code), path: path, message: message)
    }

    /// One page of a list (`limit`, `continue`).
    public func list(_ resource: KubernetesResource, limit: Int, continue token: String?) async throws
        -> (items: [KubeObject], resourceVersion: String, continue: String?) {
        var query = "?limit=\(limit)"
        if let token { query += "&continue=" + (token.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? token) }
        let json = try await get(resource.path + query)
        guard let items = json["items"] as? [Any] else { throw KubernetesAPIError.malformed(path: resource.path, reason: "a list without items") }
        let meta = json["metadata"] as? [String: Any] ?? [:]
        let next = (meta["continue"] as? String).flatMap { $0.isEmpty ? nil : $0 }
        return (items.compactMap { ($0 as? [String: Any]).map(KubeObject.init) }, meta["resourceVersion"] as? String ?? "", next)
    }

    /// Watches from `resourceVersion` with bookmarks; the stream ends when the server ends the
    /// watch (`timeoutSeconds`) and throws when the connection breaks.
    public func watch(_ resource: KubernetesResource, resourceVersion: String, timeoutSeconds: Int) async throws
        -> AsyncThrowingStream<WatchEvent, Error> {
        let path = resource.path + "?watch=1&allowWatchBookmarks=true&timeoutSeconds=\(timeoutSeconds)&resourceVersion="
            + (resourceVersion.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? resourceVersion)
        // The deadline covers the response head only (AsyncHTTPClient drops it once the head is
        // in); the body streams for as long as the server keeps the watch open.
        let response = try await send(path, deadline: .now() + .seconds(15))
        if !(200..<300).contains(response.status.code) {
            let body = try? await response.body.collect(upTo: 1 << 20)
            let json = body.flatMap { try? JSONSerialization.jsonObject(with: Data(buffer: $0)) as? [String: Any] }
            try Self.check(response.status.code, path: path, json: json)
        }
        let body = response.body
        return AsyncThrowingStream { continuation in
            let task = Task {
                var pending = ByteBuffer()
                do {
                    for try await chunk in body {
                        var chunk = chunk
                        pending.writeBuffer(&chunk)
                        while let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                            let length = newline - pending.readerIndex
                            let line = pending.readSlice(length: length)!
                            pending.moveReaderIndex(forwardBy: 1)
                            guard line.readableBytes > 0 else { continue }
                            guard let json = try? JSONSerialization.jsonObject(with: Data(buffer: line)) as? [String: Any],
                                  let type = json["type"] as? String, let object = json["object"] as? [String: Any] else {
                                throw KubernetesAPIError.malformed(path: path, reason: "a watch line that is not {type, object}")
                            }
                            continuation.yield(WatchEvent(type: type, object: KubeObject(object)))
                        }
                        pending.discardReadBytes()
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error is KubernetesAPIError ? error : KubernetesAPIError.unreachable(server: self.config.server, reason: "watch broke: \(error)"))
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Whether discovery lists `resource` (404 on its group version: the CRD is not installed).
    public func serves(_ resource: KubernetesResource) async throws -> Bool {
        let path = resource.groupVersion == "v1" ? "/api/v1" : "/apis/\(resource.groupVersion)"
        do {
            let json = try await get(path)
            let resources = json["resources"] as? [Any] ?? []
            return resources.contains { ($0 as? [String: Any])?["name"] as? String == resource.name }
        } catch KubernetesAPIError.status(404, _, _) {
            return false
        }
    }
}
