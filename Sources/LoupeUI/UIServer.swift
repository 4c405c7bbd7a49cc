import Foundation
import GRPCCore
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import LoupeAPI
import LoupeFlow
import NIOCore
import NIOSSL
import ServiceLifecycle

/// `loupe ui`'s configuration (flags in `loupe ui --help`).
public struct UIConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 12000
    /// Bearer token (or the `loupe_ui_token` cookie) every request must carry; required on a
    /// non-loopback address unless TLS is on.
    public var authToken: String?
    public var tls: TLSConfiguration?
    /// Flows read from the server's history when the UI starts (Hubble UI asks for 10,000).
    public var history: UInt64 = 10_000

    public init() {}

    /// Whether `host` is a loopback address (only there may the UI run with neither token nor TLS).
    public static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}

/// The web server: the page (embedded), `/api/graph`, `/api/flows`, `/api/events` (Server-Sent
/// Events), `/api/status`. Everything a pod sends ends up on this page: the page renders it as
/// text only and the Content-Security-Policy allows no inline script, no other origin.
public enum UIServer {
    /// `onRunning` gets the address actually bound (`127.0.0.1:12000`), once it listens.
    public static func application(configuration: UIConfiguration, follower: FlowFollower, endpoint: HubbleEndpoint,
                                   logger: Logger, onRunning: @escaping @Sendable (String) -> Void) throws -> some ApplicationProtocol {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: SecurityHeaders())
        if let token = configuration.authToken {
            router.add(middleware: TokenAuthentication(token: token, secureCookie: configuration.tls != nil))
        }

        router.get("/") { _, _ in page(PackageResources.index_html, type: "text/html; charset=utf-8") }
        router.get("/app.js") { _, _ in page(PackageResources.app_js, type: "text/javascript; charset=utf-8") }
        router.get("/style.css") { _, _ in page(PackageResources.style_css, type: "text/css; charset=utf-8") }
        router.get("/api/status") { _, _ in try json(follower.status) }
        router.get("/api/graph") { request, _ in
            let q: GraphQuery
            do { q = try GraphQuery(parameters: parameters(request)) } catch { throw badRequest(error) }
            return try json(follower.graph(q))
        }
        router.get("/api/flows") { request, _ in try await flows(request, endpoint: endpoint) }
        router.get("/api/events") { request, _ in try events(request, follower: follower) }

        var server: HTTPServerBuilder = .http1()
        if let tls = configuration.tls { server = try .tls(.http1(), tlsConfiguration: tls) }
        return Application(router: router, server: server,
                           configuration: .init(address: .hostname(configuration.host, port: configuration.port),
                                                serverName: "loupe-ui"),
                           onServerRunning: { channel in
                               let address = channel.localAddress
                               let host = address?.ipAddress.map { $0.contains(":") ? "[\($0)]" : $0 } ?? configuration.host
                               onRunning("\(host):\(address?.port ?? configuration.port)")
                           },
                           logger: logger)
    }

    static func page(_ bytes: [UInt8], type: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = type
        headers[.cacheControl] = "no-cache"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    static func json(_ value: some Encodable) throws -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        headers[.cacheControl] = "no-store"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(value))))
    }

    /// A flow as the page may show it: the credential headers and URL user-info redacted again
    /// with Hubble's defaults (Loupe redacts when it records, but a Cilium agent or Relay may
    /// run with redaction off), so the page never shows a credential.
    static func shown(_ f: Flow_Flow) -> FlowRecord {
        var flow = Flow(f)
        Redaction().apply(&flow)
        return FlowRecord(flow: flow)
    }

    static func parameters(_ request: Request) -> [(String, String)] {
        request.uri.queryParameters.map { (String($0.key), String($0.value)) }
    }

    static func badRequest(_ error: any Error) -> HTTPError {
        HTTPError(.badRequest, message: "\(error)")
    }

    /// `/api/flows?<loupe observe filters>`: the same GetFlows request `loupe observe` sends for
    /// the same names, answered in `loupe observe -o json`'s lines.
    static func flows(_ request: Request, endpoint: HubbleEndpoint) async throws -> Response {
        let query: ObserveQuery, getFlows: Observer_GetFlowsRequest, extra: FlowFilter
        do {
            query = try ObserveQuery(parameters: parameters(request))
            getFlows = try query.request()
            extra = try query.clientSideFilter()
        } catch { throw badRequest(error) }
        let holds = query.clientSideKeep != nil
        let lines: [String]
        do {
            lines = try await endpoint.withObserver { observer in
                try await observer.getFlows(getFlows, options: HubbleEndpoint.options) { response in
                    // In `loupe observe -o json`'s order: lost-event lines as they come, flows as they
                    // come or, with client-side filters, the first/last N held ones at the end.
                    var lines: [String] = [], held: [String] = []
                    for try await message in response.messages {
                        switch message.responseTypes {
                        case .flow(let f)?:
                            let record = shown(f)
                            guard extra.matches(record.flow) else { continue }
                            guard holds else {
                                lines.append(FlowEncoding.jsonLine(record))
                                continue
                            }
                            held.append(FlowEncoding.jsonLine(record))
                            if query.isComplete(held: held.count) { return lines + held }
                        case .lostEvents(let l)?:
                            lines.append(FlowEncoding.lostEventsLine(count: l.numEventsLost, nodeName: message.nodeName))
                        default: break
                        }
                    }
                    return lines + query.chosen(from: held)
                }
            }
        } catch let e as RPCError where e.code == .invalidArgument {
            throw HTTPError(.badRequest, message: "the Hubble API refused the filter: \(e.message)")
        } catch {
            let problem = HubbleEndpoint.problem(error, server: endpoint.name)
            throw HTTPError(problem.notHubble ? .badGateway : .serviceUnavailable, message: problem.message)
        }
        var headers = HTTPFields()
        headers[.contentType] = "application/x-ndjson"
        headers[.cacheControl] = "no-store"
        let body = lines.isEmpty ? "" : lines.joined(separator: "\n") + "\n"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    /// `/api/events?<loupe observe filters>`: Server-Sent Events. `status` every second (the
    /// server's reachability, the graph's version: the page fetches the map when it changed),
    /// `flow` per matching flow (Hubble JSON lines), `skipped` when more arrived than a page can
    /// show in a tick.
    static func events(_ request: Request, follower: FlowFollower) throws -> Response {
        let subscriber: LiveSubscriber
        do {
            let query = try ObserveQuery(parameters: parameters(request).filter { !ObserveQuery.pagingNames.contains($0.0) })
            let extra = try query.clientSideFilter()
            subscriber = try LiveSubscriber(filters: FlowFilterSet(whitelist: query.whitelist(), blacklist: []),
                                            extra: query.clientSideFilters ? extra : nil)
        } catch { throw badRequest(error) }
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-store"
        let body = ResponseBody { writer in
            let id = follower.subscribe(subscriber)
            defer { follower.unsubscribe(id) }
            var lastStatus = ContinuousClock.now - .seconds(2)
            try await writer.write(ByteBuffer(string: "retry: 1000\n\n"))
            while !Task.isCancelled && !follower.isStopped {
                var out = ""
                let (flows, skipped) = subscriber.drain()
                for f in flows {
                    out += "event: flow\ndata: " + FlowEncoding.jsonLine(shown(f)) + "\n\n"
                }
                if skipped > 0 { out += "event: skipped\ndata: {\"count\":\(skipped)}\n\n" }
                if ContinuousClock.now - lastStatus >= .seconds(1) {
                    lastStatus = .now
                    let status = String(decoding: try encoder.encode(follower.status), as: UTF8.self)
                    out += "event: status\ndata: \(status)\n\n"
                }
                if !out.isEmpty { try await writer.write(ByteBuffer(string: out)) }
                try await Task.sleep(for: .milliseconds(250))
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: headers, body: body)
    }
}

/// Security headers on every answer: a CSP with no inline script and nothing from elsewhere,
/// no framing, no MIME sniffing, no referrer.
struct SecurityHeaders<Context: RequestContext>: RouterMiddleware {
    static var policy: ContentSecurityPolicy {
        [.defaultSrc(.none), .scriptSrc(.self), .styleSrc(.self), .imgSrc(.self, "data:"), .connectSrc(.self),
         .baseURI(.none), .formAction(.none), .frameAncestors(.none)]
    }
    let csp = ContentSecurityMiddleware<Context>(contentSecurityPolicy: Self.policy)

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response: Response
        do {
            response = try await csp.handle(request, context: context, next: next)
        } catch let e as HTTPResponseError {
            response = try e.response(from: request, context: context)
            response.headers[.contentSecurityPolicy] = Self.policy.description
            response.headers[.xContentTypeOptions] = "nosniff"
        }
        response.headers[HTTPField.Name("Referrer-Policy")!] = "no-referrer"
        response.headers[HTTPField.Name("X-Frame-Options")!] = "DENY"
        return response
    }
}

/// `--auth-token-file`: every request carries `Authorization: Bearer TOKEN` or the
/// `loupe_ui_token` cookie; `/?token=TOKEN` (the address `loupe ui` prints) sets the cookie and
/// redirects to `/`, so the token leaves the address bar.
struct TokenAuthentication<Context: RequestContext>: RouterMiddleware {
    let token: [UInt8]
    /// Over TLS the cookie is `Secure`.
    let secureCookie: Bool
    init(token: String, secureCookie: Bool) {
        self.token = Array(token.utf8)
        self.secureCookie = secureCookie
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if let bearer = request.headers[.authorization], bearer.hasPrefix("Bearer "), matches(String(bearer.dropFirst(7))) {
            return try await next(request, context)
        }
        if let cookie = request.cookies["loupe_ui_token"], matches(cookie.value) {
            return try await next(request, context)
        }
        if request.uri.path == "/", let t = request.uri.queryParameters["token"], matches(String(t)) {
            var response = Response.redirect(to: "/", type: .found)
            response.setCookie(.init(name: "loupe_ui_token", value: String(t), path: "/", secure: secureCookie, httpOnly: true,
                                     sameSite: .strict))
            return response
        }
        var headers = HTTPFields()
        headers[.wwwAuthenticate] = "Bearer realm=\"loupe ui\""
        headers[.contentType] = "text/plain; charset=utf-8"
        return Response(status: .unauthorized, headers: headers,
                        body: .init(byteBuffer: ByteBuffer(string: "loupe ui: a token is required (Authorization: Bearer …, or open the address loupe ui printed)\n")))
    }

    /// Constant-time comparison.
    func matches(_ candidate: String) -> Bool {
        let c = Array(candidate.utf8)
        guard c.count == token.count else { return false }
        var diff: UInt8 = 0
        for i in 0..<c.count { diff |= c[i] ^ token[i] }
        return diff == 0
    }
}
