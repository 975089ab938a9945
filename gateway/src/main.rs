//! The `nexus-gateway` command; see [`nexus_gateway::cli`].

/// mimalloc: the request path allocates many small, short-lived buffers across threads, which
/// glibc's allocator serves at a measurable cost (about 7 % of the gateway's CPU samples).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    nexus_gateway::cli::main()
}
