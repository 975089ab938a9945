//! The console in a real browser: headless Chromium (Debian's `chromium`) driven by
//! `tests/console/console.test.mjs` through playwright-core creates an endpoint through the
//! page while this test sends traffic to it with a namespace certificate; the page must show
//! the traffic and the chart. Missing prerequisites fail the test with how to install them.
//!
//! `NEXUS_CONSOLE_SCREENSHOT=docs/console.png` also writes the README's screenshot (a relative
//! path is taken from the workspace root).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nexus_e2e::*;

/// How long the browser side may take, start to finish.
const BROWSER_BOUND: Duration = Duration::from_secs(150);

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Fails with the install command of whatever is missing.
fn check_prerequisites(dir: &Path) {
    let mut missing = Vec::new();
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        missing.push("node (apt-get install -y nodejs npm)".to_owned());
    }
    if !chromium().is_file() {
        missing.push(format!(
            "{} (apt-get install -y chromium, or set CHROMIUM to a Chromium binary)",
            chromium().display()
        ));
    }
    if !dir.join("node_modules/playwright-core").is_dir() {
        missing.push("playwright-core (npm ci --prefix tests/console)".to_owned());
    }
    assert!(
        missing.is_empty(),
        "the console's browser test needs: {}; .ci/test installs them",
        missing.join(", ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_creates_an_endpoint_and_shows_its_traffic_in_a_browser() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
    check_prerequisites(&dir);
    let gw = TestGateway::start_with(|c| c.console.writable = true).await;
    let _worker = gw.start_worker("billing", "charges");
    let (handler, _stop) = serve_reference_handler().await;
    gw.external_endpoint("quotes", &format!("http://{handler}"), &["orders"]);

    let mut node = tokio::process::Command::new("node");
    node.arg(dir.join("console.test.mjs"))
        .arg(format!("http://{}", gw.ops_addr))
        .env("CHROMIUM", chromium())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = std::env::var_os("NEXUS_CONSOLE_SCREENSHOT") {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace");
        node.arg("--screenshot").arg(root.join(path));
    }
    let browser = node.spawn().expect("node starts");

    // The page creates the endpoint; then calls go through it as namespace orders.
    eventually(
        "the page creates endpoint payments",
        BROWSER_BOUND,
        async || gw.registry.resolve("payments").is_some(),
    )
    .await;
    let caller = gw.client(&ns("orders"));
    for i in 0..5 {
        let reply = send(
            &caller,
            post(
                gw.uri("/nexus/endpoints/payments/services/svc/echo"),
                &[],
                format!("call {i}"),
            ),
        )
        .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    let quote = send(
        &caller,
        post(
            gw.uri("/nexus/endpoints/quotes/services/svc/echo"),
            &[],
            "q",
        ),
    )
    .await;
    assert_eq!(quote.status, 200);

    let output = tokio::time::timeout(BROWSER_BOUND, browser.wait_with_output())
        .await
        .expect("the browser test finishes in time")
        .expect("node runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{log}");
    assert!(output.status.success(), "the browser test failed:\n{log}");
    assert!(log.contains("console test: PASS"), "{log}");
}
