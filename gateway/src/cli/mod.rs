//! Command-line interface. Each subcommand lives in its own module.

mod attribution;
mod call;
mod callbacks;
mod certs;
mod cluster;
mod conn;
mod dev;
mod endpoint;
mod serve;
mod store;
mod table;
mod worker;

use std::io::{ErrorKind, IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nexus-gateway",
    version,
    about = "Cross-namespace Nexus RPC gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local gateway with its own dev certificates and data directory; no setup needed.
    Dev(dev::Args),
    /// Run the gateway with your own certificates.
    Serve(serve::Args),
    /// Make a dev CA, server certificate and client certificates.
    #[command(subcommand)]
    Certs(certs::Command),
    /// Call a Nexus operation through the gateway and print its result, state and timings.
    Call(call::Args),
    /// Manage Nexus endpoints through the admin API (needs an admin certificate).
    #[command(subcommand)]
    Endpoint(endpoint::Command),
    /// Manage trusted Temporal clusters, callers that vouch for their namespaces (admin).
    #[command(subcommand)]
    Cluster(cluster::Command),
    /// Serve a task queue by forwarding its tasks to a Nexus HTTP handler at a URL.
    Worker(worker::Args),
    /// Read the attribution log (metering certificate).
    #[command(subcommand)]
    Attribution(AttributionCommand),
    /// Totals of actions, bytes and errors per caller namespace, target namespace, endpoint, hour.
    Usage(attribution::UsageArgs),
    /// The shared PostgreSQL store of replicas.
    #[command(subcommand)]
    Store(store::Command),
    /// Configuration file helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect, retry or drop async completions not yet delivered to callers.
    #[command(subcommand)]
    Callbacks(callbacks::Command),
}

#[derive(Subcommand)]
enum AttributionCommand {
    /// Print attribution records (JSON lines) after --from; --follow keeps waiting for more.
    Tail(attribution::TailArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a complete configuration file with every default and a comment for each.
    Example,
}

/// A failed command: the message is printed and the process exits with `code`.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    /// The reader of stdout went away (`| head`): nothing left to do, and nothing to report.
    fn stdout_closed() -> Failure {
        Failure {
            message: String::new(),
            code: 0,
        }
    }
}

/// Writes `text` to stdout and flushes. A closed stdout (EPIPE) ends the command quietly
/// instead of panicking as `println!` would.
pub fn write_stdout(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Err(Failure::stdout_closed()),
        Err(e) => Err(format!("cannot write to stdout: {e}").into()),
    }
}

/// `println!` through [`write_stdout`]: evaluates to `Result<(), Failure>`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            message: error.to_string(),
            code: 1,
        }
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Certs(command) => certs::run(command),
            Command::Call(args) => call::run(args).await,
            Command::Endpoint(command) => endpoint::run(command).await,
            Command::Cluster(command) => cluster::run(command).await,
            Command::Store(command) => store::run(command).await,
            Command::Worker(args) => worker::run(args).await,
            Command::Callbacks(command) => callbacks::run(command).await,
            Command::Attribution(AttributionCommand::Tail(args)) => attribution::tail(args).await,
            Command::Usage(args) => attribution::usage(args).await,
            Command::Config(ConfigCommand::Example) => write_stdout(crate::config_file::EXAMPLE),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) if failure.code == 0 => ExitCode::SUCCESS,
        // Already reported on stdout (`call` prints the failed operation itself).
        Err(failure) if failure.message.is_empty() => ExitCode::from(failure.code),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Prints clap's message (or help) and exits with its code, except that `call` exits 64 on a
/// usage error: its 2 means "the operation was canceled".
fn usage_error(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    let code = error.exit_code();
    let is_call = std::env::args_os().nth(1).is_some_and(|a| a == "call");
    if code != 0 && is_call {
        return ExitCode::from(call::EXIT_USAGE);
    }
    ExitCode::from(u8::try_from(code).unwrap_or(2))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person watching; files and pipes get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, so call it
/// before announcing readiness: a signal that arrives later is never lost.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
}
