//! [`DurableSpool`] on PostgreSQL, shared by replicas. A completion accepted by any replica is
//! committed to the database before the 200. Each pending entry is held by one replica under
//! a lease that its holder renews; when a replica dies, its leases run out and a survivor
//! claims its entries. The tables come from the store's migrations (`nexus_completions`,
//! `nexus_completion_keys`, `nexus_callback_notes`).

use std::sync::Mutex;
use std::time::Duration;

use postgres::Client;

use crate::durable::DurableSpool;
use crate::spool::{EntryState, SpoolEntry, SpoolError};

/// Opens a new connection; the store's settings live with the caller.
pub type Connect = Box<dyn Fn() -> Result<Client, String> + Send + Sync>;

pub struct PgSpool {
    connect: Connect,
    client: Mutex<Option<Client>>,
    /// This replica's id: the holder of the leases it takes.
    owner: String,
    lease: Duration,
}

/// The blocking client closes its connection on a runtime of its own, which may not run on
/// an async worker: it is dropped on a thread of its own.
impl Drop for PgSpool {
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

impl std::fmt::Debug for PgSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSpool")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// The database's message, not only the error's kind.
fn db(e: postgres::Error) -> SpoolError {
    match e.as_db_error() {
        Some(d) => SpoolError::new(format!("{} ({})", d.message(), d.code().code())),
        None => SpoolError::new(format!(
            "{e}{}",
            std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default()
        )),
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const COLUMNS: &str =
    "id, state, attempts, next_attempt_ms, created_ms, expires_ms, last_error, payload";

fn entry(row: &postgres::Row) -> SpoolEntry {
    let state: i16 = row.get(1);
    let attempts: i32 = row.get(2);
    SpoolEntry {
        id: row.get::<_, i64>(0) as u64,
        state: if state == 0 {
            EntryState::Pending
        } else {
            EntryState::Failed
        },
        attempts: attempts as u32,
        next_attempt_ms: row.get::<_, i64>(3) as u64,
        created_ms: row.get::<_, i64>(4) as u64,
        expires_ms: row.get::<_, i64>(5) as u64,
        last_error: row.get(6),
        payload: row.get(7),
    }
}

impl PgSpool {
    /// `owner` names this replica in leases; `lease` is how long a claim lasts unrenewed.
    pub fn new(connect: Connect, owner: String, lease: Duration) -> PgSpool {
        PgSpool {
            connect,
            client: Mutex::new(None),
            owner,
            lease,
        }
    }

    fn with<T>(
        &self,
        op: impl FnOnce(&mut Client) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some((self.connect)().map_err(SpoolError::new)?);
        }
        let client = slot.as_mut().expect("connected above");
        let result = op(client);
        if client.is_closed() {
            *slot = None;
        }
        result
    }

    fn lease_until(&self, now_ms: u64) -> i64 {
        ms(now_ms.saturating_add(self.lease.as_millis() as u64))
    }
}

impl DurableSpool for PgSpool {
    fn put_note(&self, payload: &[u8], expires_ms: u64) -> Result<u64, SpoolError> {
        self.with(|c| {
            let row = c
                .query_one(
                    "INSERT INTO nexus_callback_notes (payload, expires_ms) VALUES ($1, $2) RETURNING id",
                    &[&payload, &ms(expires_ms)],
                )
                .map_err(db)?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    fn get_note(&self, id: u64, now_ms: u64) -> Result<Option<Vec<u8>>, SpoolError> {
        self.with(|c| {
            let row = c
                .query_opt(
                    "SELECT payload FROM nexus_callback_notes WHERE id = $1 AND expires_ms >= $2",
                    &[&ms(id), &ms(now_ms)],
                )
                .map_err(db)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn sweep_notes(&self, now_ms: u64) -> Result<usize, SpoolError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM nexus_completion_keys WHERE expires_ms < $1",
                &[&ms(now_ms)],
            )
            .map_err(db)?;
            let swept = c
                .execute(
                    "DELETE FROM nexus_callback_notes WHERE expires_ms < $1",
                    &[&ms(now_ms)],
                )
                .map_err(db)?;
            Ok(swept as usize)
        })
    }

    fn push_once(
        &self,
        key: &[u8],
        payload: &[u8],
        now_ms: u64,
        expires_ms: u64,
        note: Option<u64>,
    ) -> Result<Option<SpoolEntry>, SpoolError> {
        // One statement, so one round trip and one commit: the key goes in (or replaces an
        // expired one) and only then the entry; a key still valid inserts nothing.
        let sql = format!(
            "WITH key AS (
                 INSERT INTO nexus_completion_keys (key, expires_ms) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET expires_ms = EXCLUDED.expires_ms
                 WHERE nexus_completion_keys.expires_ms < $3
                 RETURNING 1
             ), note AS (
                 DELETE FROM nexus_callback_notes WHERE id = $7 AND EXISTS (SELECT 1 FROM key)
             )
             INSERT INTO nexus_completions
                 (state, attempts, next_attempt_ms, created_ms, expires_ms, payload, owner, lease_until_ms)
             SELECT 0, 0, $3, $3, $2, $4, $5, $6 FROM key
             RETURNING {COLUMNS}"
        );
        let note = note.map_or(-1, ms);
        self.with(|c| {
            let row = c
                .query_opt(
                    &sql,
                    &[
                        &key,
                        &ms(expires_ms),
                        &ms(now_ms),
                        &payload,
                        &self.owner,
                        &self.lease_until(now_ms),
                        &note,
                    ],
                )
                .map_err(db)?;
            Ok(row.as_ref().map(entry))
        })
    }

    fn was_pushed(&self, key: &[u8], now_ms: u64) -> Result<bool, SpoolError> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT 1 FROM nexus_completion_keys WHERE key = $1 AND expires_ms >= $2",
                &[&key, &ms(now_ms)],
            )
            .map_err(db)?
            .is_some())
        })
    }

    fn update(&self, e: &SpoolEntry) -> Result<(), SpoolError> {
        let state: i16 = match e.state {
            EntryState::Pending => 0,
            EntryState::Failed => 1,
        };
        self.with(|c| {
            c.execute(
                "UPDATE nexus_completions SET state = $2, attempts = $3, next_attempt_ms = $4,
                   expires_ms = $5, last_error = $6 WHERE id = $1",
                &[
                    &ms(e.id),
                    &state,
                    &(e.attempts as i32),
                    &ms(e.next_attempt_ms),
                    &ms(e.expires_ms),
                    &e.last_error,
                ],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn remove(&self, id: u64) -> Result<bool, SpoolError> {
        self.with(|c| {
            Ok(
                c.execute("DELETE FROM nexus_completions WHERE id = $1", &[&ms(id)])
                    .map_err(db)?
                    > 0,
            )
        })
    }

    fn get(&self, id: u64) -> Result<Option<SpoolEntry>, SpoolError> {
        self.with(|c| {
            Ok(c.query_opt(
                &format!("SELECT {COLUMNS} FROM nexus_completions WHERE id = $1"),
                &[&ms(id)],
            )
            .map_err(db)?
            .as_ref()
            .map(entry))
        })
    }

    fn list(&self, state: Option<EntryState>) -> Result<Vec<SpoolEntry>, SpoolError> {
        let filter: Option<i16> = state.map(|s| match s {
            EntryState::Pending => 0,
            EntryState::Failed => 1,
        });
        self.with(|c| {
            Ok(c.query(
                &format!(
                    "SELECT {COLUMNS} FROM nexus_completions
                         WHERE $1::smallint IS NULL OR state = $1 ORDER BY id"
                ),
                &[&filter],
            )
            .map_err(db)?
            .iter()
            .map(entry)
            .collect())
        })
    }

    fn claim(&self, id: u64, now_ms: u64) -> Result<bool, SpoolError> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE nexus_completions SET owner = $2, lease_until_ms = $3
                 WHERE id = $1 AND (owner = $2 OR owner IS NULL OR lease_until_ms < $4)",
                &[&ms(id), &self.owner, &self.lease_until(now_ms), &ms(now_ms)],
            )
            .map_err(db)?
                > 0)
        })
    }

    fn renew(&self, now_ms: u64) -> Result<(), SpoolError> {
        self.with(|c| {
            c.execute(
                "UPDATE nexus_completions SET lease_until_ms = $2 WHERE owner = $1 AND state = 0",
                &[&self.owner, &self.lease_until(now_ms)],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn orphaned(&self, now_ms: u64) -> Result<Vec<u64>, SpoolError> {
        self.with(|c| {
            Ok(c.query(
                "SELECT id FROM nexus_completions
                     WHERE state = 0 AND (owner IS NULL OR (owner <> $1 AND lease_until_ms < $2))
                     ORDER BY next_attempt_ms",
                &[&self.owner, &ms(now_ms)],
            )
            .map_err(db)?
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect())
        })
    }
}
