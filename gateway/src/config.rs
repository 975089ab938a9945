//! Typed settings for one gateway process. The CLI fills them from flags; every field has a
//! documented default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nexus_certs::TlsMaterial;

use nexus_outbound_queue::QueueSettings;

use nexus_outbound_queue::Backoff;

use crate::callback_policy::AllowedCallback;
use crate::matching::MatchingSettings;
pub use crate::telemetry::{TracingSettings, otlp_traces_url};

#[derive(Debug, Clone)]
pub struct Config {
    /// Data port: mTLS, Nexus + worker + admin APIs (default 127.0.0.1:7443).
    pub listen: SocketAddr,
    /// Ops port: plain HTTP, `/healthz`, `/readyz`, `/metrics` (default 127.0.0.1:7080).
    pub ops_listen: SocketAddr,
    /// The gateway's server certificate and key, and the CA that client certificates chain to.
    pub tls: TlsMaterial,
    /// Where `tls` came from; when set, the files are watched and reloaded on change or SIGHUP.
    pub tls_files: Option<nexus_certs::TlsFiles>,
    /// How often the TLS files are checked for changes (default 2 s).
    pub tls_reload_interval: Duration,
    /// Whether callers must present a client certificate at the handshake (default optional:
    /// stock Temporal servers present none; [`crate::authz`] answers 401 where one is needed).
    pub client_auth: nexus_certs::ClientAuth,
    /// SPIFFE trust domain of client identities (default `nexus-gateway`).
    pub trust_domain: String,
    /// Holds the registry database and, later, logs and spools.
    pub data_dir: PathBuf,
    /// The gateway's URL as handlers reach it, for rewritten callback URLs (default
    /// `https://localhost:<data port>` on loopback, else `https://<listen address>`).
    pub public_url: Option<String>,
    pub limits: Limits,
    pub matching: MatchingSettings,
    /// Inbound rate and concurrency limits per caller namespace and endpoint.
    pub inbound: crate::inbound::InboundSettings,
    /// Per-destination outbound lanes (Temporal's defaults; see nexus-outbound-queue).
    pub outbound: QueueSettings,
    pub upstream: UpstreamSettings,
    pub callbacks: CallbackSettings,
    /// Whether the attribution log is written (default true).
    pub attribution_enabled: bool,
    /// The attribution log; its `dir` is always `<data_dir>/attribution`.
    pub attribution: crate::attribution::AttributionSettings,
    /// How long SIGTERM waits for in-flight requests before closing them (default 30 s).
    pub shutdown_grace: Duration,
    pub store: StoreSettings,
    pub console: ConsoleSettings,
    pub tracing: TracingSettings,
}

/// The operator console at `/console/` (see [`crate::console`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// Whether the console is served at all (default true): on the ops port to whoever reaches
    /// it (loopback by default), on the data port to admin certificates.
    pub enabled: bool,
    /// Whether the console on the ops port may change things: create, edit and delete
    /// endpoints, retry and drop completions (default false: the ops port has no client
    /// certificate, so anyone who reaches it would be an admin). The data port's console,
    /// behind an admin certificate, may always.
    pub writable: bool,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            enabled: true,
            writable: false,
        }
    }
}

/// Where the registry, trusted clusters and the callback sealing key live: the embedded store
/// in the data directory (default), or a PostgreSQL database shared by replicas.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `postgres://user:password@host/db[?sslmode=require]`; `None`: embedded.
    pub url: Option<String>,
    /// CA bundle (PEM) the database's certificate chains to, for `sslmode=require`.
    pub ca: Option<PathBuf>,
    /// How often a replica checks the shared store for changes it was not notified of
    /// (default 5 s; notifications bring them within milliseconds).
    pub resync_interval: Duration,
    /// How long a replica's claim on a pending completion lasts unrenewed: a survivor
    /// delivers a dead replica's completions after at most this long (default 15 s).
    pub lease: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            url: None,
            ca: None,
            resync_interval: Duration::from_secs(5),
            lease: Duration::from_secs(15),
        }
    }
}

impl StoreSettings {
    /// The PostgreSQL settings, when the store is shared.
    pub fn postgres(&self) -> Option<nexus_registry::pg::PgSettings> {
        let url = self.url.as_ref()?;
        let mut settings = nexus_registry::pg::PgSettings::new(url.clone());
        settings.ca = self.ca.clone();
        Some(settings)
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
pub const DEFAULT_OPS_LISTEN: &str = "127.0.0.1:7080";
pub const DEFAULT_TRUST_DOMAIN: &str = "nexus-gateway";

impl Config {
    pub fn new(tls: TlsMaterial, data_dir: PathBuf) -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            ops_listen: DEFAULT_OPS_LISTEN.parse().expect("valid default"),
            tls,
            tls_files: None,
            tls_reload_interval: Duration::from_secs(2),
            client_auth: nexus_certs::ClientAuth::default(),
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            data_dir,
            public_url: None,
            limits: Limits::default(),
            matching: MatchingSettings::default(),
            inbound: Default::default(),
            outbound: QueueSettings::default(),
            upstream: UpstreamSettings::default(),
            callbacks: CallbackSettings::default(),
            attribution_enabled: true,
            attribution: crate::attribution::AttributionSettings::new(PathBuf::new()),
            shutdown_grace: Duration::from_secs(30),
            store: StoreSettings::default(),
            console: ConsoleSettings::default(),
            tracing: TracingSettings::default(),
        }
    }
}

/// How the gateway reaches external handlers and callers' callback URLs.
#[derive(Debug, Clone, Default)]
pub struct UpstreamSettings {
    /// CA certificates trusted for upstream HTTPS (default: the gateway's client CA bundle).
    pub ca: Option<Vec<nexus_certs::CertificateDer<'static>>>,
    /// When plain `http://` upstreams are allowed (default: loopback hosts only).
    pub plain_http: PlainHttp,
}

/// Protection against oversized and slow input.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body (default 2 MiB, Temporal's limit); larger ones get 400.
    pub max_body_bytes: usize,
    /// Time to finish the TLS handshake (default 10 s).
    pub handshake_timeout: Duration,
    /// Time to receive a request's headers on HTTP/1.1 (default 10 s).
    pub header_read_timeout: Duration,
    /// Time to receive a request's whole body (default 30 s); slower clients get 408.
    pub body_read_timeout: Duration,
    /// Most headers in one HTTP/1.1 request (default 100); more get 431.
    pub max_headers: usize,
    /// Largest header block (default 16 KiB); larger gets 431.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 2 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_headers: 100,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// When plain `http://` upstream URLs may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlainHttp {
    Never,
    /// Only to loopback hosts (localhost, 127.0.0.0/8, ::1): traffic never leaves the machine.
    #[default]
    Loopback,
    Always,
}

impl std::str::FromStr for PlainHttp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(PlainHttp::Never),
            "loopback" => Ok(PlainHttp::Loopback),
            "always" => Ok(PlainHttp::Always),
            other => Err(format!("{other:?}: expected never, loopback or always")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallbackSettings {
    /// How long a callback token, and so a pending completion, stays valid (default 60 days,
    /// longer than any Temporal operation's default timeout).
    pub expiry: Duration,
    /// Time for one delivery attempt (default 10 s).
    pub attempt_timeout: Duration,
    /// Delay between attempts: 1 s doubling to 1 h, 80-100 % jitter.
    pub backoff: Backoff,
    /// Callback hosts allowed beyond the default (https to public addresses only); see
    /// [`crate::callback_policy`]. Default none; `dev` allows loopback.
    pub allowed: Vec<AllowedCallback>,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        CallbackSettings {
            expiry: Duration::from_secs(60 * 24 * 3600),
            attempt_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            allowed: Vec::new(),
        }
    }
}
