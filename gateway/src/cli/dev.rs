//! `nexus-gateway dev`: a gateway on localhost with its own dev PKI and data directory, an
//! endpoint `demo` and an in-process echo worker behind it, so the printed call works at once.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::client::{HttpVersions, http_client};
use crate::worker::{Worker, WorkerSettings};
use crate::{App, Config};
use clap::Args as ClapArgs;
use nexus_certs::{DevPki, Identity};
use nexus_registry::{EndpointSpec, Target};
use tokio_util::sync::CancellationToken;

use super::conn::{DEFAULT_DEV_DIR, DEFAULT_GATEWAY};
use super::{Failure, outln};

#[derive(ClapArgs)]
pub struct Args {
    /// Where the dev certificates and the registry live (created if missing).
    #[arg(long, default_value = DEFAULT_DEV_DIR)]
    data_dir: PathBuf,
    /// Data port (mTLS).
    #[arg(long, default_value = crate::config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Ops port (plain HTTP).
    #[arg(long, default_value = crate::config::DEFAULT_OPS_LISTEN)]
    ops_listen: SocketAddr,
    /// Do not create the demo endpoint and echo worker.
    #[arg(long)]
    no_demo: bool,
}

/// The namespace of the dev caller certificate, which `call` uses without `--cert`.
pub(super) const CALLER: &str = "caller";
const HANDLER: &str = "handler";
const DEMO: &str = "demo";
const METERING: &str = "metering";

pub async fn run(args: Args) -> Result<(), Failure> {
    let certs_dir = args.data_dir.join("certs");
    let names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    let pki = DevPki::init(&certs_dir, &names)?;
    let td = crate::config::DEFAULT_TRUST_DOMAIN;
    let admin = pki.issue(&Identity::Admin("admin".into()), td)?;
    let caller = pki.issue(&Identity::Namespace(CALLER.into()), td)?;
    let handler = pki.issue(&Identity::Namespace(HANDLER.into()), td)?;
    let metering = pki.issue(&Identity::Metering(METERING.into()), td)?;

    let mut config = Config::new(pki.server_files().load()?, args.data_dir.clone());
    config.listen = args.listen;
    config.ops_listen = args.ops_listen;
    // Dev callers listen on this machine: let completions reach loopback, over http too.
    config.callbacks.allowed = crate::callback_policy::AllowedCallback::loopback();
    let app = App::build(config).await?;
    let stop_signal = super::shutdown_signal();
    let data = app.data_addr();
    let ops = app.ops_addr();

    let shutdown = CancellationToken::new();
    let mut demo_worker = None;
    if !args.no_demo {
        let registry = app.registry();
        if registry.resolve(DEMO).is_none() {
            registry.create(EndpointSpec {
                name: DEMO.into(),
                description: "Demo endpoint of `nexus-gateway dev`: echoes its input.".into(),
                target: Target::Worker {
                    namespace: HANDLER.into(),
                    task_queue: DEMO.into(),
                },
                allowed_caller_namespaces: vec![CALLER.into()],
            })?;
        }
        let client = http_client(&handler.load()?, HttpVersions::Any)?;
        let gateway: http::Uri = format!("https://localhost:{}", data.port()).parse()?;
        let mut settings = WorkerSettings::new(gateway, HANDLER, DEMO);
        settings.concurrency = 4;
        let worker = Worker::new(settings, client);
        let stop = shutdown.clone();
        demo_worker = Some(tokio::spawn(async move {
            worker
                .run(tower::service_fn(crate::demo::echo_handler), stop)
                .await
        }));
    }

    let dir = args.data_dir.display();
    let c = |p: &PathBuf| p.display().to_string();
    outln!(
        "\nnexus-gateway dev is running\n\
         \n  data port (mTLS): https://localhost:{port}\n  ops port:         http://{ops}/healthz  /readyz  /metrics\
         \n  console:          http://{ops}/console/ (read-only here; see the README's Console)\
         \n  data directory:   {dir}\n  certificates:     {certs} (CA {ca})\n\
         \n  identities: admin {admin_cert}\n              namespace \"{CALLER}\" {caller_cert}\n              namespace \"{HANDLER}\" {handler_cert}\n              metering \"{METERING}\" {metering_cert}\n",
        port = data.port(),
        certs = certs_dir.display(),
        ca = c(&pki.ca_path()),
        admin_cert = c(&admin.cert),
        caller_cert = c(&caller.cert),
        handler_cert = c(&handler.cert),
        metering_cert = c(&metering.cert),
    )?;
    if !args.no_demo {
        outln!(
            "Call the demo endpoint as namespace \"{CALLER}\" (an echo worker of \"{HANDLER}\" answers):\n\n  \
             cargo run -q -p nexus-gateway -- call {DEMO} echo echo --input '{{\"hello\":\"nexus\"}}'{flags}\n\n\
             or with curl:\n\n  \
             curl --cacert {ca} --cert {cert} --key {key} \\\n    \
             -H 'Content-Type: application/json' -d '{{\"hello\":\"nexus\"}}' \\\n    \
             https://localhost:{port}/nexus/endpoints/{DEMO}/services/echo/echo\n",
            ca = c(&pki.ca_path()),
            cert = c(&caller.cert),
            key = c(&caller.key),
            port = data.port(),
            flags = call_flags(&args.data_dir, data.port()),
        )?;
    }
    outln!(
        "Manage endpoints (uses the dev admin certificate):\n\n  \
         cargo run -q -p nexus-gateway -- endpoint list --gateway https://localhost:{port}\n",
        port = data.port()
    )?;
    app.run(stop_signal).await;
    shutdown.cancel();
    if let Some(worker) = demo_worker {
        let _ = worker.await;
    }
    Ok(())
}

/// The flags `call` needs to reach this gateway with its certificates: none at the defaults.
fn call_flags(data_dir: &std::path::Path, port: u16) -> String {
    let mut flags = String::new();
    let gateway = format!("https://localhost:{port}");
    if gateway != DEFAULT_GATEWAY {
        flags.push_str(&format!(" \\\n    --gateway {gateway}"));
    }
    if data_dir != std::path::Path::new(DEFAULT_DEV_DIR) {
        flags.push_str(&format!(" --dev-dir {}", data_dir.display()));
    }
    flags
}
