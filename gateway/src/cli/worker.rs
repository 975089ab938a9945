//! `nexus-gateway worker`: bridges a task queue to a Nexus HTTP handler at a URL, dialing out
//! only, so a handler on a private network can serve callers of other namespaces.

use std::time::Duration;

use crate::worker::{HandlerUrl, Worker, WorkerSettings};
use clap::Args as ClapArgs;
use nexus_certs::Identity;
use tokio_util::sync::CancellationToken;

use super::Failure;
use super::conn::Connection;

#[derive(ClapArgs)]
pub struct Args {
    #[command(flatten)]
    conn: Connection,
    /// Namespace whose task queue to serve; the client certificate must be of this namespace.
    #[arg(long)]
    namespace: String,
    /// Task queue to poll.
    #[arg(long)]
    task_queue: String,
    /// Base URL of the Nexus HTTP handler; task paths (/{service}/{operation}...) are appended.
    #[arg(long)]
    handler_url: String,
    /// Tasks served at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds running tasks may take to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let client = args
        .conn
        .client(&Identity::Namespace(args.namespace.clone()))?;
    let handler_url: http::Uri = args
        .handler_url
        .parse()
        .map_err(|e| format!("invalid --handler-url {:?}: {e}", args.handler_url))?;
    if !matches!(handler_url.scheme_str(), Some("http" | "https"))
        || handler_url.authority().is_none()
    {
        return Err(format!(
            "invalid --handler-url {:?}: expected http(s)://host:port[/prefix]",
            args.handler_url
        )
        .into());
    }
    let mut settings =
        WorkerSettings::new(args.conn.base_uri()?, &args.namespace, &args.task_queue);
    settings.concurrency = args.concurrency.max(1);
    let worker = Worker::new(settings, client.clone());
    let handler = HandlerUrl::new(handler_url, client);
    let signal = super::shutdown_signal();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { worker.run(handler, shutdown).await }
    });
    signal.await;
    shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(args.shutdown_grace), running)
        .await
        .is_err()
    {
        return Err("tasks still running after the shutdown grace period".into());
    }
    Ok(())
}
