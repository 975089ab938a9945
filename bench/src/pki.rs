//! Certificates for one bench run: a dev PKI (ECDSA P-256, as `nexus-gateway certs init` makes)
//! in a temporary directory. Child processes get the directory's path and load what they need.

use std::path::Path;

use nexus_certs::{DevPki, Identity, TlsFiles, TlsMaterial};

use crate::Result;

pub const TRUST_DOMAIN: &str = nexus_gateway::config::DEFAULT_TRUST_DOMAIN;
/// The calling namespace and the namespace whose task queue serves the endpoint.
pub const CALLER: &str = "caller";
pub const HANDLER: &str = "handler";

pub fn caller() -> Identity {
    Identity::Namespace(CALLER.into())
}

/// The flooding namespace of the flood scenario.
pub const FLOOD: &str = "flood";

pub fn flood() -> Identity {
    Identity::Namespace(FLOOD.into())
}

pub fn handler() -> Identity {
    Identity::Namespace(HANDLER.into())
}

pub fn admin() -> Identity {
    Identity::Admin("bench".into())
}

/// The PKI directory; removed when dropped.
pub struct BenchPki {
    dir: tempfile::TempDir,
}

impl BenchPki {
    pub fn create() -> Result<BenchPki> {
        let dir = tempfile::tempdir()?;
        let names = ["localhost", "127.0.0.1"].map(String::from);
        let pki = DevPki::init(dir.path(), &names)?;
        for identity in [caller(), handler(), admin(), flood()] {
            pki.issue(&identity, TRUST_DOMAIN)?;
        }
        Ok(BenchPki { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn server_files(dir: &Path) -> Result<TlsFiles> {
    Ok(DevPki::open(dir)?.server_files())
}

pub fn server_material(dir: &Path) -> Result<TlsMaterial> {
    Ok(server_files(dir)?.load()?)
}

pub fn client_material(dir: &Path, identity: &Identity) -> Result<TlsMaterial> {
    Ok(DevPki::open(dir)?.client_files(identity).load()?)
}
