//! Running the `nexus-gateway` binary as a user does: a process whose output lines are read as
//! they come, signals, and clients with certificates from the PKI `certs init` made.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use nexus_certs::Identity;
use nexus_e2e::*;
use nexus_gateway::client::HttpClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_nexus-gateway-e2e");

/// A child process whose output lines are collected in the background.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    pub fn spawn(args: &[&str], dir: &Path) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nexus-gateway");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for an output line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("process did not exit in time");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion (bounded); returns (exit code, stdout, stderr).
pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S], dir: &Path) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "command did not finish"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

pub fn port_after(line: &str, marker: &str) -> u16 {
    let rest = &line[line.find(marker).expect("marker") + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("port")
}

/// A `serve` process on free loopback ports.
pub struct Served {
    pub proc: Proc,
    pub port: u16,
    pub ops_port: u16,
}

/// `serve` on free loopback ports with the PKI of `certs init --dir certs` and the data
/// directory `data`, both in the working directory.
pub const SERVE: [&str; 13] = [
    "serve",
    "--listen",
    "127.0.0.1:0",
    "--ops-listen",
    "127.0.0.1:0",
    "--data-dir",
    "data",
    "--tls-ca",
    "certs/ca.pem",
    "--tls-cert",
    "certs/server.pem",
    "--tls-key",
    "certs/server-key.pem",
];

/// `certs init` into `dir/certs`, then `serve` with `extra` flags on free ports.
pub fn serve(dir: &Path, extra: &[&str]) -> Served {
    let (code, _, err) = run(&["certs", "init", "--dir", "certs"], dir);
    assert_eq!(code, 0, "{err}");
    let mut args = SERVE.to_vec();
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(&args, dir);
    let line = proc.wait_for("data https://");
    let port = port_after(&line, "data https://127.0.0.1:");
    let ops_port = port_after(&line, "ops http://127.0.0.1:");
    // Logged once the gateway runs: signal handlers are in place from here on.
    proc.wait_for("serving");
    Served {
        proc,
        port,
        ops_port,
    }
}

/// A client with a certificate for `identity` issued by the CA in `dir/certs`.
pub fn client_for(dir: &Path, identity: &Identity) -> HttpClient {
    let material = nexus_certs::DevPki::open(&dir.join("certs"))
        .unwrap()
        .issue(identity, TRUST_DOMAIN)
        .unwrap()
        .load()
        .unwrap();
    nexus_gateway::client::http_client(&material, Default::default()).unwrap()
}

/// GET on a plain-HTTP ops port: (status, body).
pub async fn ops_get(port: u16, path: &str) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let uri: http::Uri = format!("http://127.0.0.1:{port}{path}").parse().unwrap();
    let response = tokio::time::timeout(REQUEST_BOUND, client.get(uri))
        .await
        .expect("ops port answers in time")
        .expect("ops port reachable");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of the metric line starting with `prefix` (name and labels), if present.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Creates a worker endpoint through the admin API of a served gateway.
pub async fn create_worker_endpoint(
    dir: &Path,
    port: u16,
    name: &str,
    namespace: &str,
    task_queue: &str,
    callers: &[&str],
) {
    let admin = client_for(dir, &admin());
    let create = post(
        format!("https://localhost:{port}/api/v1/nexus/endpoints")
            .parse()
            .unwrap(),
        &[("content-type", "application/json")],
        serde_json::json!({"spec": {"name": name,
            "target": {"worker": {"namespace": namespace, "taskQueue": task_queue}},
            "allowedCallerNamespaces": callers}})
        .to_string(),
    );
    let reply = send(&admin, create).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}
