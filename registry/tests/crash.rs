//! Crash safety: a writer process killed with SIGKILL loses no acknowledged
//! write.
//!
//! The test re-executes itself with `CRASH_CHILD_DB` set, which turns it into
//! a writer that prints `ACK <id> <version>` after each write returns.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nexus_registry::{EndpointSpec, Registry, Target};

const CHILD_ENV: &str = "CRASH_CHILD_DB";
/// Acknowledged writes to wait for before killing the child.
const ACKS_BEFORE_KILL: usize = 30;
/// Children killed in turn on the same file, so recovery of a killed file is
/// itself exercised.
const ROUNDS: usize = 3;
const DEADLINE: Duration = Duration::from_secs(60);

fn spec(i: u64) -> EndpointSpec {
    EndpointSpec {
        // The pid keeps names unique across the test's successive children.
        name: format!("crash-{}-{i}", std::process::id()),
        description: String::new(),
        target: Target::External {
            url: "https://example.com".into(),
        },
        allowed_caller_namespaces: vec!["ns".into()],
    }
}

/// The test itself by default; the writer child when `CRASH_CHILD_DB` is set.
#[test]
fn acknowledged_writes_survive_sigkill() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        return crash_child(path.as_ref());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.redb");
    let mut acked = Vec::new();
    for round in 0..ROUNDS {
        // Varying delays land the kill at different points of a commit.
        let delay = Duration::from_micros(700 * round as u64);
        acked.extend(run_and_kill_child(&path, delay));
    }

    let registry = Registry::open(&path).unwrap();
    for (id, version) in &acked {
        let endpoint = registry
            .get(id)
            .unwrap_or_else(|e| panic!("acknowledged endpoint lost: {e}"));
        assert!(endpoint.version >= *version, "{id} lost its update");
    }
    // At most one unacknowledged create (in flight at the kill) per child.
    assert!(
        registry.len() <= acked.len() + ROUNDS,
        "{} present, {} acknowledged",
        registry.len(),
        acked.len()
    );
    assert!(registry.table_version() >= registry.len() as u64);
    println!(
        "{} acknowledged, {} present after {ROUNDS} SIGKILLs",
        acked.len(),
        registry.len()
    );
}

/// The writer: creates (and every other time also updates) endpoints until killed,
/// acknowledging each on stdout once the registry call returned.
fn crash_child(path: &Path) {
    let registry = Registry::open(path).unwrap();
    let mut stdout = std::io::stdout().lock();
    // libtest has already printed `test acknowledged_writes_survive_sigkill ... ` with no
    // newline.
    writeln!(stdout).unwrap();
    // Bounded in case the parent dies without killing us.
    for i in 0..100_000 {
        let endpoint = registry.create(spec(i)).unwrap();
        // Every other endpoint is also updated, so replaces are exercised.
        let endpoint = if i % 2 == 0 {
            registry.update(&endpoint.id, 1, spec(i)).unwrap()
        } else {
            endpoint
        };
        writeln!(stdout, "ACK {} {}", endpoint.id, endpoint.version).unwrap();
        stdout.flush().unwrap();
    }
    panic!("the writer was not killed");
}

/// Runs a writer child on `path`, SIGKILLs it `delay` after some acknowledged
/// writes and returns every (id, version) it acknowledged.
fn run_and_kill_child(path: &Path, delay: Duration) -> Vec<(String, u64)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_writes_survive_sigkill",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // A reader thread, so every wait below can be bounded.
    let (tx, rx) = mpsc::channel::<(String, u64)>();
    let stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            // A line cut short by the kill was never fully acknowledged.
            if let Some(ack) = line.strip_suffix('\n').and_then(|l| l.strip_prefix("ACK ")) {
                let (id, version) = ack.split_once(' ').unwrap();
                if tx.send((id.into(), version.parse().unwrap())).is_err() {
                    break;
                }
            }
            line.clear();
        }
    });

    let deadline = Instant::now() + DEADLINE;
    let mut acked = Vec::new();
    while acked.len() < ACKS_BEFORE_KILL {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ack) => acked.push(ack),
            Err(e) => {
                let _ = child.kill();
                panic!("child acknowledged {} writes, then: {e}", acked.len());
            }
        }
    }
    thread::sleep(delay);
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "child was meant to be killed: {status}");
    // The pipe is closed now, so the reader drains what was printed and ends.
    acked.extend(rx.iter());
    reader.join().unwrap();
    acked
}
