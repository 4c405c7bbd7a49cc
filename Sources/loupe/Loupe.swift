import ArgumentParser
import LoupeAgent

@main
struct Loupe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loupe",
        abstract: "Transparent L7 visibility proxy for Kubernetes nodes: HTTP flows without sidecars.",
        version: LoupeVersion.current,
        subcommands: [AgentCommand.self, ObserveCommand.self, UICommand.self, StatusCommand.self, PolicyCommand.self, LabCommand.self,
                      CACommand.self])
}
