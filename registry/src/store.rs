//! Persistent storage of endpoints.

use std::fmt::{self, Display};
use std::path::Path;

use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::cluster::Cluster;
use crate::model::{Endpoint, RegistryError};

/// A persistent store. All methods are atomic; each returns after the change
/// is durable.
pub trait Store: Send + Sync + 'static {
    /// Everything stored, with the table version.
    fn load(&self) -> Result<(u64, Vec<Endpoint>), RegistryError>;

    /// What changed after table version `since`, if the store can tell (`None`: load it all).
    fn changes_since(&self, since: u64) -> Result<Option<Changes>, RegistryError> {
        let _ = since;
        Ok(None)
    }

    /// The current table version, to tell whether a snapshot is still current. Stores shared
    /// by several processes answer it without loading everything.
    fn table_version(&self) -> Result<u64, RegistryError> {
        self.load().map(|(version, _)| version)
    }

    /// Writes (inserts or replaces) `endpoint` and bumps the table version, in
    /// one transaction, returning the new table version. Checks inside the
    /// transaction that: if `expected_version` is None, the id does not exist
    /// and no other endpoint has this name; if `Some(v)`, the stored version
    /// is `v` (else `VersionConflict` / `NotFound`) and no *other* endpoint
    /// has this name.
    fn put(&self, endpoint: &Endpoint, expected_version: Option<u64>)
    -> Result<u64, RegistryError>;

    /// Deletes endpoint `id` if its stored version is `expected_version`,
    /// returning the new table version.
    fn delete(&self, id: &str, expected_version: u64) -> Result<u64, RegistryError>;

    /// Every trusted cluster.
    fn load_clusters(&self) -> Result<Vec<Cluster>, RegistryError>;

    /// Writes `cluster`: with `expected_version` None it must not exist yet; with `Some(v)`
    /// the stored one must be at `v`. Checked inside the transaction.
    fn put_cluster(
        &self,
        cluster: &Cluster,
        expected_version: Option<u64>,
    ) -> Result<(), RegistryError>;

    /// Deletes cluster `name` if its stored version is `expected_version`.
    fn delete_cluster(&self, name: &str, expected_version: u64) -> Result<(), RegistryError>;
}

/// What changed in a store after some table version.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub table_version: u64,
    /// Endpoints created or updated since, as they are now.
    pub upserted: Vec<Endpoint>,
    /// Ids of endpoints deleted since (possibly recreated since, then also in `upserted`).
    pub deleted: Vec<String>,
}

/// id -> endpoint JSON. JSON rather than a binary encoding so the file stays
/// readable with generic tools and fields can be added compatibly.
const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
/// name -> id, so name uniqueness is checked inside the write transaction.
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("names");
/// cluster name -> cluster JSON.
const CLUSTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("clusters");
/// "table_version" -> u64.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const TABLE_VERSION: &str = "table_version";

/// [`Store`] on a redb database. Commits use redb's default (immediate)
/// durability, so an acknowledged write survives `kill -9` and power loss.
pub struct RedbStore {
    db: Database,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the database file at `path`, creating it if missing. Fails if
    /// another process has it open.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let db = Database::create(path).map_err(|e| {
            RegistryError::Storage(format!("opening registry database {}: {e}", path.display()))
        })?;
        Self::init(db)
    }

    /// A store that lives in memory only, for tests.
    pub fn in_memory() -> Result<Self, RegistryError> {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .map_err(storage)?;
        Self::init(db)
    }

    /// Creates the tables up front so read transactions never see them
    /// missing.
    fn init(db: Database) -> Result<Self, RegistryError> {
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(ENDPOINTS).map_err(storage)?;
        txn.open_table(NAMES).map_err(storage)?;
        txn.open_table(META).map_err(storage)?;
        txn.open_table(CLUSTERS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<(u64, Vec<Endpoint>), RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        let table_version = meta
            .get(TABLE_VERSION)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        let endpoints = txn.open_table(ENDPOINTS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in endpoints.iter().map_err(storage)? {
            let (id, json) = entry.map_err(storage)?;
            out.push(decode(id.value(), json.value())?);
        }
        Ok((table_version, out))
    }

    fn put(
        &self,
        endpoint: &Endpoint,
        expected_version: Option<u64>,
    ) -> Result<u64, RegistryError> {
        let json = serde_json::to_vec(endpoint).map_err(storage)?;
        let id = endpoint.id.as_str();
        let name = endpoint.spec.name.as_str();
        // Dropping the transaction on an early return aborts it.
        let txn = self.db.begin_write().map_err(storage)?;
        let table_version = {
            let mut endpoints = txn.open_table(ENDPOINTS).map_err(storage)?;
            let mut names = txn.open_table(NAMES).map_err(storage)?;
            let stored = match endpoints.get(id).map_err(storage)? {
                Some(json) => Some(decode(id, json.value())?),
                None => None,
            };
            match (expected_version, &stored) {
                (None, Some(_)) => {
                    // Ids are random v4 UUIDs: a clash means a caller bug.
                    return Err(RegistryError::Storage(format!(
                        "endpoint id {id:?} already exists"
                    )));
                }
                (Some(_), None) => return Err(RegistryError::NotFound(id.into())),
                (Some(expected), Some(stored)) if stored.version != expected => {
                    return Err(RegistryError::VersionConflict {
                        id: id.into(),
                        expected,
                        actual: stored.version,
                    });
                }
                _ => {}
            }
            let taken = names
                .get(name)
                .map_err(storage)?
                .is_some_and(|owner| owner.value() != id);
            if taken {
                return Err(RegistryError::AlreadyExists(name.into()));
            }
            // A rename frees the old name.
            if let Some(stored) = stored.filter(|s| s.spec.name != name) {
                remove_name(&mut names, &stored.spec.name, id)?;
            }
            names.insert(name, id).map_err(storage)?;
            endpoints.insert(id, json.as_slice()).map_err(storage)?;
            bump_table_version(&txn)?
        };
        txn.commit().map_err(storage)?;
        Ok(table_version)
    }

    fn delete(&self, id: &str, expected_version: u64) -> Result<u64, RegistryError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let table_version = {
            let mut endpoints = txn.open_table(ENDPOINTS).map_err(storage)?;
            let stored = match endpoints.get(id).map_err(storage)? {
                Some(json) => decode(id, json.value())?,
                None => return Err(RegistryError::NotFound(id.into())),
            };
            if stored.version != expected_version {
                return Err(RegistryError::VersionConflict {
                    id: id.into(),
                    expected: expected_version,
                    actual: stored.version,
                });
            }
            endpoints.remove(id).map_err(storage)?;
            let mut names = txn.open_table(NAMES).map_err(storage)?;
            remove_name(&mut names, &stored.spec.name, id)?;
            bump_table_version(&txn)?
        };
        txn.commit().map_err(storage)?;
        Ok(table_version)
    }

    fn load_clusters(&self) -> Result<Vec<Cluster>, RegistryError> {
        self.clusters()
    }

    fn put_cluster(
        &self,
        cluster: &Cluster,
        expected_version: Option<u64>,
    ) -> Result<(), RegistryError> {
        self.write_cluster(cluster, expected_version)
    }

    fn delete_cluster(&self, name: &str, expected_version: u64) -> Result<(), RegistryError> {
        self.remove_cluster(name, expected_version)
    }
}

impl RedbStore {
    /// The stored cluster `name` must be at `expected` (`None`: must not exist).
    fn check_cluster_version(
        clusters: &redb::Table<&str, &[u8]>,
        name: &str,
        expected: Option<u64>,
    ) -> Result<(), RegistryError> {
        let stored = match clusters.get(name).map_err(storage)? {
            Some(json) => Some(decode_cluster(name, json.value())?),
            None => None,
        };
        match (expected, stored) {
            (None, Some(_)) => Err(RegistryError::ClusterExists(name.into())),
            (Some(_), None) => Err(RegistryError::ClusterNotFound(name.into())),
            (Some(expected), Some(stored)) if stored.version != expected => {
                Err(RegistryError::ClusterVersionConflict {
                    name: name.into(),
                    expected,
                    actual: stored.version,
                })
            }
            _ => Ok(()),
        }
    }
}

impl RedbStore {
    pub(crate) fn clusters(&self) -> Result<Vec<Cluster>, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let clusters = txn.open_table(CLUSTERS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in clusters.iter().map_err(storage)? {
            let (name, json) = entry.map_err(storage)?;
            out.push(decode_cluster(name.value(), json.value())?);
        }
        Ok(out)
    }

    pub(crate) fn write_cluster(
        &self,
        cluster: &Cluster,
        expected_version: Option<u64>,
    ) -> Result<(), RegistryError> {
        let json = serde_json::to_vec(cluster).map_err(storage)?;
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut clusters = txn.open_table(CLUSTERS).map_err(storage)?;
            Self::check_cluster_version(&clusters, &cluster.name, expected_version)?;
            clusters
                .insert(cluster.name.as_str(), json.as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    pub(crate) fn remove_cluster(
        &self,
        name: &str,
        expected_version: u64,
    ) -> Result<(), RegistryError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut clusters = txn.open_table(CLUSTERS).map_err(storage)?;
            Self::check_cluster_version(&clusters, name, Some(expected_version))?;
            clusters.remove(name).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }
}

fn decode_cluster(name: &str, json: &[u8]) -> Result<Cluster, RegistryError> {
    serde_json::from_slice(json)
        .map_err(|e| RegistryError::Storage(format!("decoding stored cluster {name:?}: {e}")))
}

/// Removes `name` only if it still points at `id`, so a damaged index can
/// never drop another endpoint's name.
fn remove_name(
    names: &mut redb::Table<&str, &str>,
    name: &str,
    id: &str,
) -> Result<(), RegistryError> {
    let owned_by_id = names
        .get(name)
        .map_err(storage)?
        .is_some_and(|owner| owner.value() == id);
    if owned_by_id {
        names.remove(name).map_err(storage)?;
    }
    Ok(())
}

fn bump_table_version(txn: &WriteTransaction) -> Result<u64, RegistryError> {
    let mut meta = txn.open_table(META).map_err(storage)?;
    let current = meta
        .get(TABLE_VERSION)
        .map_err(storage)?
        .map_or(0, |v| v.value());
    let next = current + 1;
    meta.insert(TABLE_VERSION, next).map_err(storage)?;
    Ok(next)
}

fn decode(id: &str, json: &[u8]) -> Result<Endpoint, RegistryError> {
    serde_json::from_slice(json)
        .map_err(|e| RegistryError::Storage(format!("decoding stored endpoint {id:?}: {e}")))
}

fn storage(e: impl Display) -> RegistryError {
    RegistryError::Storage(e.to_string())
}
