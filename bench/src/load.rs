//! Load generators. Each runs a fixed number of loops for a warm-up and a measured span; only
//! requests that complete inside the measured span count, and the CPU time of the processes
//! of interest is read at the span's two ends.
//!
//! - [`keep_alive_loop`]: one connection (h2 or HTTP/1.1) per loop, one request at a time:
//!   closed loop, or a fixed rate with latency counted from the intended send time when the
//!   previous answer made the loop late (no coordinated omission).
//! - [`new_connection_loop`]: a new TCP + mTLS connection (no resumption) per request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use nexus_gateway::client::HttpClient;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::Result;

/// Upper bound for one request (or one connection) of the load generator.
pub const REQUEST_BOUND: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub measure: Duration,
}

/// The measured part of a window.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub start: Instant,
    pub end: Instant,
}

/// What the loops saw inside the measured span. Latency in microseconds.
pub struct Tally {
    pub ok: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
    pub first_error: Option<String>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            ok: 0,
            errors: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            first_error: None,
        }
    }

    /// Counts `outcome` if it completed inside `span`, its latency from `from` (the intended
    /// send time for a fixed schedule).
    pub(crate) fn record(
        &mut self,
        span: &Span,
        from: Instant,
        done: Instant,
        outcome: Result<()>,
    ) {
        if done < span.start || done >= span.end {
            return;
        }
        match outcome {
            Ok(()) => {
                self.ok += 1;
                let us = done.duration_since(from).as_micros() as u64;
                self.latency.saturating_record(us.max(1));
            }
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.latency.add(&other.latency).expect("same bounds");
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn quantile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64
    }
}

/// A window's results: the loops' tally, the measured wall time, and the CPU time each
/// process in `pids` used during it (same order).
pub struct Measured {
    pub tally: Tally,
    pub wall: Duration,
    pub cpu: Vec<Duration>,
    /// Busy time of the whole machine minus `cpu`: other processes (a noisy neighbour).
    pub others: Duration,
    /// Time the hypervisor took from this machine's cores.
    pub steal: Duration,
}

impl Measured {
    pub fn per_second(&self) -> f64 {
        self.tally.ok as f64 / self.wall.as_secs_f64()
    }

    /// CPU microseconds per completed request of process `i` of `pids`.
    pub fn cpu_us_per_ok(&self, i: usize) -> f64 {
        self.cpu[i].as_secs_f64() * 1e6 / self.tally.ok.max(1) as f64
    }

    /// Share of one core used by processes outside `pids`.
    pub fn others_utilisation(&self) -> f64 {
        self.others.as_secs_f64() / self.wall.as_secs_f64()
    }

    pub fn steal_utilisation(&self) -> f64 {
        self.steal.as_secs_f64() / self.wall.as_secs_f64()
    }

    /// Share of one core process `i` used.
    pub fn utilisation(&self, i: usize) -> f64 {
        self.cpu[i].as_secs_f64() / self.wall.as_secs_f64()
    }
}

/// Runs `loops` loops made by `make` through one window and measures the CPU of `pids`.
pub async fn measure<F, Fut>(
    window: Window,
    pids: &[u32],
    loops: usize,
    make: F,
) -> Result<Measured>
where
    F: Fn(usize, Span) -> Fut,
    Fut: Future<Output = Tally> + Send + 'static,
{
    let start = Instant::now() + window.warmup;
    let span = Span {
        start,
        end: start + window.measure,
    };
    let tasks: Vec<_> = (0..loops).map(|i| tokio::spawn(make(i, span))).collect();
    tokio::time::sleep_until(span.start).await;
    let (busy_before, steal_before) = crate::procs::machine_times()?;
    let before = cpu_times(pids)?;
    let started = Instant::now();
    tokio::time::sleep_until(span.end).await;
    let after = cpu_times(pids)?;
    let (busy_after, steal_after) = crate::procs::machine_times()?;
    let wall = started.elapsed();
    let mut tally = Tally::new();
    for task in tasks {
        tally.merge(task.await?);
    }
    let cpu: Vec<Duration> = after.iter().zip(&before).map(|(a, b)| *a - *b).collect();
    let ours: Duration = cpu.iter().sum();
    Ok(Measured {
        tally,
        wall,
        others: (busy_after - busy_before).saturating_sub(ours),
        steal: steal_after - steal_before,
        cpu,
    })
}

fn cpu_times(pids: &[u32]) -> Result<Vec<Duration>> {
    pids.iter()
        .map(|&pid| crate::procs::cpu_time(pid))
        .collect()
}

/// One keep-alive connection sending POST `uri` with `body` until the span ends; each answer
/// must be 200 with a body of `expect_len` bytes. `interval`: None for a closed loop, or the
/// fixed gap between intended sends (starting at `offset`).
pub async fn keep_alive_loop(
    client: HttpClient,
    uri: Uri,
    body: Bytes,
    expect_len: usize,
    span: Span,
    interval: Option<(Duration, Duration)>,
) -> Tally {
    let mut tally = Tally::new();
    let mut next = Instant::now() + interval.map_or(Duration::ZERO, |(_, offset)| offset);
    let mut last_done = Instant::now();
    // Bounded by the span's end; the count bound only guards against a broken clock.
    for _ in 0..100_000_000u64 {
        let now = Instant::now();
        let from = match interval {
            None => now,
            Some((gap, _)) => {
                let intended = next;
                next += gap;
                if intended >= span.end {
                    break;
                }
                if intended > now {
                    tokio::time::sleep_until(intended).await;
                    Instant::now()
                } else if last_done > intended {
                    // Late because the previous answer was: count the wait.
                    intended
                } else {
                    now
                }
            }
        };
        if from >= span.end {
            break;
        }
        let request = Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
            .expect("valid request");
        let outcome = tokio::time::timeout(REQUEST_BOUND, async {
            let response = client.request(request).await?;
            let status = response.status();
            let got = response.into_body().collect().await?.to_bytes();
            if status != StatusCode::OK || got.len() != expect_len {
                return Err(format!("answered {status} with {} bytes", got.len()).into());
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err("request timed out".into()));
        last_done = Instant::now();
        tally.record(&span, from, last_done, outcome);
    }
    tally
}

/// Opens a new TCP + TLS connection per request until the span ends, sends one HTTP/1.1
/// POST to `path` and expects `status`.
pub async fn new_connection_loop(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    path: &'static str,
    status: StatusCode,
    span: Span,
) -> Tally {
    let mut tally = Tally::new();
    let connector = TlsConnector::from(tls);
    for _ in 0..100_000_000u64 {
        let from = Instant::now();
        if from >= span.end {
            break;
        }
        let outcome = tokio::time::timeout(REQUEST_BOUND, one_connection(&connector, addr, path))
            .await
            .unwrap_or_else(|_| Err("connection timed out".into()))
            .and_then(|got| {
                if got == status {
                    Ok(())
                } else {
                    Err(format!("answered {got}, expected {status}").into())
                }
            });
        tally.record(&span, from, Instant::now(), outcome);
    }
    tally
}

/// One connection, one request: the answer's status. Fails unless TLS 1.3 was negotiated.
pub async fn one_connection(
    connector: &TlsConnector,
    addr: SocketAddr,
    path: &'static str,
) -> Result<StatusCode> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::from(addr.ip());
    let tls = connector.connect(name, tcp).await?;
    if tls.get_ref().1.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Err("TLS 1.3 was not negotiated".into());
    }
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let driver = tokio::spawn(connection);
    let request = Request::post(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    drop(sender);
    let _ = driver.await;
    Ok(status)
}
