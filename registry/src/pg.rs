//! [`Store`] on PostgreSQL, shared by several gateway replicas.
//!
//! Every write runs in one transaction that bumps the table version (whose row lock
//! serialises writers, so of two conflicting writes through different replicas exactly one
//! wins) and sends `NOTIFY nexus_registry`. Each replica keeps its snapshot in memory and
//! refreshes it on a notification ([`listen`]) or when a periodic check finds the table
//! version moved, so the request path never waits on the database.
//!
//! The schema is created by versioned migrations in `registry/migrations/`, applied under an
//! advisory lock, so replicas starting at once apply each exactly once.

use std::fmt::{self, Display};
use std::sync::Mutex;
use std::time::Duration;

use postgres::{Client, NoTls};

use crate::cluster::Cluster;
use crate::model::{Endpoint, RegistryError};
use crate::store::{Changes, Store};

/// The migrations, in order: (version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "registry",
        include_str!("../migrations/0001_registry.sql"),
    ),
    (2, "changes", include_str!("../migrations/0002_changes.sql")),
    (
        3,
        "replicas",
        include_str!("../migrations/0003_replicas.sql"),
    ),
    (
        4,
        "completions",
        include_str!("../migrations/0004_completions.sql"),
    ),
    (5, "pollers", include_str!("../migrations/0005_pollers.sql")),
];

/// Deletion records older than this many table versions are pruned; a replica further behind
/// reloads everything.
const KEPT_DELETIONS: i64 = 10_000;

/// Arbitrary, fixed: the advisory lock that serialises migrations across replicas.
const MIGRATION_LOCK: i64 = 0x6e65_7875_735f_6777;
/// The channel registry changes are announced on; the payload is the new table version.
pub const CHANNEL: &str = "nexus_registry";

/// How to reach the database: a `postgres://` URL and, for `sslmode=require`, the CA bundle
/// (PEM) the server's certificate must chain to.
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub url: String,
    pub ca: Option<std::path::PathBuf>,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
}

impl PgSettings {
    pub fn new(url: impl Into<String>) -> Self {
        PgSettings {
            url: url.into(),
            ca: None,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// A new connection. TLS when the URL says `sslmode=require`, verified against `ca`.
    pub fn connect(&self) -> Result<Client, RegistryError> {
        let mut config: postgres::Config = self
            .url
            .parse()
            .map_err(|e| RegistryError::Storage(format!("store URL is invalid: {e}")))?;
        config.connect_timeout(self.connect_timeout);
        let unreachable = |e: postgres::Error| {
            RegistryError::Unavailable(format!("cannot connect to the store: {}", describe(&e)))
        };
        match config.get_ssl_mode() {
            postgres::config::SslMode::Require => {
                let tls = self.tls()?;
                config.connect(tls).map_err(unreachable)
            }
            _ => config.connect(NoTls).map_err(unreachable),
        }
    }

    fn tls(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, RegistryError> {
        let Some(ca) = &self.ca else {
            return Err(RegistryError::Storage(
                "sslmode=require needs the CA that the database's certificate chains to: \
                 set [store] ca (--store-ca)"
                    .into(),
            ));
        };
        let pem = std::fs::read(ca)
            .map_err(|e| RegistryError::Storage(format!("store CA {}: {e}", ca.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert
                .map_err(|e| RegistryError::Storage(format!("store CA {}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| RegistryError::Storage(format!("store CA {}: {e}", ca.display())))?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(storage)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

/// The database error's own message (`postgres::Error`'s display is only its kind).
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let source = std::error::Error::source(e).map(|s| format!(": {s}"));
            format!("{e}{}", source.unwrap_or_default())
        }
    }
}

fn storage(e: impl Display) -> RegistryError {
    RegistryError::Storage(e.to_string())
}

/// A database error; one without a server answer (the connection broke) is `Unavailable`.
fn db(e: postgres::Error) -> RegistryError {
    if e.as_db_error().is_none() {
        return RegistryError::Unavailable(format!("store: {}", describe(&e)));
    }
    RegistryError::Storage(format!("store: {}", describe(&e)))
}

/// Applies the migrations not applied yet; returns the names of those it applied. Safe when
/// several replicas run it at once.
pub fn migrate(settings: &PgSettings) -> Result<Vec<String>, RegistryError> {
    let mut client = settings.connect()?;
    let mut txn = client.transaction().map_err(db)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(db)?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS nexus_schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .map_err(db)?;
    let applied: Vec<i32> = txn
        .query("SELECT version FROM nexus_schema_migrations", &[])
        .map_err(db)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut done = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        txn.batch_execute(sql).map_err(db)?;
        txn.execute(
            "INSERT INTO nexus_schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .map_err(db)?;
        done.push(format!("{version:04}_{name}"));
    }
    txn.commit().map_err(db)?;
    Ok(done)
}

/// The registry's [`Store`] on PostgreSQL. One connection, used by one writer at a time (the
/// registry serialises its writes anyway); a broken connection is replaced on the next call.
pub struct PgStore {
    settings: PgSettings,
    client: Mutex<Option<Client>>,
}

/// The blocking client closes its connection on a runtime of its own, which may not run on
/// an async worker: it is dropped on a thread of its own.
impl Drop for PgStore {
    fn drop(&mut self) {
        let client = self
            .client
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(client) = client {
            let _ = std::thread::Builder::new()
                .name("store-close".into())
                .spawn(move || drop(client));
        }
    }
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects and applies pending migrations.
    pub fn open(settings: PgSettings) -> Result<PgStore, RegistryError> {
        migrate(&settings)?;
        let client = settings.connect()?;
        Ok(PgStore {
            settings,
            client: Mutex::new(Some(client)),
        })
    }

    /// Runs `op` on the connection, reconnecting first if the last one broke.
    fn with<T>(
        &self,
        op: impl FnOnce(&mut Client) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.settings.connect()?);
        }
        let client = slot.as_mut().expect("connected above");
        let result = op(client);
        if client.is_closed() {
            *slot = None;
        }
        result
    }

    /// A secret shared by every replica, created (`make`) by the first one that asks.
    pub fn shared_secret(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String, RegistryError> {
        let fresh = make();
        self.with(|c| {
            c.execute(
                "INSERT INTO nexus_shared_secrets (name, secret) VALUES ($1, $2)
                 ON CONFLICT (name) DO NOTHING",
                &[&name, &fresh],
            )
            .map_err(db)?;
            let row = c
                .query_one(
                    "SELECT secret FROM nexus_shared_secrets WHERE name = $1",
                    &[&name],
                )
                .map_err(db)?;
            Ok(row.get(0))
        })
    }

    /// Records that replica `id` is alive and returns how many replicas were seen within
    /// `window` (this one included).
    pub fn heartbeat(&self, id: &str, window: Duration) -> Result<u64, RegistryError> {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        self.with(|c| {
            c.execute(
                "INSERT INTO nexus_replicas (id, last_seen) VALUES ($1, now())
                 ON CONFLICT (id) DO UPDATE SET last_seen = now()",
                &[&id],
            )
            .map_err(db)?;
            let seen: i64 = c
                .query_one(
                    "SELECT count(*) FROM nexus_replicas
                     WHERE last_seen > now() - $1::bigint * interval '1 millisecond'",
                    &[&window_ms],
                )
                .map_err(db)?
                .get(0);
            Ok(seen as u64)
        })
    }

    /// Announces the task queues this replica (`id`, reachable at `url`) has workers for,
    /// replacing what it announced before.
    pub fn announce_pollers(
        &self,
        id: &str,
        url: &str,
        queues: &[(String, String)],
    ) -> Result<(), RegistryError> {
        self.with(|c| {
            let mut txn = c.transaction().map_err(db)?;
            txn.execute(
                "INSERT INTO nexus_replicas (id, last_seen, url) VALUES ($1, now(), $2)
                 ON CONFLICT (id) DO UPDATE SET last_seen = now(), url = $2",
                &[&id, &url],
            )
            .map_err(db)?;
            txn.execute("DELETE FROM nexus_pollers WHERE replica = $1", &[&id])
                .map_err(db)?;
            for (namespace, task_queue) in queues {
                txn.execute(
                    "INSERT INTO nexus_pollers (replica, namespace, task_queue, last_seen)
                     VALUES ($1, $2, $3, now())",
                    &[&id, namespace, task_queue],
                )
                .map_err(db)?;
            }
            txn.commit().map_err(db)
        })
    }

    /// The queues other replicas than `id` announced within `window`: (namespace, task
    /// queue, url of that replica), in replica order.
    pub fn remote_pollers(
        &self,
        id: &str,
        window: Duration,
    ) -> Result<Vec<(String, String, String)>, RegistryError> {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        self.with(|c| {
            let rows = c
                .query(
                    "SELECT p.namespace, p.task_queue, r.url FROM nexus_pollers p
                     JOIN nexus_replicas r ON r.id = p.replica
                     WHERE p.replica <> $1 AND r.url IS NOT NULL
                       AND p.last_seen > now() - $2::bigint * interval '1 millisecond'
                     ORDER BY p.replica",
                    &[&id, &window_ms],
                )
                .map_err(db)?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
    }

    /// Whether the database answers now.
    pub fn ping(&self) -> Result<(), RegistryError> {
        self.with(|c| c.simple_query("SELECT 1").map(|_| ()).map_err(db))
    }
}

/// Bumps the table version and announces it, inside `txn`.
fn bump(txn: &mut postgres::Transaction<'_>) -> Result<u64, RegistryError> {
    let row = txn
        .query_one(
            "UPDATE nexus_registry_meta SET table_version = table_version + 1 WHERE id = 1
             RETURNING table_version",
            &[],
        )
        .map_err(db)?;
    let version: i64 = row.get(0);
    // `<version> <database clock in ms>`: listeners measure how late it reaches them.
    txn.execute(
        "SELECT pg_notify($1, $2 || ' ' || (extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
        &[&CHANNEL, &version.to_string()],
    )
    .map_err(db)?;
    Ok(version as u64)
}

fn version(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// In one snapshot (a concurrent write is either wholly in or wholly out): the table version,
/// the endpoints changed after `since` (all of them for `None`) and the ids deleted after it.
/// `None` when `since` is so far back that pruned deletions make only a full load exact.
fn read_snapshot(c: &mut Client, since: Option<i64>) -> Result<Option<Changes>, RegistryError> {
    let mut txn = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(db)?;
    let table_version: i64 = txn
        .query_one("SELECT table_version FROM nexus_registry_meta", &[])
        .map_err(db)?
        .get(0);
    if since.is_some_and(|since| table_version - since > KEPT_DELETIONS) {
        return Ok(None);
    }
    let after = since.unwrap_or(-1);
    let mut endpoints = Vec::new();
    for row in txn
        .query(
            "SELECT id, body::text FROM nexus_endpoints WHERE changed_version > $1",
            &[&after],
        )
        .map_err(db)?
    {
        let id: String = row.get(0);
        let body: String = row.get(1);
        endpoints.push(serde_json::from_str(&body).map_err(|e| {
            RegistryError::Storage(format!("decoding stored endpoint {id:?}: {e}"))
        })?);
    }
    let deleted = match since {
        None => Vec::new(),
        Some(since) => txn
            .query(
                "SELECT id FROM nexus_endpoint_deletions WHERE changed_version > $1",
                &[&since],
            )
            .map_err(db)?
            .iter()
            .map(|row| row.get(0))
            .collect(),
    };
    txn.commit().map_err(db)?;
    Ok(Some(Changes {
        table_version: table_version as u64,
        upserted: endpoints,
        deleted,
    }))
}

impl Store for PgStore {
    fn load(&self) -> Result<(u64, Vec<Endpoint>), RegistryError> {
        let all = self.with(|c| read_snapshot(c, None))?;
        let all = all.expect("a full read is always exact");
        Ok((all.table_version, all.upserted))
    }

    fn changes_since(&self, since: u64) -> Result<Option<Changes>, RegistryError> {
        self.with(|c| read_snapshot(c, Some(version(since))))
    }

    fn table_version(&self) -> Result<u64, RegistryError> {
        self.with(|c| {
            let v: i64 = c
                .query_one("SELECT table_version FROM nexus_registry_meta", &[])
                .map_err(db)?
                .get(0);
            Ok(v as u64)
        })
    }

    fn put(
        &self,
        endpoint: &Endpoint,
        expected_version: Option<u64>,
    ) -> Result<u64, RegistryError> {
        let body = serde_json::to_string(endpoint).map_err(storage)?;
        let id = endpoint.id.as_str();
        let name = endpoint.spec.name.as_str();
        self.with(|c| {
            let mut txn = c.transaction().map_err(db)?;
            // First: every writer queues here, so the checks below see committed state.
            let table_version = bump(&mut txn)?;
            let stored: Option<i64> = txn
                .query_opt(
                    "SELECT version FROM nexus_endpoints WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .map_err(db)?
                .map(|row| row.get(0));
            match (expected_version, stored) {
                (None, Some(_)) => {
                    return Err(RegistryError::Storage(format!(
                        "endpoint id {id:?} already exists"
                    )));
                }
                (Some(_), None) => return Err(RegistryError::NotFound(id.into())),
                (Some(expected), Some(actual)) if actual != version(expected) => {
                    return Err(RegistryError::VersionConflict {
                        id: id.into(),
                        expected,
                        actual: actual as u64,
                    });
                }
                _ => {}
            }
            let taken = txn
                .query_opt(
                    "SELECT 1 FROM nexus_endpoints WHERE name = $1 AND id <> $2",
                    &[&name, &id],
                )
                .map_err(db)?
                .is_some();
            if taken {
                return Err(RegistryError::AlreadyExists(name.into()));
            }
            txn.execute(
                "INSERT INTO nexus_endpoints (id, name, version, body, changed_version)
                 VALUES ($1, $2, $3, $4::text::jsonb, $5)
                 ON CONFLICT (id) DO UPDATE
                 SET name = $2, version = $3, body = $4::text::jsonb, changed_version = $5",
                &[
                    &id,
                    &name,
                    &version(endpoint.version),
                    &body,
                    &version(table_version),
                ],
            )
            .map_err(db)?;
            txn.commit().map_err(db)?;
            Ok(table_version)
        })
    }

    fn delete(&self, id: &str, expected_version: u64) -> Result<u64, RegistryError> {
        self.with(|c| {
            let mut txn = c.transaction().map_err(db)?;
            let table_version = bump(&mut txn)?;
            let stored: Option<i64> = txn
                .query_opt(
                    "SELECT version FROM nexus_endpoints WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .map_err(db)?
                .map(|row| row.get(0));
            match stored {
                None => return Err(RegistryError::NotFound(id.into())),
                Some(actual) if actual != version(expected_version) => {
                    return Err(RegistryError::VersionConflict {
                        id: id.into(),
                        expected: expected_version,
                        actual: actual as u64,
                    });
                }
                Some(_) => {}
            }
            txn.execute("DELETE FROM nexus_endpoints WHERE id = $1", &[&id])
                .map_err(db)?;
            let at = version(table_version);
            txn.execute(
                "INSERT INTO nexus_endpoint_deletions (id, changed_version) VALUES ($1, $2)",
                &[&id, &at],
            )
            .map_err(db)?;
            txn.execute(
                "DELETE FROM nexus_endpoint_deletions WHERE changed_version < $1",
                &[&(at - KEPT_DELETIONS)],
            )
            .map_err(db)?;
            txn.commit().map_err(db)?;
            Ok(table_version)
        })
    }

    fn load_clusters(&self) -> Result<Vec<Cluster>, RegistryError> {
        self.with(|c| {
            let mut out = Vec::new();
            for row in c
                .query("SELECT name, body::text FROM nexus_clusters", &[])
                .map_err(db)?
            {
                let name: String = row.get(0);
                let body: String = row.get(1);
                out.push(serde_json::from_str(&body).map_err(|e| {
                    RegistryError::Storage(format!("decoding stored cluster {name:?}: {e}"))
                })?);
            }
            Ok(out)
        })
    }

    fn put_cluster(
        &self,
        cluster: &Cluster,
        expected_version: Option<u64>,
    ) -> Result<(), RegistryError> {
        let body = serde_json::to_string(cluster).map_err(storage)?;
        let name = cluster.name.as_str();
        self.with(|c| {
            let mut txn = c.transaction().map_err(db)?;
            bump(&mut txn)?;
            check_cluster(&mut txn, name, expected_version)?;
            txn.execute(
                "INSERT INTO nexus_clusters (name, version, body) VALUES ($1, $2, $3::text::jsonb)
                 ON CONFLICT (name) DO UPDATE SET version = $2, body = $3::text::jsonb",
                &[&name, &version(cluster.version), &body],
            )
            .map_err(db)?;
            txn.commit().map_err(db)
        })
    }

    fn delete_cluster(&self, name: &str, expected_version: u64) -> Result<(), RegistryError> {
        self.with(|c| {
            let mut txn = c.transaction().map_err(db)?;
            bump(&mut txn)?;
            check_cluster(&mut txn, name, Some(expected_version))?;
            txn.execute("DELETE FROM nexus_clusters WHERE name = $1", &[&name])
                .map_err(db)?;
            txn.commit().map_err(db)
        })
    }
}

/// How late a notification arrived: this host's clock minus the database's in its payload.
fn lag(payload: &str) -> Duration {
    let sent_ms = payload
        .split_once(' ')
        .and_then(|(_, ms)| ms.parse::<u64>().ok());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Duration::from_millis(sent_ms.map_or(0, |sent| now_ms.saturating_sub(sent)))
}

fn check_cluster(
    txn: &mut postgres::Transaction<'_>,
    name: &str,
    expected: Option<u64>,
) -> Result<(), RegistryError> {
    let stored: Option<i64> = txn
        .query_opt(
            "SELECT version FROM nexus_clusters WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .map_err(db)?
        .map(|row| row.get(0));
    match (expected, stored) {
        (None, Some(_)) => Err(RegistryError::ClusterExists(name.into())),
        (Some(_), None) => Err(RegistryError::ClusterNotFound(name.into())),
        (Some(expected), Some(actual)) if actual != version(expected) => {
            Err(RegistryError::ClusterVersionConflict {
                name: name.into(),
                expected,
                actual: actual as u64,
            })
        }
        _ => Ok(()),
    }
}

/// Listens for registry changes until `stop` returns true, calling `on_change` for each
/// notification (with how late it arrived, by the database's clock and this host's) and once
/// with `None` after every (re)connect, since changes may have been missed while
/// disconnected. Blocks: run it on its own thread. Reconnects after `retry` when the
/// connection breaks.
pub fn listen(
    settings: &PgSettings,
    retry: Duration,
    stop: impl Fn() -> bool,
    mut on_change: impl FnMut(Option<Duration>),
) {
    while !stop() {
        let mut client = match settings.connect() {
            Ok(client) => client,
            Err(_) => {
                std::thread::sleep(retry);
                continue;
            }
        };
        if client.batch_execute(&format!("LISTEN {CHANNEL}")).is_err() {
            std::thread::sleep(retry);
            continue;
        }
        on_change(None);
        let mut notifications = client.notifications();
        loop {
            if stop() {
                return;
            }
            // Short waits, so `stop` is noticed and a dead connection found.
            let mut waiting = notifications.timeout_iter(Duration::from_millis(250));
            match postgres::fallible_iterator::FallibleIterator::next(&mut waiting) {
                Ok(Some(notification)) => on_change(Some(lag(notification.payload()))),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        drop(notifications);
        std::thread::sleep(retry);
    }
}
