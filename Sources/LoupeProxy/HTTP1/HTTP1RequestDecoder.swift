import LoupeProtocols
import NIOCore
import NIOHTTP1

/// The client side's HTTP/1 decoder: `HTTP1RequestParser` (methods and header names by the
/// grammar, one framing decision per message) turned into NIO's request parts. NIO's own
/// decoder (llhttp) knows a fixed list of methods and refuses `get` or `BREW` as malformed.
/// Body bytes are slices of what was read, never copied.
struct HTTP1RequestDecoder: ByteToMessageDecoder {
    typealias InboundOut = HTTPServerRequestPart

    private var parser: HTTP1RequestParser

    init(maxHeaderBytes: Int) {
        parser = HTTP1RequestParser(maxHeaderBytes: maxHeaderBytes)
    }

    /// Steps until the parser needs more bytes: a message's end often takes no bytes of its
    /// own (a body-less request, the last byte of a sized body), and ByteToMessageHandler does
    /// not call `decode` again on an empty buffer.
    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        while true {
            let (step, consumed) = try buffer.withUnsafeReadableBytes { try parser.step($0) }
            switch step {
            case .needMore, .stopped:
                return .needMoreData
            case .skip:
                buffer.moveReaderIndex(forwardBy: consumed)
            case .head(let h):
                buffer.moveReaderIndex(forwardBy: consumed)
                let head = HTTPRequestHead(version: HTTPVersion(major: h.major, minor: h.minor), method: HTTPMethod(rawValue: h.method),
                                           uri: h.target, headers: HTTPHeaders(h.fields.map { ($0.name, $0.value) }))
                context.fireChannelRead(wrapInboundOut(.head(head)))
            case .body(let n):
                context.fireChannelRead(wrapInboundOut(.body(buffer.readSlice(length: n)!)))
            case .end(let trailers):
                buffer.moveReaderIndex(forwardBy: consumed)
                context.fireChannelRead(wrapInboundOut(.end(trailers.map { HTTPHeaders($0.map { ($0.name, $0.value) }) })))
            }
        }
    }

    /// At EOF: whatever is complete is delivered; a message cut short ends with the FIN that the
    /// connection passes on, as it would between the two peers directly. On removal (after an
    /// upgrade or CONNECT) the bytes the parser stopped at go on to the relay installed next.
    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        _ = try decode(context: context, buffer: &buffer)
        if !seenEOF && buffer.readableBytes > 0 {
            context.fireChannelRead(NIOAny(buffer))
            buffer.moveReaderIndex(to: buffer.writerIndex)
        }
        return .needMoreData
    }
}
