//! The `nexus-gateway` command, built inside the test crate so end-to-end tests can run it as
//! a process (`CARGO_BIN_EXE_nexus-gateway-e2e`): kill -9, SIGTERM, the CLI and the worker bridge.

fn main() -> std::process::ExitCode {
    nexus_gateway::cli::main()
}
