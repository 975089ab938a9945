//! The numbers the README promises are the ones the gateway runs with: each README phrase is
//! built from the configuration `serve` uses without a config file, so a changed default or a
//! changed README fails here. And the task-queue backlog bound holds on a running gateway.

use std::time::Duration;

use nexus_e2e::*;

/// The README with every run of whitespace (line breaks included) made one space.
fn readme() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(path)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The configuration `nexus-gateway serve` runs with when given no config file.
fn serve_defaults() -> nexus_gateway::Config {
    nexus_gateway::config_file::parse("")
        .expect("the defaults parse")
        .config
}

fn secs(d: Duration) -> u64 {
    assert_eq!(d.subsec_nanos(), 0, "{d:?} is whole seconds");
    d.as_secs()
}

#[test]
fn readme_numbers_are_the_defaults_serve_runs_with() {
    let readme = readme();
    let c = serve_defaults();
    let lane = &c.outbound.defaults;
    let inbound = &c.inbound;
    let backoff = &c.callbacks.backoff;
    let mib = |b: usize| b / (1024 * 1024);
    let promises = [
        // Calling an endpoint: the gateway's own answers.
        format!(
            "| body over {} MiB: with a declared length, before anything reaches the target",
            mib(c.limits.max_body_bytes)
        ),
        format!(
            "| task queue backlog full ({} waiting);",
            c.matching.max_waiting_tasks
        ),
        format!(
            "no worker answered before the caller's deadline less {} s",
            secs(c.matching.deadline_buffer)
        ),
        format!(
            "headers over {} KiB or more than {} | 431",
            c.limits.max_header_bytes / 1024,
            c.limits.max_headers
        ),
        // Workers.
        format!("(default and maximum {} s)", secs(c.matching.max_poll)),
        // Lanes.
        format!(
            "buffer {} waiting, {} in flight, {} requests/s, and a circuit breaker that opens after more than {} consecutive destination-down outcomes",
            lane.buffer, lane.concurrency, lane.rate_per_second, lane.breaker.failure_threshold
        ),
        format!(
            "stays open {} s, then lets one probe through",
            secs(lane.breaker.open_for)
        ),
        format!(
            "The {} requests/s per lane is Temporal's default",
            lane.rate_per_second
        ),
        // Completions.
        format!(
            "expires after {} days",
            secs(c.callbacks.expiry) / (24 * 3600)
        ),
        format!(
            "with backoff ({} s doubling to {} h, {}–100 % jitter)",
            secs(backoff.initial),
            secs(backoff.max) / 3600,
            (backoff.jitter_min * 100.0).round()
        ),
        // Attribution.
        format!(
            "an fsync every {} ms",
            c.attribution.fsync_interval.as_millis()
        ),
        format!(
            "Segments rotate at {} MiB or {} h; closed ones are deleted after {} days or beyond {} GiB",
            c.attribution.segment_max_bytes >> 20,
            secs(c.attribution.segment_max_age) / 3600,
            secs(c.attribution.retention_max_age.unwrap()) / (24 * 3600),
            c.attribution.retention_max_bytes.unwrap() >> 30
        ),
        // Inbound limits.
        format!(
            "per caller namespace ({}/s, burst {}), per endpoint ({}/s, {}) and per (caller, endpoint) ({}/s, {}), and operations in flight per caller namespace ({})",
            inbound.per_caller.per_second,
            inbound.per_caller.burst,
            inbound.per_endpoint.per_second,
            inbound.per_endpoint.burst,
            inbound.per_caller_endpoint.per_second,
            inbound.per_caller_endpoint.burst,
            inbound.max_concurrent_per_caller
        ),
        format!("after `push_back` ({} ms,", inbound.push_back.as_millis()),
        // Certificates and operations.
        format!(
            "(checked every {} s) or on SIGHUP",
            secs(c.tls_reload_interval)
        ),
        format!("within `--shutdown-grace` ({} s)", secs(c.shutdown_grace)),
        format!("The default trust domain `<td>` is `{}`", c.trust_domain),
        format!("| data | `{}` |", c.listen),
        format!("| ops | `{}` |", c.ops_listen),
    ];
    let broken: Vec<&String> = promises.iter().filter(|p| !readme.contains(*p)).collect();
    assert!(
        broken.is_empty(),
        "README does not state the running defaults:\n{}",
        broken
            .iter()
            .map(|p| format!("  {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Exactly the values the README names, not just self-consistent ones.
    assert_eq!(c.matching.max_waiting_tasks, 1000);
    assert_eq!(lane.rate_per_second, 100);
    assert_eq!(c.callbacks.expiry, Duration::from_secs(60 * 24 * 3600));
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    assert_eq!(backoff.multiplier, 2.0);
}

#[test]
fn the_in_process_defaults_match_serve() {
    // Config::new (used by `dev` and embedders) and `serve` without a file agree.
    let pki = Pki::new();
    let new = nexus_gateway::Config::new(pki.server(), "data".into());
    let served = serve_defaults();
    assert_eq!(
        format!("{:?}", new.matching),
        format!("{:?}", served.matching)
    );
    assert_eq!(
        format!("{:?}", new.outbound.defaults),
        format!("{:?}", served.outbound.defaults)
    );
    assert_eq!(new.callbacks.expiry, served.callbacks.expiry);
    assert_eq!(
        format!("{:?}", new.callbacks.backoff),
        format!("{:?}", served.callbacks.backoff)
    );
    assert_eq!(new.shutdown_grace, served.shutdown_grace);
}

/// With the default settings, a task queue holds 1000 waiting tasks; the next start is refused
/// at once with 429 and Retry-After, and the waiting ones are still served.
#[tokio::test]
async fn the_backlog_holds_1000_waiting_tasks_and_refuses_the_next() {
    let gw = TestGateway::start().await;
    assert_eq!(
        serve_defaults().matching.max_waiting_tasks,
        1000,
        "this test runs with the default"
    );
    // Two callers share the 1000 so no per-caller inbound limit (burst 1000, 1000 in flight)
    // is what refuses.
    gw.worker_endpoint("payments", "billing", "charges", &["a", "b", "c"]);
    let mut waiting = Vec::new();
    for caller in ["a", "b"] {
        let client = gw.client(&ns(caller));
        for _ in 0..500 {
            let (client, uri) = (
                client.clone(),
                gw.uri("/nexus/endpoints/payments/services/svc/echo"),
            );
            waiting.push(tokio::spawn(async move {
                send(&client, post(uri, &[("request-timeout", "60s")], "w")).await
            }));
        }
    }
    let backlog = "nexus_gateway_task_queue_backlog{namespace=\"billing\",task_queue=\"charges\"} ";
    let gw_ref = &gw;
    eventually("1000 tasks wait", Duration::from_secs(40), async || {
        let text = gw_ref.ops_get("/metrics").await.1;
        text.lines().find_map(|l| l.strip_prefix(backlog)) == Some("1000")
    })
    .await;
    let refused = send(
        &gw.client(&ns("c")),
        post(
            gw.uri("/nexus/endpoints/payments/services/svc/echo"),
            &[],
            "one too many",
        ),
    )
    .await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.error_type(), "RESOURCE_EXHAUSTED");
    assert!(refused.header("retry-after").is_some());
    assert!(
        refused.message().contains("1000 tasks waiting"),
        "{}",
        refused.message()
    );
    assert!(waiting.iter().all(|w| !w.is_finished()), "none was refused");

    // A worker drains the queue: every waiting caller gets its answer.
    let _worker = gw.start_worker("billing", "charges");
    for w in waiting {
        let reply = tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(reply.status, 200);
    }
}
