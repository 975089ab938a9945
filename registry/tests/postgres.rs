//! The registry on a real PostgreSQL shared by several registries, as replicas share it.
//! Needs a server: `bash .ci/postgres` starts one (or set NEXUS_TEST_POSTGRES).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nexus_registry::pg::{PgSettings, PgStore, listen, migrate};
use nexus_registry::{ClusterSpec, EndpointSpec, Registry, RegistryError, Target};

const BOUND: Duration = Duration::from_secs(10);

/// A database of its own for one test, dropped at the end.
struct TestDb {
    admin: String,
    name: String,
    url: String,
}

impl TestDb {
    fn new() -> TestDb {
        let admin = std::env::var("NEXUS_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://nexus:nexus@127.0.0.1:5432/postgres".into());
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {admin}: {e}. Start one with `bash .ci/postgres` \
                 (installs Debian's postgresql, starts it, creates role nexus), or set \
                 NEXUS_TEST_POSTGRES to a server whose role may create databases"
            )
        });
        let name = format!("nexus_test_{:016x}", rand_u64());
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let (base, _) = admin.rsplit_once('/').expect("a database in the URL");
        let url = format!("{base}/{name}");
        TestDb { admin, name, url }
    }

    fn settings(&self) -> PgSettings {
        PgSettings::new(&self.url)
    }

    fn registry(&self) -> Registry {
        Registry::new(PgStore::open(self.settings()).unwrap()).unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

fn spec(name: &str) -> EndpointSpec {
    EndpointSpec {
        name: name.into(),
        description: String::new(),
        target: Target::Worker {
            namespace: "billing".into(),
            task_queue: "charges".into(),
        },
        allowed_caller_namespaces: vec!["orders".into()],
    }
}

#[test]
fn migrations_apply_once_even_when_replicas_start_together() {
    let db = TestDb::new();
    let settings = db.settings();
    let runs: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| migrate(&settings).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let applied: Vec<&String> = runs.iter().flatten().collect();
    assert_eq!(
        applied,
        vec![
            "0001_registry",
            "0002_changes",
            "0003_replicas",
            "0004_completions",
            "0005_pollers"
        ],
        "{runs:?}"
    );
    assert!(migrate(&settings).unwrap().is_empty());
}

#[test]
fn writes_persist_and_keep_their_rules() {
    let db = TestDb::new();
    let a = db.registry();
    let created = a.create(spec("payments")).unwrap();
    assert_eq!(
        a.create(spec("payments")).unwrap_err(),
        RegistryError::AlreadyExists("payments".into())
    );
    let updated = a.update(&created.id, 1, spec("payments-v2")).unwrap();
    assert_eq!(updated.version, 2);
    let e = a.update(&created.id, 1, spec("x-y")).unwrap_err();
    assert!(
        matches!(e, RegistryError::VersionConflict { actual: 2, .. }),
        "{e}"
    );
    a.create(spec("fraud")).unwrap();
    let (_, secret) = a
        .create_cluster(
            "east",
            ClusterSpec {
                callback_url_template: "https://t/namespaces/{namespace}/cb".into(),
                description: String::new(),
            },
            true,
        )
        .unwrap();
    // A second registry on the same database (another replica, or a restart) sees it all.
    let b = db.registry();
    assert_eq!(b.len(), 2);
    assert_eq!(b.resolve("payments-v2").unwrap().id, created.id);
    assert!(b.resolve("payments").is_none());
    assert_eq!(
        b.cluster_by_secret(&secret.unwrap()).unwrap().0.name,
        "east"
    );
    b.delete(&created.id, 2).unwrap();
    assert!(a.refresh().unwrap());
    assert!(a.resolve(&created.id).is_none());
    assert!(!a.refresh().unwrap(), "nothing new to load");
}

#[test]
fn a_write_through_one_replica_reaches_the_other_by_notification() {
    let db = TestDb::new();
    let a = db.registry();
    let b = Arc::new(db.registry());
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let listener = {
        let (b, stop, settings) = (b.clone(), stop.clone(), db.settings());
        std::thread::spawn(move || {
            listen(
                &settings,
                Duration::from_millis(100),
                || stop.load(Ordering::SeqCst),
                |_| {
                    b.refresh().unwrap();
                    let _ = tx.send(());
                },
            )
        })
    };
    rx.recv_timeout(BOUND).expect("listening");
    let created = a.create(spec("payments")).unwrap();
    let deadline = std::time::Instant::now() + BOUND;
    while b.resolve("payments").is_none() {
        rx.recv_timeout(deadline - std::time::Instant::now())
            .expect("a notification within the bound");
    }
    assert_eq!(b.resolve("payments").unwrap().id, created.id);
    stop.store(true, Ordering::SeqCst);
    listener.join().unwrap();
}

/// A refresh applies only what changed, including a name that moved from one endpoint to
/// another and a deletion, and ends equal to a full load.
#[test]
fn a_refresh_applies_changes_like_a_full_load() {
    let db = TestDb::new();
    let a = db.registry();
    let b = db.registry();
    let x = a.create(spec("alpha")).unwrap();
    let y = a.create(spec("beta")).unwrap();
    b.refresh().unwrap();
    a.update(&x.id, 1, spec("gamma")).unwrap();
    let z = a.create(spec("alpha")).unwrap();
    a.delete(&y.id, 1).unwrap();
    assert!(b.refresh().unwrap());
    assert_eq!(b.resolve("alpha").unwrap().id, z.id);
    assert_eq!(b.resolve("gamma").unwrap().id, x.id);
    assert!(b.resolve("beta").is_none() && b.resolve(&y.id).is_none());
    assert_eq!(b.len(), 2);
    let fresh = db.registry();
    let names = |r: &Registry| {
        let mut n: Vec<String> = r
            .list(100, None, None)
            .unwrap()
            .endpoints
            .iter()
            .map(|e| format!("{}={}", e.spec.name, e.id))
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&b), names(&fresh));
}

#[test]
fn of_two_conflicting_writes_through_two_replicas_exactly_one_wins() {
    let db = TestDb::new();
    let a = db.registry();
    let b = db.registry();
    let created = a.create(spec("payments")).unwrap();
    b.refresh().unwrap();
    let results: Vec<Result<_, RegistryError>> = std::thread::scope(|s| {
        let ha = s.spawn(|| a.update(&created.id, 1, spec("from-a")));
        let hb = s.spawn(|| b.update(&created.id, 1, spec("from-b")));
        vec![ha.join().unwrap(), hb.join().unwrap()]
    });
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(RegistryError::VersionConflict { .. })))
    );
    // And two creates of one name: one endpoint.
    let results: Vec<_> = std::thread::scope(|s| {
        let ha = s.spawn(|| a.create(spec("shared")));
        let hb = s.spawn(|| b.create(spec("shared")));
        vec![ha.join().unwrap(), hb.join().unwrap()]
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
}

#[test]
fn shared_secrets_are_created_once_for_all_replicas() {
    let db = TestDb::new();
    let a = PgStore::open(db.settings()).unwrap();
    let b = PgStore::open(db.settings()).unwrap();
    let first = a.shared_secret("callback-keys", || "1 aa".into()).unwrap();
    let second = b.shared_secret("callback-keys", || "1 bb".into()).unwrap();
    assert_eq!(first, "1 aa");
    assert_eq!(second, "1 aa");
    assert_eq!(a.heartbeat("r-a", Duration::from_secs(15)).unwrap(), 1);
    assert_eq!(b.heartbeat("r-b", Duration::from_secs(15)).unwrap(), 2);
    assert_eq!(a.heartbeat("r-a", Duration::from_secs(15)).unwrap(), 2);
}

#[test]
fn an_unreachable_store_is_a_clear_error() {
    let mut settings = PgSettings::new("postgres://nexus:nexus@127.0.0.1:1/none");
    settings.connect_timeout = Duration::from_secs(2);
    let e = PgStore::open(settings).unwrap_err().to_string();
    assert!(e.contains("cannot connect to the store"), "{e}");
    let e = PgStore::open(PgSettings::new("mysql://x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("store URL is invalid"), "{e}");
    let e = PgStore::open(PgSettings::new(
        "postgres://nexus@127.0.0.1/x?sslmode=require",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("set [store] ca"), "{e}");
}

/// `sslmode=require` connects over TLS, verifying the server against the configured CA (the
/// one `.ci/postgres` made; NEXUS_TEST_POSTGRES_CA names another), and refuses another CA.
#[test]
fn the_store_speaks_tls_when_the_url_asks_for_it() {
    let db = TestDb::new();
    let ca = std::env::var("NEXUS_TEST_POSTGRES_CA")
        .unwrap_or_else(|_| "/etc/postgresql/nexus-test-ca.pem".into());
    assert!(
        std::path::Path::new(&ca).exists(),
        "no CA for the database's TLS at {ca}: run `bash .ci/postgres`, which makes one"
    );
    let mut settings = PgSettings::new(format!("{}?sslmode=require", db.url));
    settings.ca = Some(ca.into());
    PgStore::open(settings.clone()).unwrap();
    let mut client = settings.connect().unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ssl, "the connection is encrypted");

    // A CA the server's certificate does not chain to: refused, saying why.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, unrelated_ca()).unwrap();
    settings.ca = Some(other);
    let e = PgStore::open(settings).unwrap_err().to_string();
    assert!(e.contains("cannot connect to the store"), "{e}");
}

/// A CA bundle that the database's certificate does not chain to: Debian's self-signed
/// snakeoil certificate (installed with postgresql), or none at all.
fn unrelated_ca() -> String {
    std::fs::read_to_string("/etc/ssl/certs/ssl-cert-snakeoil.pem").unwrap_or_default()
}
