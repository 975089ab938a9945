//! Certificate rotation: the server certificate, key and client CA bundle are reloaded when
//! their files change (checked every `interval`) or on SIGHUP, without a restart. Open
//! connections keep the configuration they were accepted with; a bad new file is refused with
//! a log line and the old configuration stays.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use nexus_certs::TlsFiles;
use rustls::ServerConfig;
use tracing::{error, info};

/// Counts of reload attempts, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
}

fn modified(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Watches `files` and swaps a freshly built server configuration into `current`. The SIGHUP
/// handler is installed before this returns, so a SIGHUP sent once the gateway says it
/// serves reloads rather than ending the process.
pub fn watch(
    files: TlsFiles,
    current: Arc<ArcSwap<ServerConfig>>,
    stats: Arc<ReloadStats>,
    interval: Duration,
    client_auth: nexus_certs::ClientAuth,
) -> impl std::future::Future<Output = ()> {
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    watch_with(files, current, stats, interval, client_auth, hangup)
}

async fn watch_with(
    files: TlsFiles,
    current: Arc<ArcSwap<ServerConfig>>,
    stats: Arc<ReloadStats>,
    interval: Duration,
    client_auth: nexus_certs::ClientAuth,
    mut hangup: Option<tokio::signal::unix::Signal>,
) {
    let mut seen = modified(&files);
    loop {
        let signalled = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = modified(&files);
        if !signalled && now == seen {
            continue;
        }
        seen = now;
        match files
            .load()
            .and_then(|m| nexus_certs::server_config_with(&m, client_auth))
        {
            Ok(config) => {
                current.store(Arc::new(config));
                stats.succeeded.fetch_add(1, Ordering::Relaxed);
                info!(cert = %files.cert.display(), "TLS certificate and client CA reloaded");
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                error!(error = %e, "TLS reload refused; keeping the current certificate");
            }
        }
    }
}
