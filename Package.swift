// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "loupe",
    platforms: [.macOS(.v15)], // Synchronization (Mutex, Atomic)
    products: [
        .executable(name: "loupe", targets: ["loupe"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.0.0"..<"5.0.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // C shim over libbpf; includes bpf/shared/loupe_datapath.h so both sides share one struct layout.
        .target(
            name: "CLoupeBPF",
            path: "Sources/CLoupeBPF",
            linkerSettings: [.linkedLibrary("bpf"), .linkedLibrary("elf"), .linkedLibrary("z")]
        ),
        .target(name: "LoupeBPF", dependencies: ["CLoupeBPF"]),
        // posix_spawn/exec with a clean signal state: every child process starts through LoupeProcess.
        .target(name: "CLoupeProcess", path: "Sources/CLoupeProcess"),
        .target(name: "LoupeProcess", dependencies: ["CLoupeProcess"]),
        .target(name: "LoupeFlow"),
        .target(name: "LoupePolicy", dependencies: [.product(name: "Yams", package: "Yams")]),
        .target(name: "LoupeProtocols"),
        .target(
            name: "LoupeProxy",
            dependencies: [
                "LoupeFlow", "LoupePolicy", "LoupeProtocols", "LoupeBPF",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "LoupeLab",
            dependencies: ["LoupePolicy", "LoupeProcess", .product(name: "Yams", package: "Yams")]
        ),
        .target(
            name: "LoupeAgent",
            dependencies: [
                "LoupeBPF", "LoupeFlow", "LoupePolicy", "LoupeProtocols", "LoupeProxy", "LoupeProcess",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "loupe",
            dependencies: [
                "LoupeAgent", "LoupeLab", "LoupeFlow", "LoupePolicy", "LoupeBPF", "LoupeProcess",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "LoupeFlowTests", dependencies: ["LoupeFlow"]),
        .testTarget(name: "LoupePolicyTests", dependencies: ["LoupePolicy"]),
        // Fixtures are read from the source tree by path (#filePath), not bundled.
        .testTarget(name: "LoupeProtocolsTests", dependencies: ["LoupeProtocols"], exclude: ["Fixtures"]),
        .testTarget(name: "LoupeBPFTests", dependencies: ["LoupeBPF", "CLoupeBPF"]),
        .testTarget(name: "LoupeProcessTests", dependencies: ["LoupeProcess"]),
        .testTarget(
            name: "LoupeAgentTests",
            dependencies: [
                "LoupeAgent", "LoupeFlow", "LoupeProxy", "LoupePolicy",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "LoupeProxyTests",
            dependencies: [
                "LoupeProxy", "LoupeFlow", "LoupeProtocols",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
