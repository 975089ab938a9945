//! The `nexus-gateway` command; see [`nexus_gateway::cli`].

fn main() -> std::process::ExitCode {
    nexus_gateway::cli::main()
}
