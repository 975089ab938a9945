//! A PostgreSQL database made for one benchmark and dropped after it (H2, H3, H4).

use crate::Result;

/// Where the server is: an admin URL whose role may create databases.
#[derive(clap::Args)]
pub struct Server {
    #[arg(
        long = "postgres",
        env = "NEXUS_TEST_POSTGRES",
        default_value = "postgres://nexus:nexus@127.0.0.1:5432/postgres"
    )]
    pub admin_url: String,
}

/// Runs `bench` with the URL of a fresh database `nexus_bench_<label>_<pid>`, then drops it.
pub fn with_scratch_db<T>(
    server: &Server,
    label: &str,
    bench: impl FnOnce(&str) -> Result<T>,
) -> Result<T> {
    let name = format!("nexus_bench_{label}_{}", std::process::id());
    let mut admin = postgres::Client::connect(&server.admin_url, postgres::NoTls).map_err(|e| {
        format!(
            "PostgreSQL at {}: {e} (bash .ci/postgres starts one)",
            server.admin_url
        )
    })?;
    admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
    let (base, _) = server
        .admin_url
        .rsplit_once('/')
        .ok_or("the URL names no database")?;
    let result = bench(&format!("{base}/{name}"));
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    result
}
